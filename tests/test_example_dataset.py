"""The built-in synthetic example dataset: format, realism, determinism."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autosam.cli.example_dataset import main as example_main
from autosam.data.example import SIZES, make_example_dataset, synthesize_case
from autosam.io.dataset import DatasetError, open_raw_dataset
from autosam.io.image import read_image
from autosam.utils.files import read_json


def test_dataset_folder_format_and_determinism(tmp_path):
    a = make_example_dataset(tmp_path / "a", dataset_id=12, num_cases=2, seed=3)
    b = make_example_dataset(tmp_path / "b", dataset_id=12, num_cases=3, seed=3)
    assert a.name == "Dataset012_Example"
    dj = read_json(a / "dataset.json")
    assert dj["numTraining"] == 2 and dj["file_ending"] == ".nii.gz" and dj["channel_names"] == {"0": "CT"}
    assert dj["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "aorta": 4}
    ds = open_raw_dataset(12, raw_root=tmp_path / "a")
    assert [c.identifier for c in ds.cases] == ["case_000", "case_001"]
    assert sorted(p.name for p in (a / "imagesTs").iterdir()) == ["test_000_0000.nii.gz", "test_001_0000.nii.gz"]
    # same seed -> identical images, labels and geometry; case i does not depend on the case count
    for sub, name in [("imagesTr", "case_001_0000.nii.gz"), ("labelsTr", "case_001.nii.gz"), ("imagesTs", "test_000_0000.nii.gz")]:
        xa, ga = read_image(a / sub / name)
        xb, gb = read_image(b / sub / name)
        assert np.array_equal(xa, xb) and ga == gb
    # no temporary folders are left behind
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["Dataset012_Example"]


def test_other_dataset_with_same_id_is_refused(tmp_path):
    (tmp_path / "Dataset012_Other").mkdir()
    with pytest.raises(DatasetError, match="Dataset012_Other"):
        make_example_dataset(tmp_path, dataset_id=12, num_cases=1)


def test_different_seed_differs():
    a, b = synthesize_case(0, 0), synthesize_case(1, 0)
    assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)


def test_organs_case_is_ct_like():
    spacings, directions = [], []
    for i in range(3):
        c = synthesize_case(0, i, "organs")
        img, lab, g = c.image, c.label, c.geometry
        assert img.dtype == np.int16 and lab.dtype == np.uint8
        (z_lo, z_hi), (xy_lo, xy_hi), (sz_lo, sz_hi), (sxy_lo, sxy_hi) = SIZES["organs"]
        assert z_lo <= img.shape[0] <= z_hi and all(xy_lo <= s <= xy_hi for s in img.shape[1:])
        assert sz_lo <= g.spacing[0] <= sz_hi and all(sxy_lo <= s <= sxy_hi for s in g.spacing[1:])
        spacings.append(g.spacing)
        directions.append(g.direction)
        assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
        # air outside the body, fat, soft tissue, bone
        assert np.median(img[:, :3, :3]) < -900
        assert np.percentile(img, 99.9) > 500
        means = {k: float(img[lab == k].mean()) for k in range(1, 5)}
        # the organs have distinct contrasts (well above the noise level of ~12 HU after blur)
        vals = sorted(means.values())
        assert min(np.diff(vals)) > 25, means
        assert 40 < means[1] < 90  # liver
        # liver is one big connected structure
        _, n = ndimage.label(lab == 1)
        assert n <= 2
    assert len(set(spacings)) == 3  # spacing varies between cases
    assert any(d != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) for d in directions)


def test_flipped_case_keeps_anatomy_in_world_space():
    """A case stored with flipped axes puts the liver on the same side of the body in world space."""
    for i in (0, 1):  # case 1 is stored with x and y flipped
        c = synthesize_case(5, i)
        g = c.geometry
        centroid = np.array(ndimage.center_of_mass(c.label == 1))[::-1]  # (x, y, z) index
        body = np.array(ndimage.center_of_mass(c.image > -500))[::-1]
        d = np.array(g.direction).reshape(3, 3) @ ((centroid - body) * np.array(g.spacing[::-1]))
        assert d[0] < -10, (i, d)  # liver lies towards -x of the body's centre in world coordinates


def test_lesions_are_many_small_components():
    for i in range(3):
        c = synthesize_case(0, i, "lesions")
        assert set(np.unique(c.label)) == {0, 1}
        comp, n = ndimage.label(c.label, structure=np.ones((3, 3, 3)))
        assert n >= 4
        sizes = np.bincount(comp.ravel())[1:] * np.prod(c.geometry.spacing)
        assert sizes.max() < 5000  # mm3: a sphere of radius 10 mm is 4189 mm3
        means = ndimage.mean(c.image, comp, index=np.arange(1, n + 1))
        assert np.all(np.abs(means - 65) > 25), means  # each lesion is hypo- or hyperdense against the liver


def test_cli(tmp_path, capsys):
    assert example_main(["-d", "7", "--cases", "1", "--kind", "lesions", "--seed", "2", "--raw", str(tmp_path)]) == 0
    folder = tmp_path / "Dataset007_ExampleLesions"
    assert capsys.readouterr().out.strip() == str(folder)
    assert read_json(folder / "dataset.json")["labels"] == {"background": 0, "lesion": 1}
    assert example_main(["-d", "7", "--cases", "0", "--raw", str(tmp_path)]) == 2
