"""verify_dataset_integrity: every fault is reported with its file, all at once, nothing written."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.experiment_planning.fingerprint import extract_fingerprint
from autosam.experiment_planning.integrity import DatasetIntegrityError, verify_dataset_integrity
from autosam.io.image import write_image
from autosam.utils.files import read_json, write_json
from raw_dataset_builder import geometry, simple_case, write_raw_dataset


def _dataset(root, n_channels=1, n=3):
    cases = {f"c{i}": simple_case(i, n_channels=n_channels) for i in range(n)}
    return write_raw_dataset(root, "Dataset021_Tiny", cases)


def _problems(folder):
    with pytest.raises(DatasetIntegrityError) as info:
        verify_dataset_integrity(folder)
    return info.value.problems


def test_clean_dataset_passes(tmp_path):
    folder = _dataset(tmp_path, n_channels=2)
    verify_dataset_integrity(folder)
    verify_dataset_integrity(folder, num_processes=2)


def _missing_channel(f):
    (f / "imagesTr" / "c1_0001.nii.gz").unlink()
    return "imagesTr/c1_0001.nii.gz", "missing channel 1"


def _undeclared_channel(f):
    ch, _ = simple_case(0)
    write_image(f / "imagesTr" / "c0_0002.nii.gz", ch[0], geometry(ch[0].shape))
    return "imagesTr/c0_0002.nii.gz", "not declared"


def _label_spacing(f):
    _, lab = simple_case(1)
    write_image(f / "labelsTr" / "c1.nii.gz", lab, geometry(lab.shape, spacing=(2.0, 1.5, 1.0)))
    return "labelsTr/c1.nii.gz", "spacing"


def _label_shape(f):
    write_image(f / "labelsTr" / "c1.nii.gz", np.zeros((6, 10, 11), np.uint8), geometry((6, 10, 11)))
    return "labelsTr/c1.nii.gz", "shape"


def _channel_origin(f):
    ch, _ = simple_case(2, n_channels=2)
    write_image(f / "imagesTr" / "c2_0001.nii.gz", ch[1], geometry(ch[1].shape, origin=(0.0, 5.0, 0.0)))
    return "imagesTr/c2_0001.nii.gz", "origin"


def _label_direction(f):
    _, lab = simple_case(0)
    write_image(f / "labelsTr" / "c0.nii.gz", lab, geometry(lab.shape, direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)))
    return "labelsTr/c0.nii.gz", "direction"


def _undeclared_label(f):
    _, lab = simple_case(0)
    lab[0, 0, 0] = 7
    write_image(f / "labelsTr" / "c0.nii.gz", lab, geometry(lab.shape))
    return "labelsTr/c0.nii.gz", "[7] are not declared"


def _nan(f):
    ch, _ = simple_case(1)
    ch[0][1, 1, 1] = np.nan
    ch[0][1, 1, 2] = np.inf
    write_image(f / "imagesTr" / "c1_0000.nii.gz", ch[0], geometry(ch[0].shape))
    return "imagesTr/c1_0000.nii.gz", "2 voxel(s) are NaN or infinite"


def _empty(f):
    write_image(f / "imagesTr" / "c2_0000.nii.gz", np.zeros((6, 10, 12), np.float32), geometry((6, 10, 12)))
    return "imagesTr/c2_0000.nii.gz", "constant"


def _not_3d(f):
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((10, 12), np.float32)), str(f / "imagesTr" / "c2_0000.nii.gz"))
    return "imagesTr/c2_0000.nii.gz", "expected a 3D image"


def _missing_label(f):
    (f / "labelsTr" / "c0.nii.gz").unlink()
    return "labelsTr/c0.nii.gz", "label file of case 'c0' is missing"


def _orphan_label(f):
    _, lab = simple_case(0)
    write_image(f / "labelsTr" / "zz.nii.gz", lab, geometry(lab.shape))
    return "labelsTr/zz.nii.gz", "label without image"


def _case_collision(f):
    ch, lab = simple_case(7, n_channels=2)
    for c in range(2):
        write_image(f / "imagesTr" / f"C0_{c:04d}.nii.gz", ch[c], geometry(ch[c].shape))
    write_image(f / "labelsTr" / "C0.nii.gz", lab, geometry(lab.shape))
    dj = read_json(f / "dataset.json")
    dj["numTraining"] = 4
    write_json(f / "dataset.json", dj)
    return "imagesTr", "differ only in letter case"


def _same_id_in_test(f):
    (f / "imagesTs").mkdir()
    ch, _ = simple_case(8, n_channels=2)
    for c in range(2):
        write_image(f / "imagesTs" / f"c1_{c:04d}.nii.gz", ch[c], geometry(ch[c].shape))
    return "imagesTs/c1_0000.nii.gz", "both imagesTr and imagesTs"


def _duplicate_scan(f):
    for c in range(2):
        (f / "imagesTr" / f"c2_{c:04d}.nii.gz").write_bytes((f / "imagesTr" / f"c0_{c:04d}.nii.gz").read_bytes())
    return "imagesTr/c2_0000.nii.gz", "identical image data as case 'c0'"


def _num_training(f):
    dj = read_json(f / "dataset.json")
    dj["numTraining"] = 5
    write_json(f / "dataset.json", dj)
    return "dataset.json", "numTraining is 5 but imagesTr holds 3"


def _bad_name(f):
    (f / "imagesTr" / "c0.nii").write_bytes(b"")
    return "imagesTr/c0.nii", "not named"


FAULTS = [
    _missing_channel, _undeclared_channel, _label_spacing, _label_shape, _channel_origin, _label_direction,
    _undeclared_label, _nan, _empty, _not_3d, _missing_label, _orphan_label, _case_collision, _same_id_in_test,
    _duplicate_scan, _num_training, _bad_name,
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__.strip("_") for f in FAULTS])
def test_each_fault_names_file_and_problem(tmp_path, fault):
    folder = _dataset(tmp_path, n_channels=2)
    # single-channel faults run on a single-channel dataset
    if fault in (_label_spacing, _label_shape, _label_direction, _undeclared_label, _nan, _empty, _not_3d):
        folder = _dataset(tmp_path / "one", n_channels=1)
    file_part, message = fault(folder)
    problems = _problems(folder)
    assert len(problems) == 1, problems
    assert str(folder / file_part) in problems[0] and message in problems[0], problems[0]


def test_all_problems_reported_together_and_nothing_written(autosam_dirs):
    folder = _dataset(autosam_dirs["raw"])
    _nan(folder)
    _undeclared_label(folder)
    _num_training(folder)
    problems = _problems(folder)
    assert len(problems) == 3
    with pytest.raises(DatasetIntegrityError, match="3 problem"):
        extract_fingerprint(21, num_processes=1, verify=True)
    assert list(autosam_dirs["preprocessed"].iterdir()) == []


def test_missing_dataset_json(tmp_path):
    folder = _dataset(tmp_path)
    (folder / "dataset.json").unlink()
    assert "dataset.json is missing" in _problems(folder)[0]
