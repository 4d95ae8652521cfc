"""Resampling of images, segmentations and probabilities between spacings.

Conventions (nnU-Net's): output voxel ``o`` of an axis resized from ``n`` to ``m`` voxels samples
the input at ``(o + 0.5) * n / m - 0.5`` (voxel centres, edges clamped).

- Images: cubic B-spline (order 3), computed separably: per axis a float32 spline pre-filter
  (:func:`scipy.ndimage.spline_filter1d`) and 4 weighted taps. The result equals
  :func:`scipy.ndimage.zoom` (``grid_mode=True``) away from the borders, at 4-5x less time. Each
  channel is then clipped to its input range, as nnU-Net's ``skimage.transform.resize`` does
  (``clip=True``): a cubic spline overshoots at edges (a CT clipped to its 99.5th percentile came out
  up to 1 z-score unit above it next to bright structures).
- Segmentations: every label's one-hot mask is interpolated linearly (order 1) and each voxel takes
  the label with the largest interpolated value (an argmax, without ever holding K volumes: the
  labels are processed one at a time inside their bounding box, and the background's value is
  ``1 - sum(foreground)`` because linear interpolation preserves the sum).
- Anisotropic data (coarsest / finest spacing > ``separate_z_anisotropy_threshold``, checked on the
  current spacing, then the target spacing): the coarse axis is resampled separately with
  ``image_order_z`` / ``label_order_z`` (0: nearest slice), then the other axes with the orders above.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from autosam.preprocessing.cropping import bbox_of_mask


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]


def separate_axis(current_spacing: Sequence[float], new_spacing: Sequence[float], threshold: float = 3.0) -> int | None:
    """The coarse axis to resample on its own, or None (the current spacing decides first)."""
    for spacing in (current_spacing, new_spacing):
        s = np.asarray(spacing, dtype=float)
        if s.min() > 0 and s.max() / s.min() > threshold:
            return int(np.argmax(s))
    return None


# ------------------------------------------------------------------------------ index helpers
def _source_positions(out_size: int, in_size: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    stop = out_size if stop is None else stop
    return (np.arange(start, stop, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5


def nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Nearest source index of every output position along one axis."""
    pos = _source_positions(out_size, in_size)
    return np.clip(np.floor(pos + 0.5), 0, in_size - 1).astype(np.intp)


