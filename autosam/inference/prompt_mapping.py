"""Prompts between the input image's grid and a configuration's preprocessed grid.

Users (and the interactive evaluator) give prompts in voxels of the INPUT image; a method predicts
on the PREPROCESSED grid of its configuration: the image cropped to its non-zero box
(``properties["bbox_used_for_cropping"]``, half-open, input voxels) and resampled from
``properties["shape_after_cropping_and_before_resampling"]`` to the preprocessed shape. Along an
axis resized from ``n`` to ``m`` voxels the scale is ``s = m / n``; input voxel ``i`` of the crop
covers ``[i, i + 1)`` and preprocessed voxel ``o`` covers ``[o / s, (o + 1) / s)`` in crop units
(the voxel-centre convention of :mod:`autosam.preprocessing.resampling`).

- boxes (3D boxes, the challenge's 2D box and its z range): a box keeps every voxel it touches
  (:func:`autosam.inference.box_prompts.to_preprocessed_grid`, and its inverse here), so a box
  never shrinks on the way;
- clicks: a click lands on the voxel that contains the centre of the clicked voxel; a click outside
  the crop box (the all-zero border of the image, where every prediction is background) is dropped;
- the 2D box's slice: the preprocessed slice that contains the centre of the input slice;
- previous masks: cropped, then resampled by nearest neighbour (voxel centres, as
  :func:`autosam.preprocessing.resampling.nearest_indices`); back on the input grid, background
  outside the crop box.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from autosam.inference.box_prompts import to_preprocessed_grid
from autosam.preprocessing.resampling import nearest_indices
from autosam.prompts import Box2D, Box3D, CasePrompts, LabelPrompts, Point


class GridMap:
    """The crop and resampling of one case (``properties`` of
    :func:`autosam.preprocessing.preprocessor.preprocess_case`) onto ``preprocessed_shape`` (Z, Y, X)."""

    def __init__(self, properties: dict, preprocessed_shape: Sequence[int]):
        self.properties = properties
        self.bbox = [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"]]
        self.crop = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
        self.full = [int(s) for s in properties.get("shape_before_cropping", [b for _, b in self.bbox])]
        self.new = [int(s) for s in preprocessed_shape][-3:]
        if [b - a for a, b in self.bbox] != self.crop:
            raise ValueError(f"crop box {self.bbox} does not match shape_after_cropping_and_before_resampling {self.crop}")

    def scale(self, axis: int) -> float:
        return self.new[axis] / self.crop[axis]

    # ------------------------------------------------------------------ input -> preprocessed
    def index_to_preprocessed(self, index: int, axis: int) -> int | None:
        """The preprocessed voxel containing the centre of input voxel ``index`` (None outside the crop)."""
        c = int(index) - self.bbox[axis][0]
        if not 0 <= c < self.crop[axis]:
            return None
        return min(self.new[axis] - 1, int(math.floor((c + 0.5) * self.scale(axis))))

    def box_to_preprocessed(self, box: Sequence[int]) -> Box3D:
        """A 3D box ``(z0, y0, x0, z1, y1, x1)``: every preprocessed voxel it touches (clipped to the crop)."""
        out = to_preprocessed_grid({1: [list(box)]}, self.properties, self.new)[1][0]
        return tuple(int(v) for v in out)  # type: ignore[return-value]

    def point_to_preprocessed(self, point: Point) -> Point | None:
        idx = [self.index_to_preprocessed(v, a) for a, v in enumerate((point.z, point.y, point.x))]
        if any(i is None for i in idx):
            return None
        return Point(idx[0], idx[1], idx[2], point.positive)

    def box2d_to_preprocessed(self, box: Box2D) -> Box2D:
        z_lo, y0, x0, z_hi, y1, x1 = self.box_to_preprocessed((box.z_lo, box.y0, box.x0, box.z_hi, box.y1, box.x1))
        z = self.index_to_preprocessed(box.z, 0)
        if z is None:  # the slice lies outside the crop: the nearest slice of the range
            z = z_lo if box.z < self.bbox[0][0] else z_hi
        return Box2D(z=min(max(z, z_lo), z_hi), y0=y0, x0=x0, y1=y1, x1=x1, z_lo=z_lo, z_hi=z_hi)

    def mask_to_preprocessed(self, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        if list(mask.shape) != self.full:
            raise ValueError(f"previous mask has shape {tuple(mask.shape)}, the input image {tuple(self.full)}")
        cropped = mask[tuple(slice(a, b) for a, b in self.bbox)]
        return _nearest_resize(cropped, self.new)

    def to_preprocessed(self, prompts: CasePrompts) -> dict[int, LabelPrompts]:
        """A case's prompts (label -> :class:`LabelPrompts`, input grid) on the preprocessed grid."""
        out = {}
        for label, p in prompts.items():
            points = [q for q in (self.point_to_preprocessed(pt) for pt in p.points) if q is not None]
            out[int(label)] = LabelPrompts(
                boxes3d=[self.box_to_preprocessed(b) for b in p.boxes3d],
                box2d=self.box2d_to_preprocessed(p.box2d) if p.box2d is not None else None,
                points=points,
                previous_mask=self.mask_to_preprocessed(p.previous_mask) if p.previous_mask is not None else None)
        return out

    # ------------------------------------------------------------------ preprocessed -> input
    def index_to_input(self, index: int, axis: int) -> int:
        """The input voxel containing the centre of preprocessed voxel ``index``."""
        c = int(math.floor((int(index) + 0.5) / self.scale(axis)))
        return min(self.crop[axis] - 1, max(0, c)) + self.bbox[axis][0]

    def box_to_input(self, box: Sequence[int]) -> Box3D:
        """A preprocessed 3D box: every input voxel it touches."""
        lo, hi = [], []
        for a in range(3):
            s = self.scale(a)
            lo.append(max(0, min(self.crop[a] - 1, math.floor(int(box[a]) / s + 1e-6))) + self.bbox[a][0])
            hi.append(max(0, min(self.crop[a] - 1, math.ceil((int(box[a + 3]) + 1) / s - 1e-6) - 1)) + self.bbox[a][0])
        return tuple(lo + hi)  # type: ignore[return-value]

    def point_to_input(self, point: Point) -> Point:
        return Point(*(self.index_to_input(v, a) for a, v in enumerate((point.z, point.y, point.x))), point.positive)

    def box2d_to_input(self, box: Box2D) -> Box2D:
        z_lo, y0, x0, z_hi, y1, x1 = self.box_to_input((box.z_lo, box.y0, box.x0, box.z_hi, box.y1, box.x1))
        return Box2D(z=min(max(self.index_to_input(box.z, 0), z_lo), z_hi), y0=y0, x0=x0, y1=y1, x1=x1,
                     z_lo=z_lo, z_hi=z_hi)

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        mask = np.asarray(mask, dtype=bool)
        if list(mask.shape) != self.new:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, the preprocessed grid {tuple(self.new)}")
        out = np.zeros(self.full, dtype=bool)
        out[tuple(slice(a, b) for a, b in self.bbox)] = _nearest_resize(mask, self.crop)
        return out

    def to_input(self, prompts: CasePrompts) -> dict[int, LabelPrompts]:
        """Preprocessed-grid prompts back on the input grid."""
        return {int(label): LabelPrompts(
            boxes3d=[self.box_to_input(b) for b in p.boxes3d],
            box2d=self.box2d_to_input(p.box2d) if p.box2d is not None else None,
            points=[self.point_to_input(q) for q in p.points],
            previous_mask=self.mask_to_input(p.previous_mask) if p.previous_mask is not None else None)
            for label, p in prompts.items()}


def _nearest_resize(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    out = mask
    for axis, size in enumerate(shape):
        if out.shape[axis] != size:
            out = np.take(out, nearest_indices(int(size), out.shape[axis]), axis=axis)
    return np.ascontiguousarray(out)


def prompts_to_preprocessed(prompts: CasePrompts, properties: dict, preprocessed_shape: Sequence[int]) -> dict[int, LabelPrompts]:
    """:meth:`GridMap.to_preprocessed` of one case."""
    return GridMap(properties, preprocessed_shape).to_preprocessed(prompts)


def prompts_to_input(prompts: CasePrompts, properties: dict, preprocessed_shape: Sequence[int]) -> dict[int, LabelPrompts]:
    """:meth:`GridMap.to_input` of one case."""
    return GridMap(properties, preprocessed_shape).to_input(prompts)

