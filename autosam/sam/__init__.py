"""SAM backbones shared by the SAM-based method plugins (see ``documentation/backbones.md``).

``from autosam.sam import build_backbone, apply_lora, count_parameters`` works; the submodules are
imported on first use so that loading the plugin system stays cheap.
"""
from __future__ import annotations

_EXPORTS = {
    "build_backbone": "autosam.sam.backbones",
    "SamBackbone": "autosam.sam.backbone",
    "BackboneSpec": "autosam.sam.registry",
    "apply_lora": "autosam.sam.lora",
    "count_parameters": "autosam.sam.lora",
    "parameter_report": "autosam.sam.lora",
    "CheckpointError": "autosam.sam.checkpoints",
    "segment_volume_with_boxes": "autosam.sam.box_segment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autosam.sam' has no attribute {name!r}")
