"""Plugin module of MaskSAM (entry point ``masksam`` of group ``autosam``)."""
from __future__ import annotations

from autosam import hookimpl

from .method import MaskSAMMethod
from .options import MaskSAMOptions, plan_section

NAME = "masksam"


@hookimpl
def register_methods(register) -> None:
    register(MaskSAMMethod())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration, fingerprint, dataset_json):
    if method_name != NAME or configuration_name not in MaskSAMMethod.configurations:
        return None
    from autosam.plugins import get_backbone

    labels = (dataset_json or {}).get("labels", {})
    num_fg = max(1, len([v for v in labels.values() if isinstance(v, int) and v > 0]))
    backbone = MaskSAMOptions.backbone
    return plan_section(configuration, get_backbone(backbone), backbone, num_fg)


def suitability(fingerprint) -> tuple[float, str]:
    """Score in [0, 1]: MaskSAM's mask classification pays off with many classes per slice (its
    best results are on 15-organ AMOS); its depth adapters need volumes with several slices."""
    stats = list(getattr(fingerprint, "class_statistics", {}).values())
    if not stats:
        return 0.0, "no class statistics"
    k = len(stats)
    spanning = [s for s in stats if s.slices_spanned >= 4]
    if k >= 3 and len(spanning) >= k / 2:
        score = 0.45 + 0.15 * min(1.0, (k - 3) / 12)
        why = f"{k} classes, {len(spanning)} spanning >= 4 slices: mask classification of many structures per slice"
    else:
        score = 0.25
        why = f"{k} class(es): few objects per slice, the set prediction adds little over per-voxel classification"
    return round(score, 3), why


@hookimpl
def method_suitability(fingerprint, dataset_json):
    score, why = suitability(fingerprint)
    return [(NAME, score, f"MaskSAM: {why}")]
