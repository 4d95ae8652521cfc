"""Default planner: nnU-Net's rules, method sections and default-method voting through hooks."""
from __future__ import annotations

import numpy as np
import pytest

from autosam import hookimpl
from autosam.experiment_planning import rules
from autosam.experiment_planning.fingerprint_types import FINGERPRINT_SCHEMA_VERSION, DatasetFingerprint, IntensityStats
from autosam.experiment_planning.plans import Plans
from autosam.experiment_planning import planning
from autosam.experiment_planning.planning import plan_experiment, resolve_compute_target
from autosam.experiment_planning.topology import (
    CPU_BASE_FEATURES,
    CPU_TRAIN_GFLOP_BUDGET,
    compute_topology,
    divisibility,
    estimate_train_gflop,
    estimate_vram_gb,
)
from autosam.plugins import build_plugin_system
from autosam.training.method import Method
from autosam.utils.files import write_json
from autosam_planners.default.planner import DefaultPlanner

CT_STATS = IntensityStats(mean=50.0, median=45.0, std=120.0, min=-1000.0, max=1500.0,
                          percentile_00_5=-900.0, percentile_99_5=1200.0)


def make_fingerprint(spacings, shapes, n_channels=1, relative_size=1.0) -> DatasetFingerprint:
    n = len(spacings)
    return DatasetFingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        case_identifiers=[f"case_{i:03d}" for i in range(n)],
        spacings=[list(map(float, s)) for s in spacings],
        shapes_before_crop=[list(s) for s in shapes],
        shapes_after_crop=[list(s) for s in shapes],
        median_relative_size_after_crop=relative_size,
        foreground_intensity_properties_per_channel={str(c): CT_STATS for c in range(n_channels)},
        class_statistics={},
        num_labelled_cases=n,
    )


