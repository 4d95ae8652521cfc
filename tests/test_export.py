import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from autosam.experiment_planning.plans import ResamplingPlan
from autosam.inference.export import export_prediction, probabilities_to_segmentation, resample_probabilities
from autosam.io.image import ImageGeometry, read_image
from shared_data import TOTALSEG

REAL_CT = TOTALSEG / "example_ct_sm.nii.gz"
ROTATED = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


def one_hot(labels: np.ndarray, k: int) -> torch.Tensor:
    return F.one_hot(torch.from_numpy(labels).long(), k).permute(3, 0, 1, 2).float()


def properties_for(geometry: ImageGeometry, bbox, preprocessed_spacing=None) -> dict:
    return {
        "geometry": geometry.to_dict(),
        "shape_before_cropping": list(geometry.shape),
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping_and_before_resampling": [b - a for a, b in bbox],
        "spacing": list(preprocessed_spacing or geometry.spacing),
    }


def assert_same_geometry(path: Path, geometry: ImageGeometry):
    img = sitk.ReadImage(str(path))
    assert img.GetSize()[::-1] == tuple(geometry.shape)
    assert np.allclose(img.GetSpacing()[::-1], geometry.spacing, atol=1e-6)
    assert np.allclose(img.GetOrigin(), geometry.origin, atol=1e-6)
    assert np.allclose(img.GetDirection(), geometry.direction, atol=1e-6)


def test_uncropping_restores_exact_geometry_and_labels(tmp_path):
    geometry = ImageGeometry((3.0, 0.8, 0.7), (10.0, -5.0, 3.0), ROTATED, (10, 12, 14))
    bbox = [[1, 9], [2, 11], [0, 14]]
    labels = np.random.default_rng(0).integers(0, 3, size=(8, 9, 14))
    out = export_prediction(one_hot(labels, 3), properties_for(geometry, bbox), None, tmp_path / "case.nii.gz")
    assert_same_geometry(out, geometry)
    seg, _ = read_image(out)
    assert np.array_equal(seg[1:9, 2:11, :], labels)
    mask = np.ones(seg.shape, bool)
    mask[1:9, 2:11, :] = False
    assert not seg[mask].any()


def test_resampled_probabilities_go_back_to_the_cropped_shape(tmp_path):
    geometry = ImageGeometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), ROTATED, (9, 20, 24))
    bbox = [[0, 9], [2, 18], [4, 24]]  # crop 9 x 16 x 20
    logits = torch.randn(4, 18, 8, 10) * 3
    probs = torch.softmax(logits, 0)  # preprocessed at spacing (1, 2, 2)
    props = properties_for(geometry, bbox, preprocessed_spacing=(1.0, 2.0, 2.0))
    seg, full = probabilities_to_segmentation(probs, props, ResamplingPlan(), return_probabilities=True)
    # as nnU-Net: the logits are interpolated, then the softmax and argmax taken
    expected = torch.softmax(F.interpolate(logits[None], size=(9, 16, 20), mode="trilinear", align_corners=False)[0], 0)
    assert np.array_equal(seg[0:9, 2:18, 4:24], expected.argmax(0).numpy())
    # interpolating the probabilities themselves gives another label map at class borders
    naive = F.interpolate(probs[None], size=(9, 16, 20), mode="trilinear", align_corners=False)[0].argmax(0)
    assert not np.array_equal(naive.numpy(), expected.argmax(0).numpy())
    assert full.shape == (4, 9, 20, 24)
    np.testing.assert_allclose(full[:, 0:9, 2:18, 4:24], expected.numpy(), atol=1e-5)
    assert np.all(full[0, :, :2] == 1) and np.all(full[1:, :, :2] == 0)
    # chunked (label only) and full paths agree
    chunked = probabilities_to_segmentation(probs, props, ResamplingPlan(), chunk_voxels=500)
    assert np.array_equal(chunked, seg)


