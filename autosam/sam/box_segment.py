"""Zero-shot box-prompted segmentation of a 3D volume with a 2D SAM backbone, slice by slice.

MedSAM-style usage (and MedLSAM's segmentation stage): every axial slice inside a 3D box is
windowed, resized so its longer physical side is the backbone's input size (aspect ratio kept
from the voxel spacing, the rest zero-padded), encoded once, and decoded with the box's in-plane
rectangle scaled the same way. Several boxes (one per label) share the slice encodings; the
per-label probability maps are merged into a label map by taking, per voxel, the label of highest
probability when it exceeds ``threshold``.

Boxes are ``(z0, y0, x0, z1, y1, x1)`` voxel indices in the array order of
:func:`autosam.io.image.read_image`, inclusive at both ends (the min and max of a label's voxels).
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autosam.sam.intensity import CT_WINDOWS

logger = logging.getLogger(__name__)

Box3D = Sequence[int]


def check_box(box: Box3D, shape: Sequence[int], label: int | None = None) -> tuple[int, ...]:
    """Validate a ``(z0, y0, x0, z1, y1, x1)`` box against a ``(Z, Y, X)`` shape; clip nothing."""
    what = f"box for label {label}" if label is not None else "box"
    if len(box) != 6:
        raise ValueError(f"{what}: expected 6 numbers z0 y0 x0 z1 y1 x1, got {list(box)}")
    b = tuple(int(round(float(v))) for v in box)
    for axis, name in enumerate("zyx"):
        lo, hi = b[axis], b[axis + 3]
        if not 0 <= lo <= hi < shape[axis]:
            raise ValueError(f"{what}: {name}0={lo}, {name}1={hi} must satisfy 0 <= {name}0 <= {name}1 < {shape[axis]} "
                             f"(image shape z,y,x = {tuple(shape)})")
    return b


def auto_window(volume: np.ndarray) -> tuple[float, float]:
    """CT in HU (minimum below -500): MedSAM's soft-tissue window W400/L40; otherwise the
    0.5-99.5 percentiles of the volume."""
    if float(volume.min()) < -500.0:
        return CT_WINDOWS["abdomen"]
    lo, hi = np.percentile(volume, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-3))


def _fit_geometry(shape_yx: tuple[int, int], spacing_yx: tuple[float, float], size: int) -> tuple[int, int]:
    """In-plane size (h, w) inside ``size x size`` keeping the physical aspect ratio."""
    phys_y, phys_x = shape_yx[0] * spacing_yx[0], shape_yx[1] * spacing_yx[1]
    scale = size / max(phys_y, phys_x)
    h = int(min(size, max(1, round(phys_y * scale))))
    w = int(min(size, max(1, round(phys_x * scale))))
    return h, w


@torch.no_grad()
def segment_volume_with_boxes(
    volume: np.ndarray,
    spacing: Sequence[float],
    boxes: Mapping[int, Box3D],
    backbone,
    window: tuple[float, float] | str | None = "auto",
    threshold: float = 0.5,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Segment ``volume`` inside each box with a 2D SAM ``backbone``.

    :param volume: ``(Z, Y, X)`` intensities (HU for CT).
    :param spacing: ``(z, y, x)`` voxel size in mm (the in-plane aspect ratio is kept).
    :param boxes: label -> ``(z0, y0, x0, z1, y1, x1)``, inclusive voxel indices.
    :param backbone: a 2D :class:`~autosam.sam.backbone.SamBackbone` (e.g. ``build_backbone("litemedsam")``).
    :param window: ``(low, high)`` intensity window, ``"auto"`` (:func:`auto_window`) or ``None``
        (each slice's own range).
    :param threshold: probability above which a voxel is foreground.
    :param batch_size: slices encoded per encoder call.
    :param progress: called as ``progress(done, total)`` after each encoded batch.
    :returns: ``(label_map, probabilities)``: an int16 ``(Z, Y, X)`` map and, per label, a float32
        ``(Z, Y, X)`` probability map (zero outside the box's slices).
    """
    if backbone.dims != 2:
        raise ValueError(f"box segmentation needs a 2D backbone, {backbone.name!r} is 3D")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (Z, Y, X), got shape {volume.shape}")
    if not boxes:
        raise ValueError("no boxes given")
    labels = sorted(int(k) for k in boxes)
    if any(lab <= 0 for lab in labels):
        raise ValueError(f"labels must be positive integers, got {labels}")
    checked = {lab: check_box(boxes[lab], volume.shape, lab) for lab in labels}
    if isinstance(window, str):
        if window != "auto":
            raise ValueError(f"window must be (low, high), 'auto' or None; got {window!r}")
        window = auto_window(volume)
    z_dim, y_dim, x_dim = volume.shape
    size = backbone.input_size
    h, w = _fit_geometry((y_dim, x_dim), (float(spacing[1]), float(spacing[2])), size)
    sy, sx = h / y_dim, w / x_dim
    device = backbone.device
    slices = sorted({z for b in checked.values() for z in range(b[0], b[3] + 1)})
    logger.info("box segmentation: %d labels, %d slices, window %s, %dx%d -> %dx%d in %d", len(labels),
                len(slices), window, y_dim, x_dim, h, w, size)
    probs = {lab: np.zeros(volume.shape, dtype=np.float32) for lab in labels}
    for start in range(0, len(slices), batch_size):
        zs = slices[start:start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(volume[zs], dtype=np.float32))[:, None].to(device)
        if window is not None:
            x = x.clamp(float(window[0]), float(window[1]))
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        pad_value = float(x.min())  # padding is as dark as the darkest pixel
        x = F.pad(x, (0, size - w, 0, size - h), value=pad_value)
        emb = backbone.encode(backbone.prepare_slices(x, window=None), batch_size=batch_size)
        for i, z in enumerate(zs):
            labs = [lab for lab in labels if checked[lab][0] <= z <= checked[lab][3]]
            rects = torch.tensor([[checked[lab][2] * sx, checked[lab][1] * sy, checked[lab][5] * sx,
                                   checked[lab][4] * sy] for lab in labs], dtype=torch.float32, device=device)
            logits, _ = backbone.decode_image(emb[i:i + 1], boxes=rects)
            logits = backbone.upscale_logits(logits)[..., :h, :w]
            logits = F.interpolate(logits, size=(y_dim, x_dim), mode="bilinear", align_corners=False)
            p = torch.sigmoid(logits[:, 0]).float().cpu().numpy()
            for j, lab in enumerate(labs):
                probs[lab][z] = p[j]
        if progress is not None:
            progress(min(start + batch_size, len(slices)), len(slices))
    return merge_probabilities(probs, threshold), probs


