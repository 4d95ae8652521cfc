"""Labels as nnU-Net v2 reads them: classes, regions (regions_class_order) and the ignore label,
through parsing, the unet loss, export, evaluation, training and prediction."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from autosam.evaluation.evaluate import evaluate_folder
from autosam.evaluation.metrics import case_metrics
from autosam.inference.export import probabilities_to_segmentation
from autosam.io.dataset import DatasetError, load_dataset_json
from autosam.io.image import ImageGeometry, read_image, write_image
from autosam.io.labels import LabelError, LabelManager, sort_metric_keys
from autosam.utils.files import write_json
from autosam_plugins.unet.loss import DiceCELoss

BRATS = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": [3]}
# regions over the tiny dataset's labels (1 = ball, 2 = bar): "anything" and "bar"
REGION_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "anything": [1, 2], "bar": [2]},
               "regions_class_order": [1, 2], "numTraining": 6, "file_ending": ".nii.gz"}
GEOMETRY = ImageGeometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                         shape=(4, 6, 6))


# ----------------------------------------------------------------------------------- parsing
def test_integer_labels():
    lm = LabelManager({"background": 0, "liver": 1, "tumour": 2})
    assert not lm.has_regions and not lm.has_ignore_label
    assert lm.all_labels == [0, 1, 2] and lm.foreground_labels == [1, 2] and lm.num_segmentation_heads == 3
    assert lm.evaluation_keys == [1, 2] and lm.output_names == ["liver", "tumour"]
    # single-entry lists alone make no region (nnU-Net: a region has more than one label)
    assert not LabelManager({"background": 0, "a": [1], "b": 2}).has_regions
    # next to a real region, an integer is a region of one label, scored under its own key (nnU-Net)
    mixed = LabelManager({"background": 0, "a": [1, 2], "b": 3}, [1, 3])
    assert mixed.foreground_regions == [(1, 2), (3,)] and mixed.evaluation_keys == [(1, 2), 3]


def test_regions_brats():
    lm = LabelManager(BRATS, [1, 2, 3])
    assert lm.has_regions and lm.all_labels == [0, 1, 2, 3] and lm.foreground_labels == [1, 2, 3]
    assert lm.foreground_regions == [(1, 2, 3), (2, 3), (3,)]
    assert lm.num_segmentation_heads == 3 and lm.output_names == ["whole tumour", "tumour core", "enhancing tumour"]
    assert lm.to_json() == {"labels": {**BRATS}, "regions_class_order": [1, 2, 3]}
    # probabilities -> label map: regions painted in regions_class_order, later ones on top
    probs = torch.tensor([[0.9, 0.9, 0.9, 0.1], [0.1, 0.8, 0.8, 0.1], [0.1, 0.1, 0.7, 0.9]])
    assert lm.convert_probabilities_to_segmentation(probs).tolist() == [1, 2, 3, 3]
    logits = torch.logit(probs)[None]  # 1 x 3 x 4, classes on axis 1
    assert lm.convert_logits_to_segmentation(logits, dim=1).tolist() == [[1, 2, 3, 3]]
    assert lm.predicted_masks(logits).tolist() == (probs > 0.5)[:, None].tolist()
    seg = np.array([0, 1, 2, 3])
    assert lm.masks_of(seg).tolist() == [[False, True, True, True], [False, False, True, True], [False, False, False, True]]


def test_ignore_label():
    lm = LabelManager({"background": 0, "a": 1, "b": 2, "ignore": 3})
    assert lm.ignore_label == 3 and lm.all_labels == [0, 1, 2] and lm.num_segmentation_heads == 3
    assert lm.declared_values == [0, 1, 2, 3] and lm.foreground_labels == [1, 2] and lm.output_names == ["a", "b"]
    regions = LabelManager({**BRATS, "ignore": 4}, [1, 2, 3])
    assert regions.ignore_label == 4 and regions.num_segmentation_heads == 3


@pytest.mark.parametrize("labels, order, message", [
    (BRATS, None, "regions_class_order' is required"),
    (BRATS, [1, 2], "has 2 entries but there are 3 regions"),
    (BRATS, [1, 2, 7], r"value\(s\) \[7\] are not foreground labels"),
    ({"background": 0, "a": 1}, [1], "defines no region"),
    ({"background": 0, "a": 1, "ignore": 5}, None, "highest value, 2"),
    ({"background": 0, "a": 1, "ignore": [2, 3]}, None, "must be one integer"),
    ({"a": 1, "b": 2}, None, "to 0"),
    ({"background": 0, "a": "one"}, None, "label 'a' has value 'one'"),
    ({"background": 0, "a": [0, 1], "b": [1, 2]}, [1, 2], "contains the background value 0"),
])
def test_label_errors_name_the_file(tmp_path, labels, order, message):
    with pytest.raises(LabelError, match=message):
        LabelManager(labels, order)
    dj = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    if order is not None:
        dj["regions_class_order"] = order
    write_json(tmp_path / "dataset.json", dj)
    with pytest.raises(DatasetError, match=str(tmp_path / "dataset.json")):
        load_dataset_json(tmp_path / "dataset.json")


def test_region_dataset_json_loads(tmp_path):
    write_json(tmp_path / "dataset.json", {"channel_names": {"0": "T1"}, "labels": BRATS, "regions_class_order": [1, 2, 3],
                                           "numTraining": 1, "file_ending": ".nii.gz"})
    assert load_dataset_json(tmp_path / "dataset.json")["labels"] == BRATS


# ----------------------------------------------------------------------------------- loss
def test_ignored_voxels_get_zero_gradient_classes_and_regions():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 4, 6, 6))
    target[:, :, 1] = 3  # one ignored slice
    for loss, k in ((DiceCELoss(ignore_label=3), 3), (DiceCELoss(regions=[(1, 2), (2,)], ignore_label=3), 2)):
        logits = torch.randn(2, k, 4, 6, 6, requires_grad=True)
        loss(logits, target).backward()
        assert torch.all(logits.grad[:, :, 1] == 0)
        assert logits.grad[:, :, 0].abs().sum() > 0
        # whatever the logits on ignored voxels, the loss is the same
        changed = logits.detach().clone()
        changed[:, :, 1] = torch.randn_like(changed[:, :, 1]) * 10
        assert loss(changed, target).item() == pytest.approx(loss(logits.detach(), target).item(), rel=1e-6)


def test_region_loss_is_bce_plus_dice_per_region():
    target = torch.zeros(1, 1, 4, 8, 8, dtype=torch.long)
    target[:, :, 1:3, 2:6, 2:6] = 1
    target[:, :, 2, 3:5, 3:5] = 2
    loss = DiceCELoss(regions=[(1, 2), (2,)])
    regions = torch.cat([(target >= 1), (target == 2)], 1).float()
    perfect = (regions * 2 - 1) * 30
    assert loss(perfect, target).item() < 1e-3
    assert loss(-perfect, target).item() > 1.5  # Dice ~1 + large BCE
    with pytest.raises(ValueError, match="3 outputs for 2 regions"):
        loss(torch.zeros(1, 3, 4, 8, 8), target)


# ----------------------------------------------------------------------------------- export
def test_export_regions_through_regions_class_order():
    lm = LabelManager(BRATS, [1, 2, 3])
    probs = np.zeros((3, 4, 6, 6), np.float32)
    probs[0, 1:3, 1:5, 1:5] = 0.9  # whole tumour
    probs[1, 1:3, 2:4, 2:4] = 0.8  # core
    probs[2, 2, 2, 2] = 0.7  # enhancing
    props = {"geometry": GEOMETRY.to_dict(), "shape_before_cropping": [6, 6, 6], "bbox_used_for_cropping":
             [[1, 5], [0, 6], [0, 6]], "shape_after_cropping_and_before_resampling": [4, 6, 6], "spacing": [1.0, 1.0, 1.0]}
    seg, full = probabilities_to_segmentation(torch.from_numpy(probs), props, None, return_probabilities=True,
                                              label_manager=lm)
    expected = np.zeros((6, 6, 6), np.uint8)
    expected[2:4, 1:5, 1:5] = 1
    expected[2:4, 2:4, 2:4] = 2
    expected[3, 2, 2] = 3
    assert np.array_equal(seg, expected)
    assert full.shape == (3, 6, 6, 6) and full[:, 0].max() == 0  # no region outside the crop box
    with pytest.raises(ValueError, match="probability channels"):
        probabilities_to_segmentation(torch.zeros(4, 4, 6, 6), props, None, label_manager=lm)


# ----------------------------------------------------------------------------------- evaluation
def test_region_metrics_compare_the_union_of_labels():
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[1:3, 1:4, 1:4] = 1
    ref[1:3, 2:3, 2:3] = 2
    pred = ref.copy()
    pred[ref == 2] = 1  # the whole region right, the core missed entirely
    m = case_metrics(ref, pred, [(1, 2), (2,)], compute_hd95=False)
    assert set(m) == {"(1, 2)", "(2,)"}
    assert m["(1, 2)"]["Dice"] == 1.0 and m["(2,)"]["Dice"] == 0.0
    assert m["(1, 2)"]["TP"] == int((ref > 0).sum())
    assert sort_metric_keys(["(2,)", "2", "(1, 2)", "10"]) == ["2", "10", "(1, 2)", "(2,)"]


def _write_pair(folder, name, ref, pred, dataset_json):
    for sub, arr in (("ref", ref), ("pred", pred)):
        write_image(folder / sub / f"{name}.nii.gz", arr.astype(np.uint8), GEOMETRY)
    write_json(folder / "dataset.json", dataset_json)


def test_evaluate_folder_per_region(tmp_path):
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[1:3, 1:5, 1:5] = 1
    ref[1:3, 2:4, 2:4] = 2
    pred = np.zeros_like(ref)
    pred[1:3, 1:5, 1:5] = 1  # region "anything" exact, region "bar" absent
    _write_pair(tmp_path, "c", ref, pred, REGION_JSON)
    summary = evaluate_folder(tmp_path / "ref", tmp_path / "pred", tmp_path / "dataset.json")
    assert summary["labels"] == {"(1, 2)": "anything", "(2,)": "bar"}
    assert summary["mean"]["(1, 2)"]["Dice"] == 1.0 and summary["mean"]["(2,)"]["Dice"] == 0.0
    assert summary["foreground_mean"]["Dice"] == pytest.approx(0.5)


def test_ignored_voxels_change_no_metric(tmp_path):
    dj = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2, "ignore": 3},
          "numTraining": 1, "file_ending": ".nii.gz"}
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, (4, 6, 6)).astype(np.uint8)
    ref[::2] = 3  # every other slice unannotated
    pred = rng.integers(0, 3, (4, 6, 6)).astype(np.uint8)
    other = pred.copy()
    other[ref == 3] = rng.integers(0, 3, int((ref == 3).sum()))  # differs only where ignored
    assert not np.array_equal(pred, other)
    _write_pair(tmp_path / "one", "c", ref, pred, dj)
    _write_pair(tmp_path / "two", "c", ref, other, dj)
    s1 = evaluate_folder(tmp_path / "one" / "ref", tmp_path / "one" / "pred", tmp_path / "one" / "dataset.json")
    s2 = evaluate_folder(tmp_path / "two" / "ref", tmp_path / "two" / "pred", tmp_path / "two" / "dataset.json")
    assert set(s1["mean"]) == {"1", "2"}  # ignore is not scored
    m1, m2 = s1["metric_per_case"][0]["metrics"], s2["metric_per_case"][0]["metrics"]
    assert m1 == m2
    # and the counts are over the annotated voxels only
    valid = int((ref != 3).sum())
    assert all(v["TP"] + v["FP"] + v["FN"] + v["TN"] == valid for v in m1.values())
    assert all(math.isfinite(v["Dice"]) for v in m1.values())


# ----------------------------------------------------------------------------------- training / prediction
def _raw_images_from_preprocessed(pre_folder, keys, out):
    """The tiny preprocessed cases are stored unresampled and uncropped: write them as raw images."""
    from autosam.preprocessing.storage import load_case

    out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        data, _seg, props = load_case(pre_folder / "autosamPlans_3d", key)
        write_image(out / f"{key}_0000.nii.gz", np.asarray(data[0]), ImageGeometry.from_dict(props["geometry"]))


def test_region_dataset_trains_predicts_and_exports_with_unet(autosam_dirs, tmp_path):
    from autosam.cli.predict import main as predict_main
    from autosam.training import checkpoint as ckpt_io
    from autosam.training.trainer import run_training
    from training_data import NAME, make_tiny_preprocessed

    folder = make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4,
                                    dataset_json=REGION_JSON)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=1, iters_per_epoch=2, device="cpu", num_workers=0, seed=0,
                            save_npz=True)
    history = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")["logger"]
    assert len(history["pseudo_dice"][0]) == 2  # one pseudo Dice per region
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2)", "(2,)"} and summary["labels"]["(2,)"] == "bar"
    npz_meta = json.loads((fold_dir / "validation" / "case_000.json").read_text())
    assert npz_meta["regions"] == [[1, 2], [2]] and npz_meta["regions_class_order"] == [1, 2]

    images = tmp_path / "images"
    _raw_images_from_preprocessed(folder, ["case_000", "case_001"], images)
    out = tmp_path / "pred"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", NAME, "-c", "3d", "-m", "unet", "-f", "0",
                         "--device", "cpu", "--disable_tta", "--save_probabilities", "--quiet"]) == 0
    lm = LabelManager(REGION_JSON["labels"], REGION_JSON["regions_class_order"])
    for key in ("case_000", "case_001"):
        seg, _ = read_image(out / f"{key}.nii.gz")
        with np.load(out / f"{key}.npz") as z:
            probs = z["probabilities"]
        assert probs.shape == (2, *seg.shape) and probs.min() >= 0 and probs.max() <= 1  # sigmoid per region
        assert set(np.unique(seg)) <= {0, 1, 2}
        # the label map is exactly the regions painted in regions_class_order
        assert np.array_equal(seg, lm.convert_probabilities_to_segmentation(torch.from_numpy(probs)).numpy())


def test_method_without_region_support_is_refused_before_writing(autosam_dirs, tmp_path, capsys):
    from autosam.cli.predict import main as predict_main
    from autosam.cli.train import main as train_main
    from autosam.plugins import get_plugin_system
    from autosam.training.checkpoint import save_checkpoint
    from training_data import NAME, make_tiny_preprocessed, tiny_plans

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4, dataset_json=REGION_JSON)
    methods = get_plugin_system().methods
    refusing = next(n for n in methods.names() if not methods.get(n).supports_regions)
    assert train_main([NAME, "3d", refusing, "0", "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"method {refusing!r} does not support region-based labels" in err and "methods that do: " in err
    assert "unet" in err.split("methods that do: ")[1]
    assert list(autosam_dirs["results"].iterdir()) == []  # nothing written

    # a model of that method on these labels: autosam_predict refuses it before creating the output
    model = autosam_dirs["results"] / NAME / f"{refusing}__autosamPlans__3d"
    model.mkdir(parents=True)
    tiny_plans(dataset_json=REGION_JSON).save(model / "plans.json")
    write_json(model / "dataset.json", REGION_JSON)
    entry = methods.entry(refusing)
    save_checkpoint(model / "fold_0" / "checkpoint_final.pth", method_entry=entry, options=entry.obj.make_options(),
                    network=torch.nn.Conv3d(1, 1, 1), epoch=1, num_epochs=1, configuration="3d", plans_name="autosamPlans")
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "x_0000.nii.gz", np.zeros((4, 6, 6), np.float32), GEOMETRY)
    out = tmp_path / "pred"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", NAME, "-c", "3d", "-m", refusing, "-f", "0",
                         "--device", "cpu", "--quiet"]) == 2
    assert "does not support region-based labels" in capsys.readouterr().err
    assert not out.exists()


def test_ignore_label_is_refused_for_methods_without_support(autosam_dirs):
    from autosam.plugins import get_plugin_system
    from autosam.training.trainer import run_training
    from training_data import DATASET_JSON, NAME, make_tiny_preprocessed

    dj = {**DATASET_JSON, "labels": {**DATASET_JSON["labels"], "ignore": 3}}
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4, dataset_json=dj)
    methods = get_plugin_system().methods
    refusing = [n for n in methods.names() if not methods.get(n).supports_ignore_label]
    assert refusing and methods.get("unet").supports_ignore_label
    with pytest.raises(ValueError, match=r"does not support an 'ignore' label \(value 3\); methods that do: .*unet"):
        run_training(NAME, "3d", refusing[0], 0, epochs=1, iters_per_epoch=1, device="cpu", num_workers=0)
    assert list(autosam_dirs["results"].iterdir()) == []


def test_foreground_sampling_never_targets_the_ignore_label(tmp_path):
    from autosam.preprocessing.preprocessor import sample_class_locations
    from autosam.preprocessing.storage import save_case
    from autosam.training.dataloading import PreprocessedDataset, make_loader

    seg = np.full((1, 24, 48, 48), 3, np.int16)  # all unannotated ...
    seg[0, 10:12, 40:42, 40:42] = 1  # ... but one tiny annotated blob
    seg[0, 10:12, 0:2, 0:2] = 0
    assert set(sample_class_locations(seg[0], "k", exclude=3)) == {"1"}
    locs = sample_class_locations(seg[0], "k")  # as older preprocessing stored them
    save_case(tmp_path, "c", np.zeros((1, 24, 48, 48), np.float32), seg, {"class_locations": locs})
    loader = make_loader(PreprocessedDataset(tmp_path), 2, [8, 8, 8], None, train=False, num_workers=0, seed=0,
                         ignore_label=3)
    forced = [next(loader)["target"][1] for _ in range(15)]
    assert all((t == 1).any() for t in forced)  # the forced sample is centred on label 1, never on ignore


@pytest.mark.slow
def test_sparse_annotation_with_ignore_label_still_learns(autosam_dirs):
    """Only every 5th slice is annotated, the rest is ``ignore``. unet must still segment the whole
    volume (a broken implementation that learns ``ignore`` as a class predicts it on most voxels and
    scores near 0 against the full labels; without masking the loss, it also cannot learn the
    structures on the unannotated slices)."""
    from autosam.training.trainer import run_training
    from training_data import DATASET_JSON, NAME, make_tiny_preprocessed

    dj = {**DATASET_JSON, "labels": {**DATASET_JSON["labels"], "ignore": 3}}
    full = {}

    def sparse(seg):
        out = np.full_like(seg, 3)
        out[::5] = seg[::5]
        full[len(full)] = seg.copy()
        return out

    folder = make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=6, features=(8, 16, 32),
                                    dataset_json=dj, annotate=sparse)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=16, iters_per_epoch=12, device="cpu", num_workers=1, seed=1)
    validation = fold_dir / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    # score against the full (dense) labels of the validation cases
    dense = folder / "dense"
    geometry = None
    for i, seg in full.items():
        key = f"case_{i:03d}"
        if (validation / f"{key}.nii.gz").is_file():
            pred, geometry = read_image(validation / f"{key}.nii.gz")
            assert 3 not in np.unique(pred)  # predictions never contain the ignore label
            write_image(dense / "ref" / f"{key}.nii.gz", seg.astype(np.uint8), geometry)
            write_image(dense / "pred" / f"{key}.nii.gz", pred, geometry)
    write_json(dense / "dataset.json", DATASET_JSON)
    dense_summary = evaluate_folder(dense / "ref", dense / "pred", dense / "dataset.json")
    assert len(dense_summary["metric_per_case"]) == 3
    # measured (seed 1): 0.84; with unannotated voxels trained as background instead: 0.22
    assert dense_summary["foreground_mean"]["Dice"] >= 0.7, dense_summary["mean"]


def test_plan_and_preprocess_region_dataset_with_ignore_label(autosam_dirs):
    """Fingerprint, plans and preprocessing count regions and leave the ignore label out."""
    from autosam.pipeline import plan_and_preprocess
    from autosam.preprocessing.storage import load_case
    from raw_dataset_builder import write_raw_dataset

    cases = {}
    for i in range(3):
        rng = np.random.default_rng(i)
        label = np.zeros((8, 12, 12), np.uint8)
        label[2:6, 3:9, 3:9] = 1
        label[3:5, 4:8, 4:8] = 2
        label[3:5, 5:7, 5:7] = 3
        label[7] = 4  # the last slice unannotated
        image = rng.normal(0, 1, label.shape).astype(np.float32) + label
        image[label == 4] += 100  # unannotated voxels: not foreground, not in the intensity statistics
        cases[f"b{i}"] = ([image], label)
    write_raw_dataset(autosam_dirs["raw"], "Dataset604_Regions", cases, labels={**BRATS, "ignore": 4},
                      channel_names={"0": "T1"})
    dj_path = autosam_dirs["raw"] / "Dataset604_Regions" / "dataset.json"
    dj = json.loads(dj_path.read_text())
    write_json(dj_path, {**dj, "regions_class_order": [1, 2, 3]})
    plans = plan_and_preprocess(604, num_processes=1, configurations=("3d",), verify=True)
    assert plans.regions_class_order == [1, 2, 3] and plans.num_classes == 3
    assert plans.label_manager.foreground_regions == [(1, 2, 3), (2, 3), (3,)] and plans.label_manager.ignore_label == 4
    from autosam.plugins import get_plugin_system

    assert get_plugin_system().methods.get(plans.default_method).supports_regions
    fingerprint = json.loads((autosam_dirs["preprocessed"] / "Dataset604_Regions" / "dataset_fingerprint.json").read_text())
    assert sorted(fingerprint["class_statistics"]) == ["1", "2", "3"]  # labels, never ignore
    assert fingerprint["foreground_intensity_properties_per_channel"]["0"]["max"] < 50
    folder = autosam_dirs["preprocessed"] / "Dataset604_Regions" / plans.configuration("3d").data_identifier
    _, seg, props = load_case(folder, "b0")
    assert 4 in np.unique(seg) and "4" not in props["class_locations"] and "3" in props["class_locations"]


def test_ensemble_of_region_probabilities_paints_regions(tmp_path):
    from autosam.postprocessing.ensemble import ensemble_folders
    from autosam.utils.files import save_npz

    p1 = np.zeros((2, *GEOMETRY.shape), np.float32)
    p1[0, 1:3] = 0.9  # region (1, 2) on slices 1-2
    p1[1, 2] = 0.8  # region (2,) on slice 2
    p2 = p1.copy()
    p2[1, 2] = 0.0  # the second model misses (2,): mean 0.4, below 0.5
    p2[1, 1] = 1.0  # and sees it on slice 1: mean 0.5, not above 0.5
    for folder, probs in ((tmp_path / "a", p1), (tmp_path / "b", p2)):
        save_npz(folder / "x.npz", probabilities=probs)
        write_json(folder / "x.json", {"geometry": GEOMETRY.to_dict(), "regions": [[1, 2], [2]],
                                       "regions_class_order": [1, 2]})
    ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    seg, _ = read_image(tmp_path / "out" / "x.nii.gz")
    expected = np.zeros(GEOMETRY.shape, np.uint8)
    expected[1:3] = 1
    assert np.array_equal(seg, expected)


@pytest.mark.slow
def test_unet_learns_regions(autosam_dirs):
    """Region-based training (sigmoid per region, BCE + Dice) must segment both regions of the tiny
    dataset; an untrained or broken network scores near 0 on the thin bar. Measured (seed 1): 0.96
    and 0.96."""
    from autosam.training.trainer import run_training
    from training_data import NAME, make_tiny_preprocessed

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=6, features=(8, 16, 32),
                           dataset_json=REGION_JSON)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=16, iters_per_epoch=12, device="cpu", num_workers=1, seed=1)
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 3
    assert summary["mean"]["(1, 2)"]["Dice"] >= 0.8 and summary["mean"]["(2,)"]["Dice"] >= 0.7, summary["mean"]
