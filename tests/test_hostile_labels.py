"""Careless labels (issue: hostile input): two names for one value, label values that are not
consecutive, reference label maps with values that are not whole numbers, and the integrity
check's messages."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.cli.evaluate import main as evaluate_main
from autosam.io.dataset import DatasetError, load_dataset_json
from autosam.io.labels import LabelError, LabelManager
from autosam.utils.files import write_json


@pytest.mark.parametrize("labels, order, message", [
    ({"background": 0, "liver": 1, "hepar": 1}, None, "labels 'liver' and 'hepar' have the same value 1"),
    ({"background": 0, "a": [1, 2], "b": [2, 1], "c": 2}, [1, 2], "labels 'a' and 'b' have the same value"),
    ({"background": 0, "a": 100000000}, None, "must be consecutive.*the largest is 100000000"),
    ({"background": 0, "a": 1, "c": 3}, None, r"must be consecutive.*missing: \[2\]"),
    ({"background": 0, "whole": [1, 100000], "core": 1}, [1, 1], "label value 100000 is too large"),
])
def test_label_values_must_be_distinct_and_consecutive(tmp_path, labels, order, message):
    with pytest.raises(LabelError, match=message):
        LabelManager(labels, order)
    dj = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    if order is not None:
        dj["regions_class_order"] = order
    write_json(tmp_path / "dataset.json", dj)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'dataset.json'}: .*{message}"):
        load_dataset_json(tmp_path / "dataset.json")


def test_valid_labels_still_load():
    assert LabelManager({"background": 0, "a": 1, "b": 2, "ignore": 3}).num_segmentation_heads == 3
    brats = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing tumour": 3}
    assert LabelManager(brats, [1, 2, 3]).has_regions


def _write(path, arr):
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(path))


def test_evaluation_reads_references_as_label_maps(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    seg = np.zeros((4, 6, 6), np.float32)
    seg[1:3, 2:4, 2:4] = 1
    bad = seg.copy()
    bad[0, 0, 0] = 1.5
    _write(ref / "c1.nii.gz", bad)
    _write(pred / "c1.nii.gz", seg.astype(np.uint8))
    write_json(tmp_path / "dataset.json", {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"})
    assert evaluate_main([str(ref), str(pred), "-djfile", str(tmp_path / "dataset.json"), "-o",
                          str(tmp_path / "summary.json")]) != 0
    err = capsys.readouterr().err.strip()
    assert "c1.nii.gz: label values must be whole numbers; found 1.5" in err and "Traceback" not in err
    assert not (tmp_path / "summary.json").exists()


def test_integrity_geometry_message_prints_plain_numbers():
    from autosam.experiment_planning.integrity import _describe_geometry_mismatch
    from autosam.io.image import ImageGeometry

    a = ImageGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))
    b = ImageGeometry((1.0, 1.0, 1.0), (5.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 4, 4))
    text = _describe_geometry_mismatch(a, b)
    assert text == "origin (5.0, 0.0, 0.0) != (0.0, 0.0, 0.0)" and "np." not in text
