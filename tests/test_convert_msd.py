"""autosam_convert_MSD_dataset: Decathlon layout -> raw format; untidy inputs (float labels,
uint8 next to float32 images, intensity outliers)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.cli.convert_msd import main as convert_main
from autosam.dataset_conversion.msd import convert_msd_dataset
from autosam.io.dataset import DatasetError, open_raw_dataset
from autosam.io.image import read_image, read_label
from autosam.preprocessing.normalization import normalize_channel
from shared_data import HIPPOCAMPUS

# a flipped, oblique-free direction and an anisotropic spacing, so that a lost or transposed
# geometry is visible
DIRECTION_4D = (-1, 0, 0, 0,
                0, -1, 0, 0,
                0, 0, 1, 0,
                0, 0, 0, 1)


def _write_4d(path: Path, channels: np.ndarray) -> None:
    """``channels``: (C, z, y, x) -> a 4D NIfTI with spacing (0.8, 0.9, 2.5, 1) and a flipped direction."""
    img = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels])  # 4D: SimpleITK axes (x, y, z, c)
    img.SetSpacing((0.8, 0.9, 2.5, 1.0))
    img.SetOrigin((10.0, -20.0, 30.0, 0.0))
    img.SetDirection(DIRECTION_4D)
    sitk.WriteImage(img, str(path), useCompression=True)


def _write_3d(path: Path, arr: np.ndarray) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(path), useCompression=True)


def make_msd_task(root: Path, name: str = "Task07_Brainy", n_train: int = 3, n_test: int = 1,
                  float_label_case: int | None = 1) -> tuple[Path, dict]:
    """A tiny 2-channel MSD task: 4D images, labels 0/1/2 (one label file stored as float32)."""
    task = root / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(n_train + n_test):
        case = f"brain_{i:03d}"
        chans = np.stack([rng.normal(100 * (c + 1), 5, (4, 5, 6)) for c in range(2)]).astype(np.float32)
        arrays[case] = chans
        train = i < n_train
        _write_4d(task / ("imagesTr" if train else "imagesTs") / f"{case}.nii.gz", chans)
        if train:
            label = np.zeros((4, 5, 6), np.uint8)
            label[1:3, 1:4, 2:5] = 1
            label[2, 2, 3] = 2
            _write_3d(task / "labelsTr" / f"{case}.nii.gz",
                      label.astype(np.float32) if i == float_label_case else label)
    (task / "imagesTr" / "._brain_000.nii.gz").write_bytes(b"macOS resource fork")  # as in real downloads
    dj = {
        "name": "Brainy", "description": "synthetic", "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": n_train, "numTest": n_test,
        "training": [{"image": f"./imagesTr/brain_{i:03d}.nii.gz", "label": f"./labelsTr/brain_{i:03d}.nii.gz"}
                     for i in range(n_train)],
        "test": [f"./imagesTs/brain_{i:03d}.nii.gz" for i in range(n_train, n_train + n_test)],
    }
    (task / "dataset.json").write_text(json.dumps(dj))
    return task, arrays


def test_4d_multimodal_task_is_split_per_channel_with_geometry(tmp_path):
    task, arrays = make_msd_task(tmp_path / "src")
    raw = tmp_path / "raw"
    folder = convert_msd_dataset(task, raw_root=raw, num_processes=1)
    assert folder == raw / "Dataset007_Brainy"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert dj["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert dj["numTraining"] == 3 and dj["file_ending"] == ".nii.gz"
    assert not {"modality", "training", "test"} & set(dj) and dj["description"] == "synthetic"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        f"brain_{i:03d}_{c:04d}.nii.gz" for i in range(3) for c in range(2)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["brain_003_0000.nii.gz", "brain_003_0001.nii.gz"]
    for case, chans in arrays.items():
        sub = "imagesTs" if case == "brain_003" else "imagesTr"
        for c in range(2):
            arr, geom = read_image(folder / sub / f"{case}_{c:04d}.nii.gz")
            np.testing.assert_array_equal(arr, chans[c])
            assert geom.spacing == pytest.approx((2.5, 0.9, 0.8))  # (z, y, x)
            assert geom.origin == pytest.approx((10.0, -20.0, 30.0))
            assert geom.direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    # the float label is cast to an integer type with the same values and geometry
    label, lgeom = read_image(folder / "labelsTr" / "brain_001.nii.gz")
    assert np.issubdtype(label.dtype, np.integer) and set(np.unique(label)) == {0, 1, 2}
    assert lgeom.spacing == pytest.approx((2.5, 0.9, 0.8)) and lgeom.direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    # the result is a valid raw dataset
    ds = open_raw_dataset(7, raw)
    assert [c.identifier for c in ds.cases] == ["brain_000", "brain_001", "brain_002"] and ds.num_channels == 2
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_existing_target_is_refused_unless_overwrite_and_overwrite_id(tmp_path, capsys):
    task, _ = make_msd_task(tmp_path / "src")
    raw = tmp_path / "raw"
    assert convert_main(["-i", str(task), "--raw", str(raw), "-np", "1", "--quiet"]) == 0
    (raw / "Dataset007_Brainy" / "marker").write_text("old")
    assert convert_main(["-i", str(task), "--raw", str(raw), "-np", "1", "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err and (raw / "Dataset007_Brainy" / "marker").is_file()
    assert convert_main(["-i", str(task), "--raw", str(raw), "-np", "1", "--quiet", "--overwrite"]) == 0
    assert not (raw / "Dataset007_Brainy" / "marker").exists()
    assert convert_main(["-i", str(task), "--raw", str(raw), "-np", "2", "--quiet", "-overwrite_id", "123"]) == 0
    assert (raw / "Dataset123_Brainy" / "imagesTr" / "brain_002_0001.nii.gz").is_file()
    # the same id under another name would make "-d 7" ambiguous
    other = tmp_path / "src2" / "Task07_Other"
    shutil.copytree(task, other)
    assert convert_main(["-i", str(other), "--raw", str(raw), "-np", "1", "--quiet"]) == 2
    assert "id 7 is taken by Dataset007_Brainy" in capsys.readouterr().err


def test_non_integer_label_value_names_file_and_value(tmp_path):
    task, _ = make_msd_task(tmp_path / "src")
    bad = task / "labelsTr" / "brain_002.nii.gz"
    label = np.zeros((4, 5, 6), np.float32)
    label[1, 1, 1] = 1.5
    _write_3d(bad, label)
    with pytest.raises(DatasetError, match=r"brain_002\.nii\.gz: label values must be whole numbers; found 1\.5"):
        convert_msd_dataset(task, raw_root=tmp_path / "raw", num_processes=2)
    assert not (tmp_path / "raw" / "Dataset007_Brainy").exists()
    assert not list((tmp_path / "raw").iterdir())  # the staging folder is removed too
    with pytest.raises(ValueError, match=r"brain_002\.nii\.gz: label values must be whole numbers; found 1\.5"):
        read_label(bad)


def test_bad_task_inputs_are_named(tmp_path):
    with pytest.raises(DatasetError, match="TaskNN_Name"):
        convert_msd_dataset(tmp_path, raw_root=tmp_path / "raw")
    task, _ = make_msd_task(tmp_path / "src")
    (task / "labelsTr" / "brain_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"labelsTr/brain_001\.nii\.gz: label file of training image"):
        convert_msd_dataset(task, raw_root=tmp_path / "raw", num_processes=1)
    dj = json.loads((task / "dataset.json").read_text())
    dj["modality"] = {"0": "FLAIR"}  # the images have two channels
    (task / "dataset.json").write_text(json.dumps(dj))
    _write_3d(task / "labelsTr" / "brain_001.nii.gz", np.zeros((4, 5, 6), np.uint8))
    with pytest.raises(DatasetError, match=r"brain_000\.nii\.gz: has 2 channel\(s\); dataset.json modality declares 1"):
        convert_msd_dataset(task, raw_root=tmp_path / "raw", num_processes=1)


def test_float_labels_are_cast_when_read_for_preprocessing(tmp_path):
    """Raw datasets made by other tools may store labels as float; preprocessing reads them as integers."""
    from autosam.io.image import read_case_with_label
    from raw_dataset_builder import geometry
    from autosam.io.image import write_image

    label = np.zeros((3, 4, 5), np.float32)
    label[1, 1:3, 1:4] = 2.0
    write_image(tmp_path / "c.nii.gz", label, geometry(label.shape))
    write_image(tmp_path / "c_0000.nii.gz", np.ones((3, 4, 5), np.uint8), geometry(label.shape))
    data, seg, _ = read_case_with_label([tmp_path / "c_0000.nii.gz"], tmp_path / "c.nii.gz")
    assert data.dtype == np.float32 and seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 2}
    label[0, 0, 0] = 0.25
    write_image(tmp_path / "c.nii.gz", label, geometry(label.shape))
    with pytest.raises(ValueError, match=r"c\.nii\.gz: label values must be whole numbers; found 0\.25"):
        read_case_with_label([tmp_path / "c_0000.nii.gz"], tmp_path / "c.nii.gz")


def test_zscore_survives_an_intensity_outlier():
    """One voxel at 1.7e6 next to tissue at 100/200: the tissue classes stay apart after z-scoring
    (without the percentile clip they would differ by ~0.01 std: all tissue squashed onto 0)."""
    rng = np.random.default_rng(0)
    img = np.where(np.arange(40)[:, None, None] < 20, 100.0, 200.0) + rng.normal(0, 5, (40, 30, 30))
    img = img.astype(np.float32)
    clean = normalize_channel(img.copy(), "ZScoreNormalization")
    img[5, 5, 5] = 1.7e6
    out = normalize_channel(img.copy(), "ZScoreNormalization")
    gap = out[20:].mean() - out[:20].mean()
    assert gap > 1.5, gap
    assert gap == pytest.approx(clean[20:].mean() - clean[:20].mean(), rel=0.02)
    assert np.isfinite(out).all() and out.max() < 5


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f"shared hippocampus data absent ({HIPPOCAMPUS})")
def test_shared_hippocampus_cases_convert(tmp_path):
    """Real cases, untidy as they come: 001 (uint8 image), 003 (float32 image, float32 label),
    210 (float32, reaches 1.7e6)."""
    cases = ["hippocampus_001", "hippocampus_003", "hippocampus_210"]
    task = make_subset_task(tmp_path / "src", cases)
    folder = convert_msd_dataset(task, raw_root=tmp_path / "raw", num_processes=2)
    assert folder.name == "Dataset004_Hippocampus"
    dj = json.loads((folder / "dataset.json").read_text())
    assert dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dj["channel_names"] == {"0": "MRI"} and dj["numTraining"] == 3
    for case in cases:
        src_img, src_geom = read_image(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz")
        img, geom = read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
        np.testing.assert_array_equal(img, src_img)
        assert geom.matches(src_geom) and img.dtype == src_img.dtype  # images are copied as they are
        label, _ = read_image(folder / "labelsTr" / f"{case}.nii.gz")
        assert np.issubdtype(label.dtype, np.integer) and set(np.unique(label)) == {0, 1, 2}
    assert read_image(HIPPOCAMPUS / "labelsTr" / "hippocampus_003.nii.gz")[0].dtype == np.float32
    # the outlier case stays usable after normalisation: anterior and posterior hippocampus differ
    img, _ = read_image(folder / "imagesTr" / "hippocampus_210_0000.nii.gz")
    assert img.max() > 1e6
    out = normalize_channel(img.astype(np.float32), "ZScoreNormalization")
    label, _ = read_image(folder / "labelsTr" / "hippocampus_210.nii.gz")
    assert np.percentile(out, 99.5) - np.percentile(out, 0.5) > 3  # tissue spread over several std


def make_subset_task(root: Path, cases: list[str]) -> Path:
    """A Task04_Hippocampus folder with only ``cases`` (symbolic links to the shared files)."""
    task = root / "Task04_Hippocampus"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
        for case in cases:
            (task / sub / f"{case}.nii.gz").symlink_to(HIPPOCAMPUS / sub / f"{case}.nii.gz")
    dj = json.loads((HIPPOCAMPUS / "dataset.json").read_text())
    dj["training"] = [e for e in dj["training"] if Path(e["image"]).name[: -len(".nii.gz")] in cases]
    dj["numTraining"] = len(cases)
    (task / "dataset.json").write_text(json.dumps(dj))
    return task
