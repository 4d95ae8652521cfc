"""Faulty input is caught, named and stops the run before anything is written: truncated or
corrupt image files on every read path, label values dataset.json does not declare, and cases
that would otherwise be dropped silently (misnamed images, labels without an image)."""
from __future__ import annotations

import gzip
import logging
import re

import numpy as np
import pytest

from autosam.experiment_planning.fingerprint import extract_fingerprint
from autosam.experiment_planning.integrity import DatasetIntegrityError, verify_dataset_integrity
from autosam.io.dataset import DatasetError, open_raw_dataset
from autosam.io.image import read_image, write_image
from autosam.utils.files import read_json, write_json
from raw_dataset_builder import geometry, simple_case, write_raw_dataset


# ------------------------------------------------------------------------------ damaged files
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "truncated"


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the deflate stream: caught by the CRC-32 at the latest
    path.write_bytes(bytes(data))
    return "corrupt gzip stream"


def _short_content(path):
    """A complete, valid gzip stream whose NIfTI content lacks its last voxels."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-64]))
    return "of voxel data its header promises"


DAMAGE = [_truncate, _flip_byte, _short_content]
DAMAGE_IDS = [d.__name__.strip("_") for d in DAMAGE]


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(12, 20, 24)).astype(np.float32)
    path = tmp_path / "img.nii.gz"
    write_image(path, arr, geometry(arr.shape))
    return path, arr


@pytest.mark.parametrize("damage", DAMAGE, ids=DAMAGE_IDS)
def test_read_image_names_a_damaged_gzip_file(volume, damage):
    path, _ = volume
    message = damage(path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        read_image(path)


def test_truncated_uncompressed_nifti_and_intact_multi_member_gzip(volume, tmp_path):
    path, arr = volume
    raw = gzip.decompress(path.read_bytes())
    nii = tmp_path / "img.nii"
    nii.write_bytes(raw[:-1])
    with pytest.raises(ValueError, match=re.escape(f"{nii}: truncated: holds {arr.nbytes - 1} of the {arr.nbytes} bytes")):
        read_image(nii)
    # gzip allows several members and zero padding after the last one: still a complete file
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + b"\0" * 16)
    back, _ = read_image(multi)
    assert np.array_equal(back, arr)


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_other_formats_truncated_are_errors_naming_the_file(tmp_path, ending):
    arr = np.random.default_rng(0).normal(size=(12, 20, 24)).astype(np.float32)
    path = tmp_path / f"img{ending}"
    write_image(path, arr, geometry(arr.shape))
    _truncate(path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot be read as an image (")) as err:
        read_image(path)
    assert "No such file or directory" not in str(err.value)  # ITK's stale errno is left out


def _dataset(root, name="Dataset301_Faults", n=3, labels=None, label_value=1):
    cases = {f"c{i}": simple_case(i, label_value=label_value) for i in range(n)}
    return write_raw_dataset(root, name, cases, labels=labels)


@pytest.mark.parametrize("damage", DAMAGE, ids=DAMAGE_IDS)
def test_integrity_check_reports_damaged_image_and_label(tmp_path, damage):
    folder = _dataset(tmp_path)
    damage(folder / "imagesTr" / "c1_0000.nii.gz")
    damage(folder / "labelsTr" / "c2.nii.gz")
    with pytest.raises(DatasetIntegrityError) as err:
        verify_dataset_integrity(folder)
    problems = err.value.problems
    assert any(p.startswith(str(folder / "imagesTr" / "c1_0000.nii.gz")) for p in problems), problems
    assert any(p.startswith(str(folder / "labelsTr" / "c2.nii.gz")) for p in problems), problems


@pytest.mark.parametrize("damage", [_truncate, _flip_byte], ids=["truncate", "flip_byte"])
def test_fingerprint_and_preprocessing_stop_at_a_damaged_file(autosam_dirs, damage):
    from autosam.experiment_planning.planning import plan_experiment
    from autosam.preprocessing.preprocessor import preprocess_dataset

    folder = _dataset(autosam_dirs["raw"])
    bad = folder / "imagesTr" / "c1_0000.nii.gz"
    good = bad.read_bytes()
    message = damage(bad)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*" + message):
        extract_fingerprint(301, num_processes=1)
    bad.write_bytes(good)
    extract_fingerprint(301, num_processes=1)
    plan_experiment(301, configurations=("3d",))
    damage(folder / "labelsTr" / "c0.nii.gz")  # damaged after planning: preprocessing reads it again
    with pytest.raises(ValueError, match=re.escape(str(folder / "labelsTr" / "c0.nii.gz")) + ".*" + message):
        preprocess_dataset(301, configurations=("3d",), num_processes=1)


def test_prediction_stops_at_a_damaged_input(autosam_dirs, tmp_path):
    from autosam.inference.predictor import predict_folder
    from training_data import NAME, make_tiny_preprocessed, tiny_plans, untrained_model

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=2)
    untrained_model(tiny_plans(), autosam_dirs["results"] / NAME / "unet__autosamPlans__3d")
    images = tmp_path / "in"
    arr = np.random.default_rng(1).normal(size=(24, 40, 40)).astype(np.float32)
    write_image(images / "case_0000.nii.gz", arr, geometry(arr.shape))
    _truncate(images / "case_0000.nii.gz")
    with pytest.raises(ValueError, match=re.escape(str(images / "case_0000.nii.gz")) + ": truncated"):
        predict_folder(images, tmp_path / "out", NAME, "3d", "unet", folds=["all"], num_processes=1,
                       use_mirroring=False)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_evaluation_names_a_damaged_prediction(tmp_path):
    from autosam.evaluation.evaluate import evaluate_folder

    ref, pred = tmp_path / "ref", tmp_path / "pred"
    _, label = simple_case(0)
    for folder in (ref, pred):
        write_image(folder / "a.nii.gz", label, geometry(label.shape))
    write_json(tmp_path / "dataset.json", {"labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"})
    assert evaluate_folder(ref, pred, tmp_path / "dataset.json")["mean"]["1"]["Dice"] == 1.0
    _flip_byte(pred / "a.nii.gz")
    with pytest.raises(ValueError, match=re.escape(str(pred / "a.nii.gz")) + ": corrupt gzip stream"):
        evaluate_folder(ref, pred, tmp_path / "dataset.json")


# ------------------------------------------------------------------------------ undeclared labels
def test_undeclared_label_stops_plan_and_preprocess_before_anything_is_written(autosam_dirs, capsys):
    from autosam.cli.plan_and_preprocess import main

    folder = _dataset(autosam_dirs["raw"])
    _, label = simple_case(5)
    label[0, 0, 0] = 7  # a single voxel is enough
    write_image(folder / "labelsTr" / "c1.nii.gz", label, geometry(label.shape))
    write_image(folder / "labelsTr" / "c2.nii.gz", label, geometry(label.shape))
    assert main(["-d", "301", "-np", "1", "-c", "3d"]) == 2
    err = capsys.readouterr().err
    for case in ("c1", "c2"):
        assert f"{folder / 'labelsTr' / f'{case}.nii.gz'}: label value(s) [7] are not declared" in err
    assert "--undeclared_labels_to_background" in err
    assert not (autosam_dirs["preprocessed"] / folder.name).exists()

    assert main(["-d", "301", "-np", "1", "-c", "3d", "--undeclared_labels_to_background"]) == 0
    from autosam.experiment_planning.plans import Plans
    from autosam.preprocessing.storage import load_case

    pre = autosam_dirs["preprocessed"] / folder.name
    data = pre / Plans.load(pre / "autosamPlans.json").configurations["3d"].data_identifier
    for case in ("c0", "c1", "c2"):
        _, seg, _ = load_case(data, case)
        assert set(np.unique(seg).tolist()) <= {0, 1}, case


def test_preprocessing_checks_labels_even_with_a_stale_fingerprint(autosam_dirs):
    """The fingerprint was computed before a label file changed: preprocessing reads the labels
    again and stops before writing anything into the preprocessed folder."""
    from autosam.experiment_planning.planning import plan_experiment
    from autosam.preprocessing.preprocessor import preprocess_case, preprocess_dataset

    folder = _dataset(autosam_dirs["raw"])
    extract_fingerprint(301, num_processes=1)
    plans = plan_experiment(301, configurations=("3d",))
    _, label = simple_case(1, label_value=3)
    bad = folder / "labelsTr" / "c1.nii.gz"
    write_image(bad, label, geometry(label.shape))
    pre = autosam_dirs["preprocessed"] / folder.name
    before = sorted(p.relative_to(pre) for p in pre.rglob("*"))
    with pytest.raises(DatasetError, match=re.escape(f"{bad}: label value(s) [3] are not declared")):
        preprocess_dataset(301, configurations=("3d",), num_processes=1)
    assert sorted(p.relative_to(pre) for p in pre.rglob("*")) == before
    # the per-case function enforces it too, and maps to background only when asked
    images = [folder / "imagesTr" / "c1_0000.nii.gz"]
    with pytest.raises(DatasetError, match="c1.nii.gz: label value"):
        preprocess_case(images, plans, "3d", bad)
    _, seg, props = preprocess_case(images, plans, "3d", bad, undeclared_labels_to_background=True)
    assert seg.max() == 0 and props["class_locations"] == {}


def test_ignore_label_and_region_values_count_as_declared(autosam_dirs):
    folder = _dataset(autosam_dirs["raw"], labels={"background": 0, "a": 1, "ignore": 2})
    _, label = simple_case(1)
    label[0, 0, :3] = 2  # unannotated voxels
    write_image(folder / "labelsTr" / "c1.nii.gz", label, geometry(label.shape))
    extract_fingerprint(301, num_processes=1)
    _, label = simple_case(2)
    label[0, 0, 0] = 3
    write_image(folder / "labelsTr" / "c2.nii.gz", label, geometry(label.shape))
    with pytest.raises(DatasetError, match=re.escape("c2.nii.gz: label value(s) [3] are not declared")):
        extract_fingerprint(301, num_processes=1, overwrite=True)
    _, label = simple_case(1)  # no ignore label below: c1 loses its unannotated voxels
    write_image(folder / "labelsTr" / "c1.nii.gz", label, geometry(label.shape))
    dj = read_json(folder / "dataset.json")  # a region's values are declared through its list
    write_json(folder / "dataset.json", dict(dj, labels={"background": 0, "whole": [1, 3], "core": 3},
                                             regions_class_order=[1, 3]))
    extract_fingerprint(301, num_processes=1, overwrite=True)


# ------------------------------------------------------------------------------ dropped cases
def test_image_without_channel_suffix_stops_with_the_file_named(autosam_dirs):
    folder = _dataset(autosam_dirs["raw"])
    (folder / "imagesTr" / "c2_0000.nii.gz").rename(folder / "imagesTr" / "c2.nii.gz")
    with pytest.raises(DatasetError) as err:
        open_raw_dataset(301)
    text = str(err.value)
    assert "numTraining is 3 but 2 training case(s) were found" in text
    assert f"{folder / 'imagesTr' / 'c2.nii.gz'}: ignored, not named <case>_<4-digit channel>.nii.gz (e.g. c2_0000.nii.gz)" in text
    assert f"{folder / 'labelsTr' / 'c2.nii.gz'}: ignored, label without image" in text
    with pytest.raises(DatasetError, match="numTraining is 3"):
        extract_fingerprint(301, num_processes=1)
    assert not (autosam_dirs["preprocessed"] / folder.name).exists()


def test_label_without_image_stops_and_strays_are_always_reported(autosam_dirs, caplog):
    folder = _dataset(autosam_dirs["raw"])
    (folder / "imagesTr" / "c0_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=re.escape(f"{folder / 'labelsTr' / 'c0.nii.gz'}: ignored, label without image")):
        open_raw_dataset(301)
    # numTraining agrees with the cases found: the run goes on, but the stray file is still named
    dj = read_json(folder / "dataset.json")
    write_json(folder / "dataset.json", dict(dj, numTraining=2))
    with caplog.at_level(logging.WARNING, logger="autosam.io.dataset"):
        ds = open_raw_dataset(301)
    assert [c.identifier for c in ds.cases] == ["c1", "c2"]
    assert f"{folder / 'labelsTr' / 'c0.nii.gz'}: ignored, label without image" in caplog.text


def test_prediction_input_without_suffix_is_reported(tmp_path, caplog):
    from autosam.io.dataset import list_prediction_inputs

    arr = np.zeros((4, 5, 6), np.float32)
    write_image(tmp_path / "a_0000.nii.gz", arr, geometry(arr.shape))
    write_image(tmp_path / "b.nii.gz", arr, geometry(arr.shape))
    with caplog.at_level(logging.WARNING, logger="autosam.io.dataset"):
        cases = list_prediction_inputs(tmp_path, {"file_ending": ".nii.gz", "channel_names": {"0": "CT"}})
    assert [c.identifier for c in cases] == ["a"]
    assert f"{tmp_path / 'b.nii.gz'}: ignored, not named <case>_<4-digit channel>.nii.gz" in caplog.text
