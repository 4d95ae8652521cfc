"""Loading folds from checkpoints and the fold ensemble (a tiny test method, no training)."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from autosam.experiment_planning.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, Plans
from autosam.inference.predictor import load_trained_model, predict_preprocessed_case
from autosam.plugins import Entry, get_plugin_system
from autosam.training.checkpoint import save_checkpoint
from autosam.training.method import Method
from autosam.utils.files import write_json


@dataclasses.dataclass
class TinyOptions:
    width: int = 1


class TinyMethod(Method):
    name = "tiny_test_method"
    configurations = ("3d",)
    Options = TinyOptions

    def build_network(self, ctx):
        return nn.Conv3d(ctx.num_input_channels, ctx.num_classes * ctx.options.width, 1)


def make_plans():
    cfg = ConfigurationPlan(name="3d", data_identifier="d", spacing=[1.0, 1.0, 1.0], patch_size=[4, 8, 8], batch_size=2,
                            median_image_size_in_voxels=[6, 10, 12], normalization_schemes=["ZScoreNormalization"],
                            use_mask_for_norm=[False])
    return Plans(schema_version=PLANS_SCHEMA_VERSION, dataset_name="Dataset998_Tiny", plans_name="autosamPlans",
                 planner="default", gpu_memory_target_gb=8, original_median_spacing=[1.0, 1.0, 1.0],
                 original_median_shape=[6, 10, 12], num_channels=1, channel_names={"0": "MR"},
                 labels={"background": 0, "a": 1, "b": 2}, foreground_intensity_properties_per_channel={},
                 configurations={"3d": cfg}, default_method=TinyMethod.name, default_method_rationale="test")


@pytest.fixture
def model_folder(autosam_dirs, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        methods = get_plugin_system().methods
    entry = Entry(TinyMethod(), "tests", "autosam-tests", "1.0")
    monkeypatch.setitem(methods._entries, TinyMethod.name, entry)
    folder = autosam_dirs["results"] / "Dataset998_Tiny" / f"{TinyMethod.name}__autosamPlans__3d"
    make_plans().save(folder / "plans.json")
    write_json(folder / "dataset.json", {"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz",
                                         "channel_names": {"0": "MR"}, "numTraining": 2})
    torch.manual_seed(0)
    for fold in (0, 1):
        net = nn.Conv3d(1, 3, 1)
        save_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", method_entry=entry, options=TinyOptions(),
                        network=net, epoch=1, num_epochs=1, configuration="3d", plans_name="autosamPlans", fold=fold)
    return folder


def test_fold_ensemble_is_the_mean_of_fold_probabilities(model_folder):
    model = load_trained_model(model_folder, [0, 1], "final", "cpu")
    assert [f.fold for f in model.folds] == [0, 1] and model.ctx.num_classes == 3
    data = torch.randn(1, 6, 10, 12)
    ensemble = predict_preprocessed_case(model.method, model.folds, data, {}, model.ctx, use_mirroring=False)
    singles = [predict_preprocessed_case(model.method, [f], data, {}, model.ctx, use_mirroring=False) for f in model.folds]
    assert not torch.allclose(singles[0], singles[1])
    torch.testing.assert_close(ensemble, (singles[0] + singles[1]) / 2)
    # a 1x1x1 convolution is position independent: the sliding window reproduces its softmax exactly
    with torch.no_grad():
        direct = torch.softmax(model.folds[0].network(data[None])[0], 0)
    torch.testing.assert_close(singles[0], direct, atol=1e-5, rtol=1e-5)


def test_missing_checkpoint_and_plugin_are_reported(model_folder, monkeypatch):
    with pytest.raises(FileNotFoundError, match="checkpoint_best.pth.*available: checkpoint_final.pth"):
        load_trained_model(model_folder, [0], "best")
    with pytest.raises(FileNotFoundError, match="fold_3"):
        load_trained_model(model_folder, [3])
    monkeypatch.delitem(get_plugin_system().methods._entries, TinyMethod.name)
    with pytest.raises(RuntimeError, match="autosam-tests"):
        load_trained_model(model_folder, [0])


def test_option_overrides_reach_the_network(model_folder):
    with pytest.raises(ValueError, match="no option 'depth'"):
        load_trained_model(model_folder, [0], method_overrides={"depth": "3"})
    with pytest.raises(ValueError, match="weights do not fit"):
        load_trained_model(model_folder, [0], method_overrides={"width": "2"})