def linear_indices(out_size: int, in_size: int, start: int = 0, stop: int | None = None):
    """``(i0, i1, w)``: output = (1 - w) * in[i0] + w * in[i1] for output positions start:stop."""
    pos = np.clip(_source_positions(out_size, in_size, start, stop), 0, in_size - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def _lerp_axis(array: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> np.ndarray:
    shape = [1] * array.ndim
    shape[axis] = -1
    a = np.take(array, i0, axis=axis)
    b = np.take(array, i1, axis=axis)
    a += (b - a) * w.reshape(shape)
    return a


def _linear_window(mask: np.ndarray, in_lo: Sequence[int], out_shape: Sequence[int], in_shape: Sequence[int],
                   out_lo: Sequence[int], out_hi: Sequence[int]) -> np.ndarray:
    """Linear resize of ``mask`` (a float32 window of the input starting at ``in_lo``) evaluated on
    the output window ``out_lo:out_hi`` of the full-size resize ``in_shape -> out_shape``."""
    result = mask
    for axis in range(mask.ndim):
        if in_shape[axis] == out_shape[axis]:
            result = np.take(result, np.arange(out_lo[axis], out_hi[axis]) - in_lo[axis], axis=axis)
            continue
        i0, i1, w = linear_indices(out_shape[axis], in_shape[axis], out_lo[axis], out_hi[axis])
        result = _lerp_axis(result, axis, i0 - in_lo[axis], i1 - in_lo[axis], w)
    return result


def _output_window(lo: int, hi: int, in_size: int, out_size: int) -> tuple[int, int]:
    """Output positions whose linear interpolation can touch input voxels ``lo:hi``."""
    scale = out_size / in_size
    o_lo = int(np.floor((lo - 1 + 0.5) * scale - 0.5)) - 1
    o_hi = int(np.ceil((hi + 0.5) * scale - 0.5)) + 2
    return max(0, o_lo), min(out_size, o_hi)


# ------------------------------------------------------------------------------ segmentations
def resample_segmentation(seg: np.ndarray, new_shape: Sequence[int], separate: int | None = None,
                          order_z: int = 0) -> np.ndarray:
    """Resample a label map (Z x Y x X, integer) to ``new_shape`` via one-hot linear interpolation.

    ``separate``: the axis resampled on its own with ``order_z`` (0 nearest, 1 linear).
    """
    new_shape = [int(s) for s in new_shape]
    if list(seg.shape) == new_shape:
        return seg.copy()
    if separate is not None and order_z == 0 and seg.shape[separate] != new_shape[separate]:
        seg = np.take(seg, nearest_indices(new_shape[separate], seg.shape[separate]), axis=separate)
        if list(seg.shape) == new_shape:
            return np.ascontiguousarray(seg)
    in_shape = list(seg.shape)
    labels = [int(v) for v in np.unique(seg) if v != 0]
    out_dtype = seg.dtype if np.issubdtype(seg.dtype, np.signedinteger) else np.int16
    result = np.zeros(new_shape, dtype=out_dtype)
    if not labels:
        return result
    best = np.zeros(new_shape, dtype=np.float32)
    fg_sum = np.zeros(new_shape, dtype=np.float32)
    for label in labels:
        mask = seg == label
        box = bbox_of_mask(mask)
        out_lo, out_hi, in_lo, in_hi = [], [], [], []
        for ax, (lo, hi) in enumerate(box):
            o_lo, o_hi = _output_window(lo, hi, in_shape[ax], new_shape[ax])
            if in_shape[ax] == new_shape[ax]:
                o_lo, o_hi = lo, hi
            out_lo.append(o_lo)
            out_hi.append(o_hi)
            if in_shape[ax] == new_shape[ax]:
                in_lo.append(o_lo)
                in_hi.append(o_hi)
            else:
                i0, i1, _ = linear_indices(new_shape[ax], in_shape[ax], o_lo, o_hi)
                in_lo.append(int(i0.min()))
                in_hi.append(int(i1.max()) + 1)
        window = mask[tuple(slice(a, b) for a, b in zip(in_lo, in_hi))].astype(np.float32)
        values = _linear_window(window, in_lo, new_shape, in_shape, out_lo, out_hi)
        sl = tuple(slice(a, b) for a, b in zip(out_lo, out_hi))
        fg_sum[sl] += values
        better = values > best[sl]
        best[sl][better] = values[better]
        result[sl][better] = label
    background = 1.0 - fg_sum
    result[best < background] = 0
    return result


# ------------------------------------------------------------------------------ images
def _bspline3_weights(t: np.ndarray) -> list[np.ndarray]:
    """Cubic B-spline weights of the 4 coefficients around a position with fractional part ``t``."""
    t2 = t * t
    t3 = t2 * t
    return [(1 - t) ** 3 / 6, (3 * t3 - 6 * t2 + 4) / 6, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6, t3 / 6]


def _spline_resize_axis(array: np.ndarray, axis: int, new_size: int, order: int) -> np.ndarray:
    """Resize one axis: order 3 (cubic B-spline, pre-filtered along that axis only), 1 or 0."""
    n_in = array.shape[axis]
    if order == 0:
        return np.take(array, nearest_indices(new_size, n_in), axis=axis)
    if order == 1:
        return _lerp_axis(array, axis, *linear_indices(new_size, n_in))
    if order != 3:
        raise ValueError(f"image resampling supports orders 0, 1 and 3, not {order}")
    coeffs = ndimage.spline_filter1d(array, order=3, axis=axis, output=np.float32, mode="nearest")
    pos = np.clip(_source_positions(new_size, n_in), 0, n_in - 1)
    base = np.floor(pos).astype(np.intp)
    shape = [1] * array.ndim
    shape[axis] = -1
    out = None
    for offset, weight in zip(range(-1, 3), _bspline3_weights((pos - base).astype(np.float32))):
        term = np.take(coeffs, np.clip(base + offset, 0, n_in - 1), axis=axis)
        term *= weight.reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


def _spline_resize(array: np.ndarray, new_shape: Sequence[int], order: int, skip_axis: int | None = None) -> np.ndarray:
    """Separable resize (exactly a tensor-product B-spline of that order); shrinking axes go first."""
    axes = [ax for ax in range(array.ndim) if ax != skip_axis and array.shape[ax] != new_shape[ax]]
    axes.sort(key=lambda ax: new_shape[ax] / array.shape[ax])
    out = np.asarray(array, dtype=np.float32)
    for ax in axes:
        out = _spline_resize_axis(out, ax, int(new_shape[ax]), order)
    return out


def resample_image(data: np.ndarray, new_shape: Sequence[int], separate: int | None = None, order: int = 3,
                   order_z: int = 0) -> np.ndarray:
    """Resample C x Z x Y x X float data to C x ``new_shape`` (order 3; the ``separate`` axis with ``order_z``)."""
    new_shape = [int(s) for s in new_shape]
    if list(data.shape[1:]) == new_shape:
        return np.asarray(data, dtype=np.float32)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        ch = np.asarray(data[c], dtype=np.float32)
        if separate is not None and ch.shape[separate] != new_shape[separate]:
            ch = _spline_resize_axis(ch, separate, new_shape[separate], order_z)
        out[c] = _spline_resize(ch, new_shape, order, skip_axis=separate)  # leaves ch as it was
        if order > 0:  # no spline overshoot beyond the input's range (as nnU-Net); on the separate-z
            # path nnU-Net resizes (and clips) each slice of the separate axis on its own
            others = None if separate is None else tuple(a for a in range(ch.ndim) if a != separate)
            np.clip(out[c], ch.min(axis=others, keepdims=True), ch.max(axis=others, keepdims=True), out=out[c])
    return out
