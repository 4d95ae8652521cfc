"""The default method follows the measurements: on a CPU target never a method that is not measured
ahead of unet at equal CPU time; on any target never one measured below unet on such data."""
from __future__ import annotations

import dataclasses

import pytest

from autosam.experiment_planning import evidence
from autosam.experiment_planning.fingerprint_types import ClassStats
from plugin_test_data import synthetic_fingerprint
from test_planner import Voter, bare_system, dataset_json, plan


def _stats(label, fraction, slices, components):
    return ClassStats(label=label, name=f"c{label}", cases_present=3, volume_fraction=fraction,
                      components_per_case=components, component_volume_mm3=50.0, bbox_extent_mm=[20.0, 30.0, 30.0],
                      slices_spanned=slices, per_case_components=[int(components)] * 3)


def organs():
    """Liver, spleen and kidneys: large compact structures spanning many slices."""
    return dataclasses.replace(synthetic_fingerprint(), num_labelled_cases=20, class_statistics={
        "1": _stats(1, 0.08, 40, 1), "2": _stats(2, 0.01, 20, 1), "3": _stats(3, 0.006, 14, 2)})


def hippocampus():
    """Two small structures, a few voxels across."""
    return dataclasses.replace(synthetic_fingerprint(), num_labelled_cases=20, class_statistics={
        "1": _stats(1, 0.0015, 20, 1), "2": _stats(2, 0.0012, 16, 1)})


def _dj(n):
    return dict(dataset_json(), labels={"background": 0, **{f"c{i}": i for i in range(1, n + 1)}})


def test_regimes():
    assert evidence.regime(organs()) == evidence.LARGE
    assert evidence.regime(hippocampus()) == evidence.SMALL
    assert evidence.regime(synthetic_fingerprint()) is None  # one large, one fragmented class


def _system(name, score):
    return bare_system(Voter("unet", 0.5, "baseline"), Voter(name, score, f"{name} suits it"))


def test_cpu_target_defaults_to_unet_where_sautomed_wins_only_at_equal_iterations():
    gpu = plan(organs(), _dj(3), system=_system("sautomed", 0.7))
    assert gpu.default_method == "sautomed"
    # the GPU keeps the equal-iteration winner, and its rationale also says what equal time showed
    assert "0.559" in gpu.default_method_rationale and "0.751" in gpu.default_method_rationale
    cpu = plan(organs(), _dj(3), system=_system("sautomed", 0.7), target="cpu")
    assert cpu.default_method == "unet"
    why = cpu.default_method_rationale
    assert "only at equal iterations" in why and "equal CPU time" in why and "autosam_compare_methods" in why
    assert "below unet" in why and "0.564" in why and "0.751" in why  # the equal-time measurement, named


def test_a_method_measured_below_unet_never_wins_on_such_data():
    for target in ("gpu", "cpu"):
        plans = plan(hippocampus(), _dj(2), system=_system("msam", 0.9), target=target)
        assert plans.default_method == "unet", (target, plans.default_method_rationale)
        assert "measured below unet" in plans.default_method_rationale and "0.866" in plans.default_method_rationale


def test_unmeasured_methods_keep_the_gpu_vote_but_not_the_cpu_default():
    gpu = plan(organs(), _dj(3), system=_system("lesionsam", 0.9))
    assert gpu.default_method == "lesionsam" and "no measurement" in gpu.default_method_rationale
    cpu = plan(organs(), _dj(3), system=_system("lesionsam", 0.9), target="cpu")
    assert cpu.default_method == "unet" and "no measurement" in cpu.default_method_rationale


def test_measured_win_at_equal_cpu_time_keeps_the_method(monkeypatch):
    won = evidence.Evidence("sautomed", evidence.LARGE, "ahead", "ahead in 15 min", True, True)
    monkeypatch.setattr(evidence, "EVIDENCE", (won,))
    cpu = plan(organs(), _dj(3), system=_system("sautomed", 0.7), target="cpu")
    assert cpu.default_method == "sautomed" and "equal CPU time" in cpu.default_method_rationale


@pytest.mark.parametrize("fp, expected", [(organs, "sautomed"), (hippocampus, "unet")])
def test_the_real_plugins_follow_the_map_on_a_gpu(fp, expected):
    from autosam.plugins import get_plugin_system

    n = len(fp().class_statistics)
    plans = plan(fp(), _dj(n), system=get_plugin_system())
    assert plans.default_method == expected, plans.method_votes
    assert plan(fp(), _dj(n), system=get_plugin_system(), target="cpu").default_method == "unet"
