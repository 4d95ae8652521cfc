"""Image IO round trip in every supported format, and dataset addressing by id or name."""
from __future__ import annotations

import numpy as np
import pytest

from autosam.io.dataset import DatasetError, dataset_name_from_id, open_raw_dataset
from autosam.io.image import ImageGeometry, read_image, write_image
from raw_dataset_builder import simple_case, write_raw_dataset


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1, 1, -1])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_keeps_geometry(tmp_path, ending, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((5, 7, 9)) * 100).astype(dtype)
    geom = ImageGeometry(
        spacing=(3.25, 0.75, 1.5),
        origin=(-120.5, 33.25, 410.0),
        direction=tuple(_rotation(0.3).ravel()),
        shape=arr.shape,
    )
    path = tmp_path / f"img{ending}"
    write_image(path, arr, geom)
    back, g = read_image(path)
    assert back.dtype == dtype and np.array_equal(back, arr)
    assert g.shape == arr.shape
    assert np.allclose(g.spacing, geom.spacing, atol=1e-6)
    assert np.allclose(g.origin, geom.origin, atol=1e-4)
    assert np.allclose(g.direction, geom.direction, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        read_image(bad)


def test_dataset_by_id_or_name(autosam_dirs):
    write_raw_dataset(autosam_dirs["raw"], "Dataset017_Name", {"a": simple_case(0)})
    assert dataset_name_from_id(17) == "Dataset017_Name"
    assert dataset_name_from_id("17") == "Dataset017_Name"
    assert dataset_name_from_id("Dataset017_Name") == "Dataset017_Name"
    assert open_raw_dataset(17).folder == open_raw_dataset("Dataset017_Name").folder
    with pytest.raises(DatasetError, match="no dataset with id 18"):
        dataset_name_from_id(18)
    with pytest.raises(DatasetError, match="integer id"):
        dataset_name_from_id("Liver")