def dataset_json(channels=("CT",), labels=None) -> dict:
    return {"channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": labels or {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": 10, "file_ending": ".nii.gz", "name": "Toy"}


def bare_system(*plugins):
    return build_plugin_system([(f"p{i}", p) for i, p in enumerate(plugins)], load_entry_points=False)


def toy_dataset(autosam_dirs, name: str):
    """A raw dataset.json and a fingerprint of 4 cases of 64 x 96 x 96 at 1 mm; returns the preprocessed folder."""
    (autosam_dirs["raw"] / name).mkdir()
    write_json(autosam_dirs["raw"] / name / "dataset.json", dataset_json())
    pre = autosam_dirs["preprocessed"] / name
    pre.mkdir()
    make_fingerprint([[1, 1, 1]] * 4, [[64, 96, 96]] * 4).save(pre / "dataset_fingerprint.json")
    return pre


def plan(fp, dj=None, gpu=8.0, system=None, **kw) -> Plans:
    return DefaultPlanner().plan(fp, dj or dataset_json(), gpu_memory_gb=gpu, plugin_system=system or bare_system(), **kw)


# ---------------------------------------------------------------------------------------- rules
def test_target_spacing_is_the_median_for_isotropic_data():
    sp = [[1.0, 0.8, 0.8], [1.2, 0.9, 0.9], [1.1, 0.7, 0.7]]
    assert rules.target_spacing(sp, [[100, 200, 200]] * 3) == pytest.approx([1.1, 0.8, 0.8])


def test_anisotropy_rule_takes_the_10th_percentile_of_the_coarse_axis():
    z = [2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0, 6.0]
    sp = [[v, 0.7, 0.7] for v in z]
    few_slices = [[40, 400, 400]] * len(z)
    assert rules.target_spacing(sp, few_slices)[0] == pytest.approx(np.percentile(z, 10))
    # many slices: the rule does not apply, the median stays
    many_slices = [[300, 400, 400]] * len(z)
    assert rules.target_spacing(sp, many_slices)[0] == pytest.approx(5.0)
    # never finer than the in-plane spacing
    sp_fine = [[0.5 if i == 0 else 5.0, 1.0, 1.0] for i in range(10)]
    assert rules.target_spacing(sp_fine, few_slices)[0] == pytest.approx(max(1.0, np.percentile([s[0] for s in sp_fine], 10)))


def test_ct_channels_get_ct_normalisation_others_zscore_with_mask_when_cropped_a_lot():
    fp = make_fingerprint([[1, 1, 1]] * 4, [[100, 120, 120]] * 4, n_channels=3, relative_size=0.4)
    plans = plan(fp, dataset_json(("CT", "T2", "noNorm")))
    conf = plans.configurations["3d"]
    assert conf.normalization_schemes == ["CTNormalization", "ZScoreNormalization", "NoNormalization"]
    assert conf.use_mask_for_norm == [False, True, False]
    plans_big = plan(make_fingerprint([[1, 1, 1]] * 4, [[100, 120, 120]] * 4, 3, relative_size=0.9),
                     dataset_json(("ct", "T2", "noNorm")))
    assert plans_big.configurations["3d"].use_mask_for_norm == [False, False, False]
    assert plans_big.configurations["3d"].normalization_schemes[0] == "CTNormalization"


# ---------------------------------------------------------------------------------------- topology, patch, batch
def test_topology_waits_for_the_coarse_axis():
    topo, patch = compute_topology([4.0, 1.0, 1.0], [24, 160, 160])
    assert topo.strides[0] == [1, 1, 1]
    assert topo.strides[1] == [1, 2, 2]  # z is 4x coarser: not pooled yet
    assert topo.kernel_sizes[0] == [1, 3, 3]
    assert topo.features_per_stage[0] == 32 and max(topo.features_per_stage) == 320
    assert all(p % d == 0 for p, d in zip(patch, divisibility(topo)))
    assert topo.n_stages == len(topo.kernel_sizes) == len(topo.n_conv_per_stage_encoder)
    assert len(topo.n_conv_per_stage_decoder) == topo.n_stages - 1


def test_vram_estimate_grows_with_patch_and_batch():
    topo, p = compute_topology([1, 1, 1], [128, 128, 128])
    est = estimate_vram_gb(topo, p, 2)
    assert 5 < est < 9  # nnU-Net plans ~128^3, batch 2 for 8 GB
    assert estimate_vram_gb(topo, p, 4) > est
    small, ps = compute_topology([1, 1, 1], [64, 64, 64])
    assert estimate_vram_gb(small, ps, 2) < est


def test_patch_shrinks_with_a_smaller_memory_budget_and_batch_stays_at_least_two():
    fp = make_fingerprint([[1, 1, 1]] * 20, [[200, 512, 512]] * 20)
    big = plan(fp, gpu=8)
    small = plan(fp, gpu=2)
    for name in ("2d", "3d"):
        b, s = big.configurations[name], small.configurations[name]
        assert np.prod(s.patch_size) < np.prod(b.patch_size), name
        assert b.batch_size >= 2 and s.batch_size >= 2
        assert all(p % d == 0 for p, d in zip(s.patch_size, divisibility(s.network)))
    topo = small.configurations["3d"].network
    assert estimate_vram_gb(topo, small.configurations["3d"].patch_size, small.configurations["3d"].batch_size,
                            1, 3) <= 2.0
    with pytest.raises(ValueError, match="gpu_memory_gb"):
        plan(fp, gpu=0.1)


def test_train_gflop_estimate_matches_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    topo, patch = compute_topology([3.0, 1.5, 1.5], [16, 32, 48], base_features=8)
    net = PlainConvUNet(2, topo.n_stages, topo.features_per_stage, torch.nn.Conv3d, topo.kernel_sizes, topo.strides,
                        topo.n_conv_per_stage_encoder, 3, topo.n_conv_per_stage_decoder, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, deep_supervision=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 2, *patch))
    counted = counter.get_total_flops() / 1e9  # forward only; convolutions dominate
    estimate = estimate_train_gflop(topo, patch, 1, num_input_channels=2, num_classes=3) / 3
    assert estimate == pytest.approx(counted, rel=0.02)
    assert estimate_train_gflop(topo, patch, 2, 2, 3) == pytest.approx(2 * 3 * estimate)


def test_cpu_target_plans_a_narrower_network_within_the_compute_budget():
    fp = make_fingerprint([[4.5, 2.2, 2.2]] * 8, [[37, 79, 81]] * 8)
    gpu, cpu = plan(fp, target="gpu"), plan(fp, target="cpu")
    assert gpu.compute_target == "gpu" and cpu.compute_target == "cpu"
    g3, c3 = gpu.configurations["3d"], cpu.configurations["3d"]
    assert g3.network.features_per_stage[0] == 32  # nnU-Net's rules untouched for a GPU
    assert c3.network.features_per_stage[0] == CPU_BASE_FEATURES
    assert estimate_train_gflop(g3.network, g3.patch_size, 2) > CPU_TRAIN_GFLOP_BUDGET
    assert estimate_train_gflop(c3.network, c3.patch_size, 2) <= CPU_TRAIN_GFLOP_BUDGET
    assert np.prod(c3.patch_size) <= np.prod(g3.patch_size) and c3.batch_size == 2
    assert all(p % d == 0 for p, d in zip(c3.patch_size, divisibility(c3.network)))
    with pytest.raises(ValueError, match="target 'tpu'"):
        plan(fp, target="tpu")


def test_auto_target_follows_the_hardware_and_is_recorded(autosam_dirs, monkeypatch):
    import torch

    from autosam.experiment_planning import planning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(planning, "_may_have_accelerator", lambda: False)  # no GPU device node: torch not asked
    assert resolve_compute_target("auto") == "cpu"
    monkeypatch.setattr(planning, "_may_have_accelerator", lambda: True)
    assert resolve_compute_target("auto") == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_compute_target("auto") == "cpu" and resolve_compute_target("gpu") == "gpu"
    with pytest.raises(ValueError, match="expected auto, gpu or cpu"):
        resolve_compute_target("fast")
    pre = toy_dataset(autosam_dirs, "Dataset043_Toy")
    system = bare_system(AltPlannerPlugin())
    assert plan_experiment(43, plugin_system=system).compute_target == "cpu"
    assert Plans.load(pre / "autosamPlans.json").compute_target == "cpu"
    assert plan_experiment(43, plugin_system=system, target="gpu").compute_target == "gpu"
    assert planning._accepts(DefaultPlanner().plan, "target")


def test_batch_is_capped_by_dataset_size_but_never_below_two():
    fp = make_fingerprint([[1, 1, 1]] * 2, [[32, 32, 32]] * 2)
    plans = plan(fp)
    assert plans.configurations["3d"].batch_size == 2  # 5 % of 2 small images is less than one patch
    assert plans.configurations["3d"].patch_size == [32, 32, 32]


# ---------------------------------------------------------------------------------------- configurations
def test_3d_lowres_only_when_the_patch_covers_less_than_a_quarter():
    small = plan(make_fingerprint([[1, 1, 1]] * 5, [[96, 128, 128]] * 5))
    assert set(small.configurations) == {"2d", "3d"}
    big = plan(make_fingerprint([[1, 1, 1]] * 5, [[500, 500, 500]] * 5))
    assert set(big.configurations) == {"2d", "3d", "3d_lowres"}
    full, low = big.configurations["3d"], big.configurations["3d_lowres"]
    assert np.prod(full.patch_size) / np.prod(full.median_image_size_in_voxels) < 0.25
    assert np.prod(low.patch_size) / np.prod(low.median_image_size_in_voxels) >= 0.25
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing))
    # 2d and 3d share one preprocessed copy, lowres has its own
    assert big.configurations["2d"].data_identifier == full.data_identifier
    assert low.data_identifier != full.data_identifier
    only = plan(make_fingerprint([[1, 1, 1]] * 5, [[500, 500, 500]] * 5), configurations=["3d"])
    assert set(only.configurations) == {"3d"}