def test_resampled_region_probabilities_follow_the_interpolated_logits():
    """Sigmoid regions: nnU-Net interpolates each region's logit, then thresholds its sigmoid at 0.5."""
    from autosam.io.labels import LabelManager

    lm = LabelManager({"background": 0, "whole": [1, 2], "core": 2}, [1, 2])
    geometry = ImageGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ROTATED, (7, 12, 10))
    props = properties_for(geometry, [[0, 7], [0, 12], [0, 10]], preprocessed_spacing=(1.0, 2.0, 2.0))
    logits = torch.randn(2, 7, 6, 5) * 4
    seg, full = probabilities_to_segmentation(torch.sigmoid(logits), props, ResamplingPlan(), return_probabilities=True,
                                              label_manager=lm)
    expected = torch.sigmoid(F.interpolate(logits[None], size=(7, 12, 10), mode="trilinear", align_corners=False)[0])
    # float32 sigmoid probabilities near 0 or 1 hold their logit to ~1e-3 only; the 0.5 threshold is exact
    np.testing.assert_allclose(full, expected.numpy(), atol=2e-3)
    assert np.array_equal(seg, lm.convert_probabilities_to_segmentation(expected).numpy())


def test_anisotropic_axis_resampled_separately_with_nearest():
    geometry = ImageGeometry((5.0, 1.0, 1.0), (0.0, 0.0, 0.0), ROTATED, (6, 8, 8))
    props = properties_for(geometry, [[0, 6], [0, 8], [0, 8]], preprocessed_spacing=(2.5, 1.0, 1.0))
    z_labels = np.zeros((12, 8, 8), dtype=np.int64)
    z_labels[1::2] = 1  # alternate slices: linear z-interpolation would blur them to a tie
    probs = one_hot(z_labels, 2)
    probs[1] *= 0.9
    probs[0] += 0.1 * torch.from_numpy(z_labels == 1).float()
    seg = probabilities_to_segmentation(probs, props, ResamplingPlan(separate_z_anisotropy_threshold=3.0, label_order_z=0))
    # nearest along z picks source slice floor((i + 0.5) * 2) = 2 i + 1 -> label 1 everywhere
    assert np.all(seg == 1)
    assert resample_probabilities(probs, (6, 8, 8), separate=0, order_separate=0).shape == (2, 6, 8, 8)


def test_save_probabilities_writes_npz_and_json(tmp_path):
    geometry = ImageGeometry((1.0, 1.0, 1.0), (1.0, 2.0, 3.0), ROTATED, (5, 6, 7))
    probs = torch.softmax(torch.randn(3, 3, 4, 5), 0)
    props = properties_for(geometry, [[1, 4], [1, 5], [1, 6]])
    export_prediction(probs, props, None, tmp_path / "c1.nii.gz", save_probabilities=True)
    with np.load(tmp_path / "c1.npz") as z:
        p = z["probabilities"]
    assert p.shape == (3, 5, 6, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(p[:, 1:4, 1:5, 1:6], probs.numpy(), atol=1e-6)
    meta = json.loads((tmp_path / "c1.json").read_text())
    assert meta["class_values"] == [0, 1, 2] and meta["geometry"]["shape"] == [5, 6, 7]
    assert not [f for f in tmp_path.iterdir() if "partial" in f.name]


def test_bad_properties_are_reported(tmp_path):
    with pytest.raises(ValueError, match="bbox_used_for_cropping"):
        export_prediction(torch.ones(2, 2, 2, 2), {"geometry": {}}, None, tmp_path / "x.nii.gz")
    geometry = ImageGeometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ROTATED, (5, 5, 5))
    props = properties_for(geometry, [[0, 5], [0, 5], [0, 5]])
    props["shape_after_cropping_and_before_resampling"] = [4, 5, 5]
    with pytest.raises(ValueError, match="crop box"):
        export_prediction(torch.ones(2, 5, 5, 5), props, None, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.skipif(not REAL_CT.is_file(), reason="shared real CT not available")
def test_real_ct_geometry_round_trip(tmp_path):
    image, geometry = read_image(REAL_CT)
    z, y, x = geometry.shape
    bbox = [[2, z - 1], [5, y - 3], [0, x]]
    crop = [b - a for a, b in bbox]
    probs = torch.softmax(torch.randn(3, crop[0], crop[1] // 2, crop[2] // 2), 0)  # a coarser preprocessed grid
    spacing = (geometry.spacing[0], geometry.spacing[1] * 2, geometry.spacing[2] * 2)
    out = export_prediction(probs, properties_for(geometry, bbox, spacing), ResamplingPlan(), tmp_path / "ct.nii.gz")
    assert_same_geometry(out, geometry)
    assert read_image(out)[0].shape == image.shape
