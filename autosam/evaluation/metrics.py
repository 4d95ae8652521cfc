"""Overlap and surface-distance metrics of one label in one case.

Conventions (documented in ``documentation/inference_and_evaluation.md``):

- ``Dice = 2 TP / (2 TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``.
- Both masks empty: Dice and IoU are NaN (undefined; excluded from means, as in nnU-Net), HD95 is 0.
- Exactly one mask empty: Dice = IoU = 0 and HD95 is infinite (``math.inf`` in Python; written as
  ``null`` with ``"HD95_infinite": true`` in JSON, see :mod:`autosam.evaluation.evaluate`).
- HD95 (mm): the surface of a mask is its voxels with at least one 6-neighbour outside the mask
  (the image border counts as outside). For every surface voxel of one mask the Euclidean distance
  (voxel centres, in mm, anisotropic spacing honoured) to the nearest surface voxel of the other
  mask is taken; HD95 is the larger of the two directed 95th percentiles (the symmetric 95%
  Hausdorff distance; with percentile 100 it is the Hausdorff distance).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

METRIC_NAMES = ("Dice", "IoU", "HD95", "TP", "FP", "FN", "TN", "n_ref", "n_pred")
_SIX_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface voxels of a boolean mask (6-connectivity, the border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(max(0, idx[0] - margin), idx[-1] + 1 + margin))
    return tuple(slices)


def directed_surface_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm) from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_to[from_surface]


def hd95(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], percentile: float = 95.0) -> float:
    """Symmetric 95% Hausdorff distance in mm (0 if both empty, ``inf`` if exactly one is empty)."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return 0.0
    if has_ref != has_pred:
        return math.inf
    # Every surface voxel lies inside the joint bounding box, so distances computed in the box
    # (padded by one empty voxel, which keeps the border-is-outside rule) are exact.
    box = _bounding_box(ref | pred, margin=0)
    ref_c = np.pad(ref[box], 1)
    pred_c = np.pad(pred[box], 1)
    ref_s, pred_s = surface(ref_c), surface(pred_c)
    spacing = [float(s) for s in spacing]
    d_pred = directed_surface_distances(pred_s, ref_s, spacing)
    d_ref = directed_surface_distances(ref_s, pred_s, spacing)
    return float(max(np.percentile(d_pred, percentile), np.percentile(d_ref, percentile)))


def label_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None,
                  compute_hd95: bool = True, valid: np.ndarray | None = None) -> dict[str, float]:
    """Dice, IoU, HD95 (mm), TP, FP, FN, TN, n_ref, n_pred of two boolean masks of equal shape.

    ``valid`` (boolean, same shape): only these voxels count (the others are the dataset's
    ``ignore`` label): both masks are cleared outside it and TN counts valid voxels only."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    n_voxels = int(ref.size)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        ref, pred, n_voxels = ref & valid, pred & valid, int(np.count_nonzero(valid))
    spacing = [1.0] * ref.ndim if spacing is None else list(spacing)
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {spacing} does not match a {ref.ndim}D mask")
    tp = int(np.count_nonzero(ref & pred))
    n_ref = int(np.count_nonzero(ref))
    n_pred = int(np.count_nonzero(pred))
    fp = n_pred - tp
    fn = n_ref - tp
    tn = n_voxels - tp - fp - fn
    if tp + fp + fn == 0:
        dice = iou = math.nan
    else:
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
    out = {"Dice": dice, "IoU": iou, "TP": tp, "FP": fp, "FN": fn, "TN": tn, "n_ref": n_ref, "n_pred": n_pred}
    if compute_hd95:
        out["HD95"] = hd95(ref, pred, spacing)
    return out


def case_metrics(ref_labels: np.ndarray, pred_labels: np.ndarray, labels: Sequence[int | tuple[int, ...]],
                 spacing: Sequence[float] | None = None, compute_hd95: bool = True,
                 ignore_label: int | None = None) -> dict[str, dict[str, float]]:
    """Metrics per label value or region for two integer label maps. A region (a tuple of label
    values) compares the union of its labels in the reference and in the prediction. Keys are
    ``"1"`` for labels and ``"(1, 2, 3)"`` for regions (nnU-Net's keys). Voxels whose reference is
    ``ignore_label`` count in no metric."""
    from autosam.io.labels import metric_key

    if ref_labels.shape != pred_labels.shape:
        raise ValueError(f"reference shape {ref_labels.shape} differs from prediction shape {pred_labels.shape}")
    valid = ref_labels != ignore_label if ignore_label is not None else None

    def mask(seg, key):
        return np.isin(seg, key) if isinstance(key, tuple) else seg == key

    return {metric_key(lab): label_metrics(mask(ref_labels, lab), mask(pred_labels, lab), spacing, compute_hd95, valid)
            for lab in labels}