def merge_probabilities(probs: Mapping[int, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Label map from per-label probabilities: the most probable label where it exceeds ``threshold``."""
    labels = sorted(probs)
    stack = np.stack([probs[lab] for lab in labels])
    best = stack.argmax(0)
    out = np.asarray(labels, dtype=np.int16)[best]
    out[stack.max(0) <= threshold] = 0
    return out.astype(np.int16)


def boxes_from_label_map(seg: np.ndarray, labels: Sequence[int] | None = None, margin: int = 0) -> dict[int, tuple[int, ...]]:
    """The tight ``(z0, y0, x0, z1, y1, x1)`` box of each label present in ``seg`` (plus ``margin``
    voxels in-plane, clipped to the image)."""
    labels = [int(v) for v in np.unique(seg) if v > 0] if labels is None else [int(v) for v in labels]
    out = {}
    for lab in labels:
        idx = np.argwhere(seg == lab)
        if idx.size == 0:
            raise ValueError(f"label {lab} is not present in the label map")
        lo, hi = idx.min(0), idx.max(0)
        lo[1:] = np.maximum(lo[1:] - margin, 0)
        hi[1:] = np.minimum(hi[1:] + margin, np.asarray(seg.shape[1:]) - 1)
        out[lab] = (*map(int, lo), *map(int, hi))
    return out
