"""Crop a case to its non-zero region (nnU-Net semantics).

The non-zero mask is "any channel != 0" with holes filled. Holes never change a bounding box, so
:func:`crop_to_nonzero` computes the box from the unfilled mask (cheaper); :func:`nonzero_mask`
gives the hole-filled mask where a mask is needed (e.g. normalisation inside the body only).
Boxes are ``[[z0, z1], [y0, y1], [x0, x1]]``, half-open, in array indices.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool mask of voxels where any channel of ``data`` (C, Z, Y, X) is non-zero, holes filled."""
    if data.ndim != 4:
        raise ValueError(f"nonzero_mask: expected data of shape (C, Z, Y, X), got {data.shape}")
    mask = np.any(data != 0, axis=0)
    return ndimage.binary_fill_holes(mask)


def bbox_of_mask(mask: np.ndarray) -> list[list[int]]:
    """Half-open bounding box of the True voxels; the whole array when the mask is empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return [[0, int(s)] for s in mask.shape]
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def nonzero_bbox(data: np.ndarray) -> list[list[int]]:
    """Bounding box of the voxels where any channel is non-zero (identical to the hole-filled mask's box)."""
    if data.ndim != 4:
        raise ValueError(f"nonzero_bbox: expected data of shape (C, Z, Y, X), got {data.shape}")
    return bbox_of_mask(np.any(data != 0, axis=0))


def crop_to_bbox(array: np.ndarray, bbox: list[list[int]]) -> np.ndarray:
    """Crop the last ``len(bbox)`` axes of ``array`` (a view, no copy)."""
    slices = tuple(slice(lo, hi) for lo, hi in bbox)
    return array[(Ellipsis,) + slices]


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, list[list[int]]]:
    """Crop ``data`` (C, Z, Y, X) and ``seg`` (1 or C', Z, Y, X, optional) to the non-zero box.

    Returns views into the inputs (copy them if they must outlive the originals) and the box.
    """
    bbox = nonzero_bbox(data)
    if seg is not None and tuple(seg.shape[1:]) != tuple(data.shape[1:]):
        raise ValueError(f"crop_to_nonzero: segmentation shape {seg.shape[1:]} differs from image shape {data.shape[1:]}")
    return crop_to_bbox(data, bbox), (crop_to_bbox(seg, bbox) if seg is not None else None), bbox
