"""Preprocessing: resampling, normalisation, class locations, preprocess_case, resumable runs."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autosam.experiment_planning.plans import ConfigurationPlan, Plans, ResamplingPlan
from autosam.preprocessing import storage
from autosam.preprocessing.normalization import normalize_channel
from autosam.preprocessing.preprocessor import preprocess_case, preprocess_dataset, sample_class_locations
from autosam.preprocessing.resampling import (
    nearest_indices,
    resample_image,
    resample_segmentation,
    separate_axis,
)
from autosam.utils.files import write_json
from raw_dataset_builder import write_raw_dataset


def three_label_seg(shape=(20, 40, 44)):
    seg = np.zeros(shape, np.int16)
    seg[4:15, 8:30, 10:34] = 1
    seg[7:11, 20:36, 2:20] = 2
    seg[0:2, 0:3, 0:4] = 3  # a tiny corner structure
    return seg


def onehot_reference(seg, new_shape):
    """Independent reference: scipy's linear zoom of every one-hot mask."""
    labels = range(int(seg.max()) + 1)
    return np.stack([ndimage.zoom((seg == k).astype(np.float32), [n / s for n, s in zip(new_shape, seg.shape)],
                                  order=1, mode="nearest", grid_mode=True) for k in labels])


@pytest.mark.parametrize("new_shape", [(40, 80, 88), (10, 20, 22), (13, 57, 31)])
def test_label_resampling_is_the_argmax_of_linearly_resampled_one_hots(new_shape):
    seg = three_label_seg()
    out = resample_segmentation(seg, new_shape)
    assert out.shape == new_shape and out.dtype == seg.dtype
    ref = onehot_reference(seg, new_shape)
    chosen = np.take_along_axis(ref, out[None].astype(np.intp), 0)[0]
    # every voxel gets a label whose interpolated one-hot value is maximal (ties may go either way)
    np.testing.assert_allclose(chosen, ref.max(0), atol=1e-5)
    assert set(np.unique(out)) == {0, 1, 2, 3}


def test_label_resampling_identity_and_empty():
    seg = three_label_seg()
    np.testing.assert_array_equal(resample_segmentation(seg, seg.shape), seg)
    assert not resample_segmentation(np.zeros((4, 5, 6), np.int16), (8, 10, 12)).any()


def test_anisotropic_path_resamples_the_coarse_axis_with_nearest_slices():
    assert separate_axis([5.0, 1.0, 1.0], [5.0, 1.0, 1.0]) == 0
    assert separate_axis([1.0, 1.0, 1.0], [1.0, 4.0, 1.0]) == 1
    assert separate_axis([2.0, 1.0, 1.0], [2.0, 1.0, 1.0]) is None
    rng = np.random.default_rng(0)
    data = ndimage.gaussian_filter(rng.normal(size=(1, 6, 30, 30)), 2).astype(np.float32)
    out = resample_image(data, (12, 45, 45), separate=0)
    idx = nearest_indices(12, 6)
    for k in range(12):  # every output slice is the in-plane resampling of one input slice
        ref = resample_image(data[:, idx[k]:idx[k] + 1], (1, 45, 45), separate=0)[:, 0]
        np.testing.assert_allclose(out[:, k], ref, atol=1e-6)
    seg = three_label_seg((6, 30, 30))
    sout = resample_segmentation(seg, (12, 45, 45), separate=0)
    for k in range(12):
        np.testing.assert_array_equal(sout[k], resample_segmentation(seg[idx[k]:idx[k] + 1], (1, 45, 45))[0])


def test_image_resampling_is_cubic_bspline():
    rng = np.random.default_rng(1)
    data = ndimage.gaussian_filter(rng.normal(size=(2, 16, 20, 24)), 1.5).astype(np.float32)
    new_shape = (12, 30, 17)
    out = resample_image(data, new_shape)
    for c in range(2):
        ref = ndimage.zoom(data[c], [n / s for n, s in zip(new_shape, data.shape[1:])], order=3,
                           mode="nearest", grid_mode=True)
        inner = (slice(3, -3),) * 3
        np.testing.assert_allclose(out[c][inner], ref[inner], atol=5e-3 * np.abs(ref).max())