def test_plans_json_round_trip(tmp_path):
    plans = plan(make_fingerprint([[3, 0.8, 0.8]] * 6, [[60, 300, 300]] * 6))
    path = tmp_path / "autosamPlans.json"
    plans.save(path)
    loaded = Plans.load(path)
    assert loaded == plans
    assert loaded.configurations["3d"].network.strides == plans.configurations["3d"].network.strides


# ---------------------------------------------------------------------------------------- hooks
class ToyMethod(Method):
    name = "toy"
    configurations = ("3d",)


class SectionPlugin:
    @hookimpl
    def register_methods(self, register):
        register(ToyMethod())

    @hookimpl
    def plan_method_section(self, method_name, configuration_name, configuration):
        if method_name != "toy" or configuration_name != "3d":
            return None
        return {"sam_input_size": 256, "patch_from_plans": list(configuration.patch_size)}


def test_method_sections_come_from_the_hook():
    plans = plan(make_fingerprint([[1, 1, 1]] * 4, [[64, 96, 96]] * 4), system=bare_system(SectionPlugin()))
    section = plans.configurations["3d"].methods["toy"]
    assert section == {"sam_input_size": 256, "patch_from_plans": plans.configurations["3d"].patch_size}
    assert "toy" not in plans.configurations["2d"].methods


