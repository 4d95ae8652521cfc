"""The simulated user of the CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image
Segmentation" challenge: where the next click goes.

For one structure (the voxels of one label in the reference), given the current prediction of it:

1. the error region is every voxel where prediction and reference disagree: missed foreground
   (false negatives) and false positives together (``ref XOR pred``), leaving out voxels whose
   reference is the dataset's ``ignore`` label;
2. its connected components are labelled with 26-connectivity (the challenge's ``cc3d`` default);
   the largest one (most voxels; the first in label order on a tie) is the one the user fixes;
3. the click goes to the centre of that component: the voxel with the largest Euclidean distance
   (in mm, the image's spacing honoured) to the nearest voxel outside the component, the image
   border counting as outside (the first such voxel in z, y, x order on a tie);
4. it is positive when the reference there is the structure (missed foreground) and negative
   otherwise (a false positive).

No error: no click (None).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from autosam.prompts import Point

_CONNECTIVITY_26 = ndimage.generate_binary_structure(3, 3)


def error_region(ref: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``ref XOR pred`` (boolean), outside the ignored voxels (``valid`` False)."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    err = ref ^ pred
    if valid is not None:
        err &= np.asarray(valid, dtype=bool)
    return err


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest 26-connected component of a boolean mask (None when the mask is empty)."""
    labels, n = ndimage.label(mask, structure=_CONNECTIVITY_26)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def component_centre(component: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[int, int, int]:
    """The voxel of ``component`` farthest (Euclidean, mm) from every voxel outside it and from the
    image border: the maximum of the distance transform of the component padded with one empty voxel."""
    idx = np.argwhere(component)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = component[tuple(slice(a, b) for a, b in zip(lo, hi))]
    padded = np.pad(box, 1)  # the border counts as outside, as everywhere outside the box
    dist = ndimage.distance_transform_edt(padded, sampling=None if spacing is None else [float(s) for s in spacing])
    centre = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(int(c - 1 + o) for c, o in zip(centre, lo))  # type: ignore[return-value]


def simulate_click(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None,
                   valid: np.ndarray | None = None) -> Point | None:
    """The challenge's next click for one structure (module docstring): at the centre of the largest
    error component, positive on missed foreground, negative on a false positive; None without error."""
    component = largest_component(error_region(ref, pred, valid))
    if component is None:
        return None
    z, y, x = component_centre(component, spacing)
    return Point(z, y, x, positive=bool(np.asarray(ref)[z, y, x]))
