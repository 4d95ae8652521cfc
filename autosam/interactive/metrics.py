"""Metrics of the interactive protocol: Dice, the normalised surface distance (NSD) at a tolerance,
and the area under the curve of a metric over the interaction steps.

- ``Dice = 2 |R & P| / (|R| + |P|)`` of the reference ``R`` and prediction ``P`` of one structure;
  NaN when both are empty (the protocol only scores structures present in the reference).
- ``NSD`` (Nikolov et al. 2021, the challenge's second metric) at tolerance ``tau`` mm: the share of
  surface voxels of both masks that lie within ``tau`` of the other mask's surface::

      NSD = (|{p in S_P : d(p, S_R) <= tau}| + |{r in S_R : d(r, S_P) <= tau}|) / (|S_P| + |S_R|)

  with surfaces as in :mod:`autosam.evaluation.metrics` (voxels with a 6-neighbour outside the mask,
  the border counting as outside) and distances between voxel centres in mm. The challenge's code
  (DeepMind's ``surface-distance``) weights each surface element by its area instead of counting
  voxels; both agree on what is within tolerance and differ by a few hundredths on ragged surfaces.
  One mask empty: 0; both empty: NaN.
- ``AUC`` over the steps ``0 .. n`` (the challenge's ``DSC_AUC``/``NSD_AUC``, computed there with
  ``sklearn.metrics.auc(np.arange(n + 1), values)``): the trapezoid rule with unit step spacing::

      AUC = sum_{k=1..n} (v[k-1] + v[k]) / 2 = v[0]/2 + v[1] + ... + v[n-1] + v[n]/2

  For the protocol's 6 steps (box + 5 clicks) it lies between 0 and 5 (Dice 1 at every step).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from autosam.evaluation.metrics import surface

DEFAULT_TOLERANCE_MM = 2.0


def dice(ref: np.ndarray, pred: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    total = int(np.count_nonzero(ref)) + int(np.count_nonzero(pred))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(ref & pred)) / total


def nsd(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float = DEFAULT_TOLERANCE_MM) -> float:
    """Normalised surface distance at ``tolerance_mm`` (module docstring)."""
    ref = np.asarray(ref, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if not has_ref and not has_pred:
        return math.nan
    if has_ref != has_pred:
        return 0.0
    # every surface voxel lies in the joint bounding box: distances computed in it (padded by one
    # empty voxel, which keeps the border-is-outside rule) are exact
    idx = np.argwhere(ref | pred)
    box = tuple(slice(a, b + 1) for a, b in zip(idx.min(0), idx.max(0)))
    s_ref, s_pred = surface(np.pad(ref[box], 1)), surface(np.pad(pred[box], 1))
    sampling = [float(s) for s in spacing]
    d_to_ref = ndimage.distance_transform_edt(~s_ref, sampling=sampling)
    d_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=sampling)
    within = np.count_nonzero(d_to_ref[s_pred] <= tolerance_mm) + np.count_nonzero(d_to_pred[s_ref] <= tolerance_mm)
    return float(within / (np.count_nonzero(s_ref) + np.count_nonzero(s_pred)))


def auc(values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` at steps 0, 1, ..., n (module docstring); NaN if any is NaN."""
    v = [float(x) for x in values]
    if len(v) < 2:
        raise ValueError(f"an AUC needs at least 2 steps, got {len(v)}")
    return float(sum((a + b) / 2.0 for a, b in zip(v[:-1], v[1:])))


def nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values (NaN when there is none)."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return float(sum(v) / len(v)) if v else math.nan