def test_image_resampling_stays_in_each_channels_input_range():
    """A cubic spline overshoots at a sharp edge (up to ~1 z-score unit on clipped CT); nnU-Net's
    skimage resize clips to the input range (clip=True), and autosam must give the same data."""
    data = np.zeros((2, 8, 16, 16), np.float32)
    data[0, :, 5:11, 5:11] = 3.0  # a bright block at the clip maximum
    data[1] = -data[0]
    out = resample_image(data, (11, 23, 29))
    for c in range(2):
        assert out[c].min() >= data[c].min() and out[c].max() <= data[c].max()
        assert out[c].max() - out[c].min() > 2.9  # clipped, not flattened
    raw = ndimage.zoom(data[0], [11 / 8, 23 / 16, 29 / 16], order=3, mode="nearest", grid_mode=True)
    assert raw.max() > 3.05  # the overshoot the clip removes is real


# ---------------------------------------------------------------------------------------- normalisation
def test_ct_normalisation_clips_and_standardises_with_dataset_statistics():
    x = np.array([-2000, 0, 100, 5000], np.float32)
    props = {"percentile_00_5": -1000, "percentile_99_5": 1000, "mean": 100, "std": 50}
    np.testing.assert_allclose(normalize_channel(x, "CTNormalization", props), [-22, -2, 0, 18])


def test_masked_zscore_uses_only_the_mask_and_zeroes_outside():
    x = np.zeros((4, 4, 4), np.float32)
    x[1:3, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2) + 10
    mask = x != 0
    out = normalize_channel(x.copy(), "ZScoreNormalization", mask=mask)
    assert out[~mask].max() == 0 and abs(out[mask].mean()) < 1e-6 and abs(out[mask].std() - 1) < 1e-5
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_channel(x, "Magic")


def test_class_locations_sample_voxels_of_each_label():
    seg = three_label_seg()
    locs = sample_class_locations(seg, "case", per_class=50)
    assert set(locs) == {"1", "2", "3"}
    assert len(locs["1"]) == 50 and len(locs["3"]) == int((seg == 3).sum())
    for label, points in locs.items():
        pts = np.asarray(points)
        assert (seg[tuple(pts.T)] == int(label)).all()
    assert sample_class_locations(seg, "case", per_class=50) == locs  # seeded by the case


# ---------------------------------------------------------------------------------------- cases and datasets
def make_plans(spacing, schemes=("ZScoreNormalization",), use_mask=(False,), labels=None) -> Plans:
    conf = ConfigurationPlan(name="3d", data_identifier="toyPlans_3d", spacing=list(spacing), patch_size=[8, 8, 8],
                             batch_size=2, median_image_size_in_voxels=[8, 8, 8], normalization_schemes=list(schemes),
                             use_mask_for_norm=list(use_mask), resampling=ResamplingPlan())
    return Plans(schema_version=1, dataset_name="Dataset043_Pre", plans_name="toyPlans", planner="default",
                 gpu_memory_target_gb=8, original_median_spacing=list(spacing), original_median_shape=[8, 8, 8],
                 num_channels=len(schemes), channel_names={str(i): "MR" for i in range(len(schemes))},
                 labels=labels or {"background": 0, "a": 1}, foreground_intensity_properties_per_channel={},
                 configurations={"3d": conf}, default_method="unet", default_method_rationale="baseline")


def padded_case(seed, shape=(8, 16, 16)):
    rng = np.random.default_rng(seed)
    img = np.zeros((10, 20, 22), np.float32)
    img[1:9, 2:18, 3:19] = rng.normal(100, 10, size=shape)
    lab = np.zeros(img.shape, np.uint8)
    lab[3:6, 5:12, 6:14] = 1
    return [img], lab


def test_preprocess_case_crops_normalises_resamples_and_records_properties(autosam_dirs):
    folder = write_raw_dataset(autosam_dirs["raw"], "Dataset043_Pre", {"c0": padded_case(0)}, spacing=(4.0, 1.0, 1.0),
                               channel_names={"0": "MR"})
    plans = make_plans([2.0, 1.0, 1.0], use_mask=(True,))
    data, seg, props = preprocess_case([folder / "imagesTr" / "c0_0000.nii.gz"], plans, "3d",
                                       folder / "labelsTr" / "c0.nii.gz")
    assert props["bbox_used_for_cropping"] == [[1, 9], [2, 18], [3, 19]]
    assert props["shape_before_cropping"] == [10, 20, 22]
    assert props["shape_after_cropping_and_before_resampling"] == [8, 16, 16]
    assert props["spacing"] == [2.0, 1.0, 1.0] and props["separate_axis"] == 0  # 4/1 > 3: anisotropic
    assert data.shape == (1, 16, 16, 16) and seg.shape == (1, 16, 16, 16)
    assert data.dtype == np.float32 and seg.dtype == np.int16
    assert abs(float(data.mean())) < 0.1 and set(np.unique(seg)) == {0, 1}
    assert (seg[0] == 1).sum() == 2 * 3 * 7 * 8  # nearest slices along z doubles the slab exactly
    assert props["geometry"]["spacing"] == [4.0, 1.0, 1.0]
    assert set(props["class_locations"]) == {"1"}
    data2, seg2, _ = preprocess_case([folder / "imagesTr" / "c0_0000.nii.gz"], plans, "3d")
    assert seg2 is None and np.array_equal(data, data2)


