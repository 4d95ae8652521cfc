"""autosam_evaluate_simple: labels from the command line, an ignore label, no dataset.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autosam.cli.evaluate import main_simple
from autosam.evaluation.metrics import case_metrics
from autosam.io.image import ImageGeometry, write_image

GEOMETRY = ImageGeometry(spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=(4, 10, 10))


def _write(folder, name, array):
    write_image(folder / name, array.astype(np.uint8), GEOMETRY)


def test_ignore_label_voxels_count_for_nothing():
    ref = np.zeros((1, 4, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0, :2] = 1
    pred[0, 0, :3] = 1  # one false positive...
    ref[0, 0, 2] = 9    # ...on a voxel the reference marks as ignored
    pred[0, 2, 0] = 1   # a real false positive
    m = case_metrics(ref, pred, [1], compute_hd95=False, ignore_label=9)["1"]
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (2, 1, 0, 20)  # 24 voxels, 1 ignored
    assert m["Dice"] == pytest.approx(4 / 5)
    plain = case_metrics(ref, pred, [1], compute_hd95=False)["1"]
    assert (plain["FP"], plain["TN"]) == (2, 20)


def test_evaluate_simple_command(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    a = np.zeros(GEOMETRY.shape, np.uint8)
    a[1:3, 2:6, 2:6] = 1
    a[1:3, 7:9, 7:9] = 2
    b = a.copy()
    b[1:3, 2:6, 5] = 0          # label 1 loses 8 of 32 voxels
    a_ign = a.copy()
    a_ign[0] = 5                # slice 0 ignored in the reference...
    b[0] = 2                    # ...so the prediction's label 2 there does not count
    _write(ref, "c1.nii.gz", a_ign)
    _write(pred, "c1.nii.gz", b)
    _write(ref, "c2.nii.gz", a)  # no prediction: listed, not an error
    assert main_simple([str(ref), str(pred), "-l", "1", "2", "-il", "5", "--chill"]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["mean"]["1"]["Dice"] == pytest.approx(2 * 24 / (24 + 32))
    assert summary["mean"]["2"]["Dice"] == pytest.approx(1.0)
    assert summary["ignore_label"] == 5 and summary["references_without_prediction"] == ["c2.nii.gz"]
    assert summary["labels"] == {"1": "1", "2": "2"}
    assert main_simple([str(ref), str(pred), "-l", "1", "2", "-o", str(tmp_path / "s.json"), "--no-hd95"]) == 0
    without = json.loads((tmp_path / "s.json").read_text())
    assert without["mean"]["2"]["Dice"] < 0.5 and "HD95" not in without["mean"]["1"]
    capsys.readouterr()
    assert main_simple([str(ref), str(pred), "-l", "1", "--strict"]) == 2
    assert "no prediction for 1 reference(s), e.g. c2.nii.gz" in capsys.readouterr().err
    assert main_simple([str(ref), str(pred), "-l", "1", "-il", "1"]) == 2
    assert "both evaluated and the ignore label" in capsys.readouterr().err
    assert main_simple([str(ref), str(tmp_path / "nope"), "-l", "1"]) == 2
    assert "prediction folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_simple([str(ref), str(pred)])  # -l is required
