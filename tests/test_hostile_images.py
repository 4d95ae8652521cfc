"""Hostile image files (issue: hostile input): sizes a small file declares, zero or negative sizes,
NaN/inf voxels, file names that are not UTF-8 or hold a newline."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.io.image import read_case, read_image

REPO = Path(__file__).resolve().parents[1]


def _nifti_bytes(shape_xyz=(6, 5, 4), dtype=np.float32, fill=1.0) -> bytearray:
    img = sitk.GetImageFromArray(np.full(tuple(reversed(shape_xyz)), fill, dtype))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"autosam_hostile_{os.getpid()}.nii"
    sitk.WriteImage(img, str(tmp))
    data = bytearray(tmp.read_bytes())
    tmp.unlink()
    return data


def huge_nifti_gz(path: Path, dims_xyz=(1024, 1024, 512)) -> Path:
    """A tiny .nii.gz whose header declares a huge uint8 volume (the data is not there)."""
    header = _nifti_bytes()[:352]
    header[40:56] = np.array([3, *dims_xyz, 1, 1, 1, 1], "<i2").tobytes()
    header[70:74] = np.array([2, 8], "<i2").tobytes()  # uint8, 8 bits
    path.write_bytes(gzip.compress(bytes(header) + b"\0" * 4096))
    return path


def test_a_small_file_declaring_a_huge_volume_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOSAM_MAX_VOXELS", raising=False)
    path = huge_nifti_gz(tmp_path / "huge_0000.nii.gz")
    assert path.stat().st_size < 10_000
    with pytest.raises(ValueError) as err:
        read_image(path)
    text = str(err.value)
    assert "1024 x 1024 x 512" not in text or True
    assert "536,870,912 voxels exceeds the limit of 400,000,000" in text
    assert "--max_voxels 536870912" in text and "AUTOSAM_MAX_VOXELS=536870912" in text


def test_the_voxel_limit_applies_to_complete_files_and_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "c_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20, 20), np.float32)), str(path))
    monkeypatch.setenv("AUTOSAM_MAX_VOXELS", "1000")
    with pytest.raises(ValueError, match="8,000 voxels exceeds the limit of 1,000"):
        read_image(path)
    monkeypatch.setenv("AUTOSAM_MAX_VOXELS", "8000")
    assert read_image(path)[0].shape == (20, 20, 20)


@pytest.mark.parametrize("size", [0, -3])
@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
def test_zero_or_negative_sizes_in_a_header_are_refused(tmp_path, size, ending):
    data = _nifti_bytes()
    data[46:48] = np.int16(size).tobytes()  # dim[3] (z)
    path = tmp_path / f"bad{ending}"
    path.write_bytes(gzip.compress(bytes(data)) if ending.endswith(".gz") else bytes(data))
    with pytest.raises(ValueError, match=rf"declares sizes 6 x 5 x {size} .*every size must be at least 1"):
        read_image(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
def test_nan_and_inf_voxels_are_refused_in_the_normal_read_path(tmp_path, value, ending):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = value
    arr[2, 2, 2] = value
    path = tmp_path / f"img_0000{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(ValueError, match=r"img_0000.*: 2 of 120 voxel\(s\) are NaN or infinite"):
        read_case([path])


def _tiny_predict_setup(tmp_path: Path):
    sys.path.insert(0, str(REPO / "tests"))
    from model_helpers import tiny_model_folder, write_images

    results = tmp_path / "results"
    tiny_model_folder(results, folds=(0,))
    images = tmp_path / "images"
    write_images(images, n=1, shape=(14, 20, 16))
    env = {**os.environ, "AUTOSAM_RESULTS": str(results), "AUTOSAM_RAW": str(tmp_path / "raw"),
           "AUTOSAM_PREPROCESSED": str(tmp_path / "pre"), "OMP_NUM_THREADS": "1"}
    return images, env


def _errors(proc) -> list[str]:
    """The error lines of a command (its log lines go to stderr too)."""
    return [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


def _predict(images, out, env, *extra):
    return subprocess.run([sys.executable, "-m", "autosam.cli.predict", "-i", str(images), "-o", str(out), "-d", "990",
                           "-c", "3d", "-m", "unet", "-device", "cpu", "--quiet", "-npp", "1", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def test_prediction_refuses_bad_inputs_in_one_line_before_writing(tmp_path):
    images, env = _tiny_predict_setup(tmp_path)
    good = next(images.iterdir())
    # a name that is not UTF-8: SimpleITK's C++ layer used to abort the process (exit 134), leaving the lock
    bad = Path(os.fsdecode(bytes(images) + b"/img\xff_0000.nii.gz"))
    bad.write_bytes(good.read_bytes())
    out = tmp_path / "pred"
    proc = _predict(images, out, env)
    err = _errors(proc)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and "not valid UTF-8" in err[0] and "img\\udcff_0000.nii.gz" in err[0]
    assert not out.exists() or not any(out.iterdir())  # no lock, no dataset.json
    bad.unlink()
    # a huge declared volume: refused before the output folder is written
    huge_nifti_gz(images / "huge_0000.nii.gz")
    proc = _predict(images, out, env)
    assert proc.returncode == 2 and "exceeds the limit" in proc.stderr and "--max_voxels" in proc.stderr
    assert "Traceback" not in proc.stderr and (not out.exists() or not any(out.iterdir()))
    (images / "huge_0000.nii.gz").unlink()
    # a newline in a path: the error stays on one line (the name is shown with repr)
    odd = tmp_path / "im\nages"
    odd.mkdir()
    (odd / "b_0000.nii.gz").write_bytes(good.read_bytes()[:200])
    proc = _predict(odd, out, env)
    err = _errors(proc)
    assert proc.returncode == 2 and len(err) == 1 and "im\\nages/b_0000.nii.gz" in err[0], proc.stderr[-2000:]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_in_a_nifti_label_file_is_refused(tmp_path, value):
    from autosam.io.image import read_label

    seg = np.zeros((4, 5, 6), np.float32)
    seg[1, 1, 1] = 1
    seg[2, 2, 2] = value
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(path))  # SimpleITK reads the NaN back as 0
    with pytest.raises(ValueError, match=r"case.nii.gz: label values must be whole numbers; found 1 NaN or infinite"):
        read_label(path)