def test_interrupted_run_redoes_incomplete_cases_only(autosam_dirs):
    cases = {f"c{i}": padded_case(i) for i in range(3)}
    write_raw_dataset(autosam_dirs["raw"], "Dataset043_Pre", cases, spacing=(1.0, 1.0, 1.0), channel_names={"0": "MR"})
    pre = autosam_dirs["preprocessed"] / "Dataset043_Pre"
    plans = make_plans([1.0, 1.0, 1.0])
    plans.save(pre / "toyPlans.json")
    folders = preprocess_dataset(43, plans_name="toyPlans", configurations=["3d"], num_processes=1)
    folder = folders["3d"]
    assert storage.list_cases(folder) == ["c0", "c1", "c2"]
    assert (pre / "splits_final.json").is_file() and (pre / "dataset.json").is_file()
    assert sorted(p.name for p in (pre / "gt_segmentations").iterdir()) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    good = np.load(folder / "c1.npy")
    # simulate an interruption: c1's properties never written, its image half-written
    (folder / "c1.json").unlink()
    np.save(folder / "c1.npy", np.zeros((1, 2, 2, 2), np.float32))
    before = {k: (folder / f"{k}.json").stat().st_mtime_ns for k in ("c0", "c2")}
    preprocess_dataset(43, plans_name="toyPlans", configurations=["3d"], num_processes=1)
    assert storage.is_complete(folder, "c1")
    np.testing.assert_array_equal(np.load(folder / "c1.npy"), good)
    assert {k: (folder / f"{k}.json").stat().st_mtime_ns for k in ("c0", "c2")} == before
    # changed preprocessing parameters invalidate every case
    plans.configurations["3d"].spacing = [2.0, 1.0, 1.0]
    plans.save(pre / "toyPlans.json")
    preprocess_dataset(43, plans_name="toyPlans", configurations=["3d"], num_processes=1)
    assert np.load(folder / "c0.npy").shape[1] == 4
    with pytest.raises(ValueError, match="no configuration"):
        preprocess_dataset(43, plans_name="toyPlans", configurations=["2d"], num_processes=1)


def test_class_locations_live_beside_the_json_and_old_folders_still_load(tmp_path):
    """10,000 locations per label as JSON made the properties file as large as a small image and
    took half of the hippocampus preprocessing time; they go to an .npz file now."""
    from autosam.preprocessing.storage import load_case, locations_path, save_case, undeclared_values_of_cases

    seg = np.zeros((1, 30, 40, 40), np.int16)
    seg[0, 2:28, 5:35, 5:35] = 1
    seg[0, 10:12, 10:12, 10:12] = 2
    locs = {"1": np.argwhere(seg[0] == 1)[:10_000].tolist(), "2": np.argwhere(seg[0] == 2).tolist()}
    data = np.zeros((1, 30, 40, 40), np.float32)
    save_case(tmp_path, "new", data, seg, {"spacing": [1, 1, 1], "class_locations": locs})
    assert (tmp_path / "new.json").stat().st_size < 1000 and locations_path(tmp_path, "new").is_file()
    _, _, props = load_case(tmp_path, "new")
    assert sorted(props["class_locations"]) == ["1", "2"]
    assert props["class_locations"]["1"].tolist() == locs["1"] and props["class_locations"]["2"].shape == (8, 3)
    from autosam.utils.files import write_json

    write_json(tmp_path / "old.json", {"spacing": [1, 1, 1], "class_locations": {"1": [[3, 4, 5]], "7": [[1, 1, 1]]}})
    np.save(tmp_path / "old.npy", data)
    np.save(tmp_path / "old_seg.npy", seg)
    assert load_case(tmp_path, "old")[2]["class_locations"]["1"] == [[3, 4, 5]]
    assert undeclared_values_of_cases(tmp_path, ["new", "old"], [0, 1, 2]) == {str(tmp_path / "old_seg.npy"): [7]}
