"""Plugin module of 3D-SAutoMed (entry point ``sautomed`` of group ``autosam``)."""
from __future__ import annotations

from autosam import hookimpl
from autosam.experiment_planning.evidence import is_large_structure

from .method import SAutoMedMethod
from .options import SAutoMedOptions, plan_section

NAME = "sautomed"


@hookimpl
def register_methods(register) -> None:
    register(SAutoMedMethod())


@hookimpl
def plan_method_section(method_name, configuration_name, configuration, fingerprint, dataset_json):
    if method_name != NAME or configuration_name not in SAutoMedMethod.configurations:
        return None
    from autosam.plugins import get_backbone

    backbone = SAutoMedOptions.backbone
    return plan_section(configuration, get_backbone(backbone), backbone)


def suitability(fingerprint) -> tuple[float, str]:
    """Score in [0, 1]: 3D-SAutoMed targets multi-organ datasets of several large structures that
    span many slices (its history and box prompts follow an organ from slice to slice)."""
    stats = list(getattr(fingerprint, "class_statistics", {}).values())
    if not stats:
        return 0.0, "no class statistics"
    large = [s for s in stats if is_large_structure(s)]
    fraction = len(large) / len(stats)
    if len(stats) >= 3 and fraction >= 0.6:
        score = 0.55 + 0.15 * min(1.0, (len(stats) - 3) / 5)
        why = (f"{len(large)} of {len(stats)} classes are large, compact structures spanning >= 8 slices: "
               "multi-organ slice-to-slice tracking (history tokens, box prompts) suits them")
    elif large:
        score = 0.35
        why = f"only {len(large)} of {len(stats)} classes are large structures spanning many slices"
    else:
        score = 0.1
        why = "small or fragmented structures: box prompts from the previous slice track them poorly"
    return round(score, 3), why


@hookimpl
def method_suitability(fingerprint, dataset_json):
    score, why = suitability(fingerprint)
    return [(NAME, score, f"3D-SAutoMed: {why}")]
