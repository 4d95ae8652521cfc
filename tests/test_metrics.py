import json
import math

import numpy as np
import pytest

from autosam.cli.evaluate import main as evaluate_main
from autosam.evaluation.evaluate import evaluate_folder
from autosam.evaluation.metrics import hd95, label_metrics
from autosam.io.image import ImageGeometry, write_image


def cube(shape=(6, 6, 6), lo=(1, 1, 1), size=3):
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return m


def test_overlap_metrics_hand_computed():
    ref = cube()
    pred = cube(lo=(1, 1, 2))  # shifted by one voxel along x: 18 of 27 voxels overlap
    m = label_metrics(ref, pred)
    assert (m["TP"], m["FP"], m["FN"], m["n_ref"], m["n_pred"]) == (18, 9, 9, 27, 27)
    assert m["TN"] == 216 - 36
    assert m["Dice"] == pytest.approx(2 * 18 / (2 * 18 + 9 + 9))
    assert m["IoU"] == pytest.approx(18 / 36)
    # surface voxels 1 voxel apart (the shifted faces and the uncovered centre)
    assert m["HD95"] == pytest.approx(1.0)


def test_hd95_honours_anisotropic_spacing():
    ref = cube()
    pred = cube(lo=(1, 1, 2))
    # x spacing 2 mm: the shifted faces are 2 mm apart; the centre voxel 1 mm (z) from a face
    assert hd95(ref, pred, spacing=(1.0, 1.0, 2.0)) == pytest.approx(2.0)
    assert hd95(ref, pred, spacing=(5.0, 5.0, 0.5)) == pytest.approx(0.5)
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, 0] = True
    b[2, 1, 0] = True
    m = label_metrics(a, b, spacing=(3.0, 2.0, 1.0))
    assert m["Dice"] == 0.0 and m["IoU"] == 0.0
    assert m["HD95"] == pytest.approx(math.sqrt((2 * 3.0) ** 2 + (1 * 2.0) ** 2))


def test_hd95_ignores_the_top_5_percent_hausdorff_does_not():
    ref = np.zeros((10, 12, 12), bool)
    ref[0, 1:11, 1:11] = True  # 100 voxels, all on the surface
    pred = ref.copy()
    pred[9, 5, 5] = True  # one outlier 9 slices away
    assert hd95(ref, pred, spacing=(2.0, 1.0, 1.0)) == pytest.approx(0.0)
    assert hd95(ref, pred, spacing=(2.0, 1.0, 1.0), percentile=100) == pytest.approx(18.0)


def test_empty_cases():
    empty = np.zeros((5, 5, 5), bool)
    some = cube((5, 5, 5), (1, 1, 1), 2)
    both = label_metrics(empty, empty, spacing=(1, 1, 1))
    assert math.isnan(both["Dice"]) and math.isnan(both["IoU"]) and both["HD95"] == 0.0
    assert both["TN"] == 125 and both["n_ref"] == 0
    for ref, pred in ((empty, some), (some, empty)):
        m = label_metrics(ref, pred, spacing=(1, 1, 1))
        assert m["Dice"] == 0.0 and m["IoU"] == 0.0 and math.isinf(m["HD95"])
    with pytest.raises(ValueError, match="differs"):
        label_metrics(empty, np.zeros((5, 5, 4), bool))


GEOM = dict(origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def write(folder, name, arr, spacing=(2.0, 1.0, 1.0)):
    write_image(folder / name, arr.astype(np.uint8), ImageGeometry(spacing, GEOM["origin"], GEOM["direction"], arr.shape))


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "tumour": 2}, "file_ending": ".nii.gz",
                              "channel_names": {"0": "CT"}, "numTraining": 2}))
    a_ref = cube().astype(np.uint8)
    a_pred = cube(lo=(1, 1, 2)).astype(np.uint8)  # label 2 absent from both: Dice NaN
    b_ref = cube().astype(np.uint8)
    b_pred = cube().astype(np.uint8)
    b_pred[0, 0, 0] = 2  # label 2 only predicted: Dice 0, HD95 infinite
    write(ref, "a.nii.gz", a_ref)
    write(pred, "a.nii.gz", a_pred)
    write(ref, "b.nii.gz", b_ref)
    write(pred, "b.nii.gz", b_pred)
    return ref, pred, dj


def test_evaluate_folder_summary_layout_and_means(folders):
    ref, pred, dj = folders
    out = pred / "summary.json"
    summary = evaluate_folder(ref, pred, dj, out)
    on_disk = json.loads(out.read_text())
    assert set(on_disk) >= {"metric_per_case", "mean", "foreground_mean"}
    cases = {c["prediction_file"].split("/")[-1]: c["metrics"] for c in on_disk["metric_per_case"]}
    assert cases["a.nii.gz"]["1"]["Dice"] == pytest.approx(2 / 3)
    assert cases["a.nii.gz"]["1"]["HD95"] == pytest.approx(1.0)  # spacing (2, 1, 1): the x shift is 1 mm
    assert math.isnan(cases["a.nii.gz"]["2"]["Dice"])
    assert cases["a.nii.gz"]["2"]["HD95"] == 0.0
    assert cases["b.nii.gz"]["2"]["Dice"] == 0.0
    assert cases["b.nii.gz"]["2"]["HD95"] is None and cases["b.nii.gz"]["2"]["HD95_infinite"] is True
    mean = on_disk["mean"]
    assert mean["1"]["Dice"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert mean["2"]["Dice"] == pytest.approx(0.0)  # NaN of case a left out
    assert mean["2"]["HD95"] == pytest.approx(0.0) and mean["2"]["HD95_n_infinite"] == 1
    assert on_disk["foreground_mean"]["Dice"] == pytest.approx(((2 / 3 + 1.0) / 2 + 0.0) / 2)
    assert on_disk["foreground_mean"]["HD95_n_infinite"] == 1
    assert summary["mean"]["1"]["TP"] == pytest.approx((18 + 27) / 2)


def test_evaluate_folder_errors_name_the_file(folders, tmp_path):
    ref, pred, dj = folders
    write(pred, "c.nii.gz", cube().astype(np.uint8))
    with pytest.raises(FileNotFoundError, match="c.nii.gz"):
        evaluate_folder(ref, pred, dj)
    (pred / "c.nii.gz").unlink()
    write(pred, "b.nii.gz", cube().astype(np.uint8), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_folder(ref, pred, dj)
    (pred / "b.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no prediction"):
        evaluate_folder(ref, pred, dj, strict=True)
    assert len(evaluate_folder(ref, pred, dj)["metric_per_case"]) == 1


def test_evaluate_cli_writes_summary(folders, capsys):
    ref, pred, dj = folders
    assert evaluate_main(["-ref", str(ref), "-pred", str(pred), "-djfile", str(dj), "-np", "2"]) == 0
    assert json.loads((pred / "summary.json").read_text())["foreground_mean"]["Dice"] > 0
    assert "foreground mean Dice" in capsys.readouterr().out
    assert evaluate_main(["-ref", str(ref / "nope"), "-pred", str(pred), "-djfile", str(dj)]) == 2
