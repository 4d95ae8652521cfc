"""Prompts between the input grid and the preprocessed grid (crop + anisotropic resampling), checked
against what the preprocessor does to the label map of the same case."""
from __future__ import annotations

import numpy as np
import pytest

from autosam.inference.prompt_mapping import GridMap, prompts_to_input, prompts_to_preprocessed
from autosam.io.image import ImageGeometry
from autosam.preprocessing.preprocessor import preprocess_arrays
from autosam.prompts import LabelPrompts, Point, box2d_from_mask
from training_data import tiny_plans

SHAPE = (18, 40, 34)


def _case(spacing):
    """An image with a zero border of different widths per side (a non-trivial crop) and an
    ellipsoid (label 1), preprocessed to the tiny plans' spacing (2, 1, 1)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    seg = np.zeros(SHAPE, np.int16)
    seg[((z - 9) / 4.5) ** 2 + ((y - 19) / 8.0) ** 2 + ((x - 15) / 6.0) ** 2 < 1] = 1
    img = rng.normal(1.0, 0.2, SHAPE).astype(np.float32) + 2.0 * seg
    img[:2], img[-1:], img[:, :5], img[:, -3:], img[:, :, :1], img[:, :, -4:] = 0, 0, 0, 0, 0, 0
    geometry = ImageGeometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=SHAPE)
    data, pseg, props = preprocess_arrays(img[None], geometry, tiny_plans(), "3d", seg[None])
    assert props["bbox_used_for_cropping"] == [[2, 17], [5, 37], [1, 30]]
    return seg == 1, pseg[0] == 1, props, data.shape[1:]


# (2.5, 1.2, 0.9): upsampled in z and y, downsampled in x; (4.0, 0.7, 1.3): z is the separate
# (anisotropic) axis, upsampled 2x, y downsampled, x upsampled
SPACINGS = [(2.5, 1.2, 0.9), (4.0, 0.7, 1.3)]


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _bbox(mask):
    idx = np.argwhere(mask)
    return (*idx.min(0), *idx.max(0))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_indices_round_trip_on_every_voxel(spacing):
    _ref, _pseg, props, shape = _case(spacing)
    gm = GridMap(props, shape)
    for axis in range(3):
        lo, hi = gm.bbox[axis]
        assert gm.index_to_preprocessed(lo - 1, axis) is None and gm.index_to_preprocessed(hi, axis) is None
        if gm.scale(axis) >= 1:  # every input voxel has its own preprocessed voxels: input -> pre -> input is exact
            assert [gm.index_to_input(gm.index_to_preprocessed(i, axis), axis) for i in range(lo, hi)] == list(range(lo, hi))
        else:  # several input voxels share one preprocessed voxel: pre -> input -> pre is exact
            assert [gm.index_to_preprocessed(gm.index_to_input(o, axis), axis) for o in range(gm.new[axis])] == \
                list(range(gm.new[axis]))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_boxes_follow_the_preprocessor_and_round_trip(spacing):
    ref, pseg, props, shape = _case(spacing)
    box = _bbox(ref)
    pre = prompts_to_preprocessed({1: LabelPrompts(boxes3d=[box])}, props, shape)[1].boxes3d[0]
    got = _bbox(pseg)  # the structure as the preprocessor resampled it lies inside the mapped box ...
    assert all(pre[a] <= got[a] and got[a + 3] <= pre[a + 3] for a in range(3))
    assert all(pre[a + 3] - pre[a] <= got[a + 3] - got[a] + 3 for a in range(3))  # ... which is not much larger
    back = prompts_to_input({1: LabelPrompts(boxes3d=[pre])}, props, shape)[1].boxes3d[0]
    gm = GridMap(props, shape)
    for a in range(3):  # the round trip never loses a voxel and adds less than one preprocessed voxel per side
        assert back[a] <= box[a] and back[a + 3] >= box[a + 3]
        assert box[a] - back[a] < 1 / gm.scale(a) + 1 and back[a + 3] - box[a + 3] < 1 / gm.scale(a) + 1


@pytest.mark.parametrize("spacing", SPACINGS)
def test_clicks_land_in_the_structure_and_outside_ones_are_dropped(spacing):
    ref, pseg, props, shape = _case(spacing)
    inside = [Point(9, 19, 15), Point(8, 22, 12), Point(10, 16, 18)]
    outside = [Point(9, 8, 4, positive=False)]
    off_crop = [Point(0, 19, 15, positive=False), Point(9, 39, 15)]  # in the zero border
    pre = prompts_to_preprocessed({1: LabelPrompts(points=inside + outside + off_crop)}, props, shape)[1].points
    assert len(pre) == 4 and [p.positive for p in pre] == [True, True, True, False]
    assert all(pseg[p.z, p.y, p.x] for p in pre[:3]) and not pseg[pre[3].z, pre[3].y, pre[3].x]
    back = prompts_to_input({1: LabelPrompts(points=pre)}, props, shape)[1].points
    gm = GridMap(props, shape)
    for p, q in zip(inside + outside, back):
        assert q.positive == p.positive
        assert all(abs(u - v) <= max(0, int(np.ceil(1 / gm.scale(a))) - 1)
                   for a, (u, v) in enumerate(zip((p.z, p.y, p.x), (q.z, q.y, q.x))))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_box2d_maps_its_slice_and_range(spacing):
    ref, pseg, props, shape = _case(spacing)
    b = box2d_from_mask(ref)
    pre = prompts_to_preprocessed({1: LabelPrompts(box2d=b)}, props, shape)[1].box2d
    got = _bbox(pseg)
    assert pre.z_lo <= got[0] and pre.z_hi >= got[3] and pre.z_lo <= pre.z <= pre.z_hi
    gm = GridMap(props, shape)
    assert gm.index_to_input(pre.z, 0) == b.z or gm.scale(0) < 1
    back = prompts_to_input({1: LabelPrompts(box2d=pre)}, props, shape)[1].box2d
    assert back.z == b.z and back.z_lo <= b.z_lo and back.z_hi >= b.z_hi
    assert back.y0 <= b.y0 and back.x0 <= b.x0 and back.y1 >= b.y1 and back.x1 >= b.x1


@pytest.mark.parametrize("spacing", SPACINGS)
def test_previous_mask_round_trip(spacing):
    ref, pseg, props, shape = _case(spacing)
    pre = prompts_to_preprocessed({1: LabelPrompts(previous_mask=ref)}, props, shape)[1].previous_mask
    assert pre.shape == tuple(shape) and pre.dtype == bool
    assert _dice(pre, pseg) > 0.9  # nearest neighbour vs the preprocessor's linear one-hot resampling
    back = prompts_to_input({1: LabelPrompts(previous_mask=pre)}, props, shape)[1].previous_mask
    assert back.shape == SHAPE
    gm = GridMap(props, shape)
    if all(gm.scale(a) >= 1 for a in range(3)):
        np.testing.assert_array_equal(back, ref)
    else:
        assert _dice(back, ref) > 0.9
    outside = np.ones(SHAPE, bool)
    outside[tuple(slice(a, b) for a, b in gm.bbox)] = False
    pre_all = GridMap(props, shape).mask_to_preprocessed(np.ones(SHAPE, bool))
    assert pre_all.all() and not GridMap(props, shape).mask_to_input(pre_all)[outside].any()


def test_upsampled_mask_round_trip_is_exact():
    ref, _pseg, props, shape = _case((2.5, 1.3, 1.1))  # every axis upsampled
    gm = GridMap(props, shape)
    assert all(gm.scale(a) > 1 for a in range(3))
    np.testing.assert_array_equal(gm.mask_to_input(gm.mask_to_preprocessed(ref)), ref)


def test_wrong_mask_shape_is_refused():
    ref, _pseg, props, shape = _case(SPACINGS[0])
    with pytest.raises(ValueError, match="previous mask has shape"):
        GridMap(props, shape).mask_to_preprocessed(ref[1:])