class Voter:
    def __init__(self, name, score, rationale):
        self.vote = (name, score, rationale)
        self.method = type(f"M_{name}", (Method,), {"name": name})()

    @hookimpl
    def register_methods(self, register):
        register(self.method)

    @hookimpl
    def method_suitability(self, fingerprint, dataset_json):
        return [self.vote]


class GhostVoter:
    @hookimpl
    def method_suitability(self):
        return [("not_installed", 0.99, "would win but is not registered")]


def test_default_method_is_the_highest_vote_and_all_votes_are_recorded():
    system = bare_system(Voter("unet", 0.5, "baseline"), Voter("lesionsam", 0.8, "many small lesions"), GhostVoter())
    plans = plan(make_fingerprint([[1, 1, 1]] * 4, [[64, 96, 96]] * 4), system=system)
    assert plans.default_method == "lesionsam"
    assert plans.default_method_rationale.startswith("many small lesions")
    assert "no measurement" in plans.default_method_rationale  # a prior, and the rationale says so
    assert [v[0] for v in plans.method_votes] == ["not_installed", "lesionsam", "unet"]


def test_promptunet_votes_below_unet_and_plans_unets_section():
    """promptunet segments automatically like a unet trained on fewer automatic samples: the
    planner records its vote but keeps unet the automatic default, and plans it unet's section."""
    from autosam.plugins import get_plugin_system

    plans = plan(make_fingerprint([[1, 1, 1]] * 20, [[64, 96, 96]] * 20), system=get_plugin_system())
    votes = {name: score for name, score, _ in plans.method_votes}
    assert votes["promptunet"] < votes["unet"] and plans.default_method == "unet", plans.method_votes
    cfg = plans.configurations["3d"]
    assert cfg.methods["promptunet"] == cfg.methods["unet"]
    assert "promptunet" not in plans.configurations["2d"].methods


def test_no_votes_means_unet_baseline():
    plans = plan(make_fingerprint([[1, 1, 1]] * 4, [[64, 96, 96]] * 4))
    assert (plans.default_method, plans.default_method_rationale, plans.method_votes) == ("unet", "baseline", [])


class AltPlanner(DefaultPlanner):
    name = "alt"


class AltPlannerPlugin:
    @hookimpl
    def register_planners(self, register):
        register(DefaultPlanner())
        register(AltPlanner())


def test_plan_experiment_writes_plans_per_planner(autosam_dirs):
    name = "Dataset042_Toy"
    pre = toy_dataset(autosam_dirs, name)
    system = bare_system(AltPlannerPlugin())
    default = plan_experiment(42, plugin_system=system)
    alt = plan_experiment(42, planner="alt", gpu_memory_gb=4, plugin_system=system)
    assert (pre / "autosamPlans.json").is_file() and (pre / "altPlans.json").is_file()
    assert Plans.load(pre / "autosamPlans.json") == default and default.dataset_name == name
    assert Plans.load(pre / "altPlans.json").planner == "alt" and alt.gpu_memory_target_gb == 4
    assert alt.configurations["3d"].data_identifier.startswith("altPlans_")
    with pytest.raises(KeyError, match="unknown planner 'nope'"):
        plan_experiment(42, planner="nope", plugin_system=system)
