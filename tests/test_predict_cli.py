"""End to end: plan + preprocess, a tiny training of the unet method, autosam_predict, evaluation.

Training is one epoch of one iteration: the networks are not useful, the test checks the
plumbing (fold ensemble, geometry of the outputs, no labels read, summary.json). The ensemble
arithmetic itself is tested in test_predictor.py; here fold 1 is a copy of fold 0 to save time."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("autosam.preprocessing.preprocessor")
pytest.importorskip("autosam.training.trainer")
pytest.importorskip("autosam.pipeline")

from autosam.cli.evaluate import main as evaluate_main  # noqa: E402
from autosam.cli.predict import main as predict_main  # noqa: E402
from autosam.experiment_planning.fingerprint import extract_fingerprint  # noqa: E402
from autosam.experiment_planning.planning import plan_experiment  # noqa: E402
from autosam.pipeline import plan_and_preprocess  # noqa: E402
from autosam.training.trainer import run_training  # noqa: E402
from training_data import untrained_model  # noqa: E402
from shared_data import TOTALSEG  # noqa: E402

DATA = TOTALSEG


def _train(dataset_id, fold):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_training(dataset_id, "3d", "unet", fold, epochs=1, iters_per_epoch=1, device="cpu", resume=False,
                            validation_only=False, save_npz=False, seed=0, plans_name="autosamPlans", method_overrides={})


def _same_geometry(a: Path, b: Path) -> None:
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ia.GetSize() == ib.GetSize()
    assert np.allclose(ia.GetSpacing(), ib.GetSpacing())
    assert np.allclose(ia.GetOrigin(), ib.GetOrigin())
    assert np.allclose(ia.GetDirection(), ib.GetDirection())


@pytest.mark.slow
def test_tiny_training_then_fold_ensemble_prediction(autosam_dirs, tmp_path):
    from autosam.data.example import make_example_dataset

    folder = make_example_dataset(autosam_dirs["raw"], 990, num_cases=5, kind="organs", seed=0)
    plan_and_preprocess(990, num_processes=1, configurations=("3d",))
    fold0 = _train(990, 0)
    shutil.copytree(fold0, fold0.parent / "fold_1")
    images = tmp_path / "images"
    images.mkdir()
    cases = sorted(p for p in (folder / "imagesTr").iterdir() if p.name.endswith(".nii.gz"))[:2]
    for p in cases:  # no labels next to the images
        shutil.copy(p, images / p.name)
    out = tmp_path / "pred"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", "990", "-c", "3d", "-m", "unet", "-f", "0", "1",
                         "--device", "cpu", "--disable_tta", "--save_probabilities", "--quiet"]) == 0
    args = json.loads((out / "predict_args.json").read_text())
    assert args["folds"] == ["0", "1"]
    for p in cases:
        case = p.name[: -len("_0000.nii.gz")]
        _same_geometry(out / f"{case}.nii.gz", p)
        with np.load(out / f"{case}.npz") as z:
            assert z["probabilities"].shape[1:] == sitk.GetArrayFromImage(sitk.ReadImage(str(p))).shape
    assert evaluate_main(["-ref", str(folder / "labelsTr"), "-pred", str(out), "-djfile", str(folder / "dataset.json")]) == 0
    assert len(json.loads((out / "summary.json").read_text())["metric_per_case"]) == 2


def _write_ct_case(raw: Path, name: str, image: sitk.Image, label: sitk.Image) -> None:
    keep = {1: 1, 2: 2, 3: 3, 5: 4}  # spleen, kidneys, liver -> 1..4
    arr = sitk.GetArrayFromImage(label)
    out = np.zeros(arr.shape, np.uint8)
    for src, dst in keep.items():
        out[arr == src] = dst
    lab = sitk.GetImageFromArray(out)
    lab.CopyInformation(image)
    sitk.WriteImage(image, str(raw / "imagesTr" / f"{name}_0000.nii.gz"))
    sitk.WriteImage(lab, str(raw / "labelsTr" / f"{name}.nii.gz"))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "example_ct_sm.nii.gz").is_file(), reason="shared real CT not available")
def test_real_ct_prediction_keeps_the_input_geometry(autosam_dirs, tmp_path):
    raw = autosam_dirs["raw"] / "Dataset991_RealCT"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    big = sitk.ReadImage(str(DATA / "example_ct.nii.gz"))
    big_label = sitk.ReadImage(str(DATA / "example_seg_fast_force_split.nii.gz"))
    _write_ct_case(raw, "ct_sm", sitk.ReadImage(str(DATA / "example_ct_sm.nii.gz")), sitk.ReadImage(str(DATA / "example_seg.nii.gz")))
    _write_ct_case(raw, "ct_mid", sitk.Cast(big[:, :, 40:76], sitk.sitkInt16), big_label[:, :, 40:76])
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 4},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    extract_fingerprint(991, num_processes=1, undeclared_labels_to_background=True)  # 4 of the labels declared
    plans = plan_experiment(991, configurations=("3d",))
    untrained_model(plans, autosam_dirs["results"] / "Dataset991_RealCT" / "unet__autosamPlans__3d")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DATA / "example_ct_sm.nii.gz", images / "realct_0000.nii.gz")
    out = tmp_path / "pred"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", "991", "-c", "3d", "-m", "unet", "-f", "all",
                         "--device", "cpu", "--disable_tta", "--quiet"]) == 0
    _same_geometry(out / "realct.nii.gz", DATA / "example_ct_sm.nii.gz")
