"""nnU-Net's planning rules for spacing and normalisation, written for autosam.

Pure functions of the fingerprint's numbers, so any planner plugin can reuse them:

- :func:`target_spacing`: median spacing per axis; when the coarsest axis is more than
  ``ANISOTROPY_THRESHOLD`` times the finest and the images have few slices along it, that axis
  takes the 10th percentile of its spacings instead (keeps more slices, no needless upsampling).
- :func:`median_shape_at_spacing`: the median image shape (after cropping) once resampled.
- :func:`normalization_for_channel` / :func:`use_mask_for_norm`: ``CT`` channels are clipped to the
  foreground 0.5/99.5 percentiles and standardised with the foreground mean/std of the whole
  dataset; every other channel is z-scored per image, inside the non-zero mask when cropping
  removed a lot of the image (median relative size after crop < 3/4).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

ANISOTROPY_THRESHOLD = 3.0
#: The coarse axis must have fewer than (other axes' median size / this) voxels to use the rule.
ANISOTROPY_SLICE_RATIO = 3.0
USE_MASK_FOR_NORM_BELOW = 0.75

CT = "CTNormalization"
ZSCORE = "ZScoreNormalization"
NONORM = "NoNormalization"
RESCALE01 = "RescaleTo01Normalization"
NORMALIZATION_SCHEMES = (CT, ZSCORE, NONORM, RESCALE01)


def target_spacing(spacings: Sequence[Sequence[float]], shapes_after_crop: Sequence[Sequence[int]]) -> list[float]:
    """Target spacing (z, y, x) from per-case spacings and cropped shapes (nnU-Net's rule)."""
    sp = np.asarray(spacings, dtype=float)
    shapes = np.asarray(shapes_after_crop, dtype=float)
    if sp.ndim != 2 or len(sp) == 0:
        raise ValueError(f"target_spacing: need one spacing per case, got {sp.shape}")
    target = np.median(sp, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    anisotropic = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
    few_slices = median_shape[worst] * ANISOTROPY_SLICE_RATIO < min(median_shape[others])
    if anisotropic and few_slices:
        coarse = float(np.percentile(sp[:, worst], 10))
        # never finer than the other axes: that would upsample the coarse axis beyond isotropy
        target[worst] = max(coarse, float(max(target[others])))
    return [float(v) for v in target]


def is_anisotropic(spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    return max(spacing) / min(spacing) > threshold


def median_shape_at_spacing(
    spacings: Sequence[Sequence[float]], shapes_after_crop: Sequence[Sequence[int]], spacing: Sequence[float]
) -> list[int]:
    """Median over cases of the cropped shape once resampled to ``spacing``."""
    sp = np.asarray(spacings, dtype=float)
    shapes = np.asarray(shapes_after_crop, dtype=float)
    new_shapes = np.round(shapes * sp / np.asarray(spacing, dtype=float)[None])
    return [int(v) for v in np.median(new_shapes, axis=0)]


def normalization_for_channel(channel_name: str) -> str:
    """The normalisation scheme a channel name selects (case-insensitive)."""
    key = channel_name.strip().lower().replace("-", "_")
    if key == "ct":
        return CT
    if key in ("nonorm", "no_norm", "none", "nonormalization"):
        return NONORM
    if key in ("rescale_to_0_1", "rgb_to_0_1"):
        return RESCALE01
    return ZSCORE


def use_mask_for_norm(scheme: str, median_relative_size_after_crop: float) -> bool:
    """Z-score inside the non-zero mask when cropping shrank the images a lot (e.g. skull-stripped MR)."""
    return scheme == ZSCORE and median_relative_size_after_crop < USE_MASK_FOR_NORM_BELOW
