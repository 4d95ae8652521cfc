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


def resolve_window(window: tuple[float, float] | str | None, volume: np.ndarray) -> tuple[float, float] | None:
    """``"auto"`` -> :func:`auto_window` of ``volume``; ``(low, high)`` or ``None`` pass through."""
    if isinstance(window, str):
        if window != "auto":
            raise ValueError(f"window must be (low, high), 'auto' or None; got {window!r}")
        return auto_window(volume)
    return None if window is None else (float(window[0]), float(window[1]))


class SliceFrame:
    """How the slices of one volume are put into a 2D backbone's ``S x S`` input, and back.

    Each slice is windowed, resized so that its longer physical side is ``S`` (aspect ratio from
    the voxel spacing: ``h x w`` inside ``S x S``), zero-padded (as dark as its darkest pixel) to
    ``S x S``, and mapped with the backbone's own ``prepare_slices``. Box prompts are scaled by the
    same factors; decoder logits are cropped to ``h x w`` and resized back to the slice.
    Prediction (:func:`segment_volume_with_boxes`) and decoder fine-tuning (MedLSAM's
    ``--finetune-sam``) both go through this class, so a fine-tuned decoder sees what it will be
    used on.
    """

    def __init__(self, backbone, shape_yx: Sequence[int], spacing_yx: Sequence[float],
                 window: tuple[float, float] | None):
        self.backbone = backbone
        self.size = int(backbone.input_size)
        self.shape_yx = (int(shape_yx[0]), int(shape_yx[1]))
        self.h, self.w = _fit_geometry(self.shape_yx, (float(spacing_yx[0]), float(spacing_yx[1])), self.size)
        self.sy, self.sx = self.h / self.shape_yx[0], self.w / self.shape_yx[1]
        self.window = window

    def encode(self, slices: np.ndarray, batch_size: int = 8) -> torch.Tensor:
        """Image embeddings of ``slices`` (``B x Y x X`` intensities)."""
        x = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None].to(self.backbone.device)
        if self.window is not None:
            x = x.clamp(float(self.window[0]), float(self.window[1]))
        x = F.interpolate(x, size=(self.h, self.w), mode="bilinear", align_corners=False)
        pad_value = float(x.min())  # padding is as dark as the darkest pixel
        x = F.pad(x, (0, self.size - self.w, 0, self.size - self.h), value=pad_value)
        return self.backbone.encode(self.backbone.prepare_slices(x, window=None), batch_size=batch_size)

    def rects(self, boxes_yx: Sequence[Sequence[float]]) -> torch.Tensor:
        """``K x 4`` prompts (x0, y0, x1, y1 in input pixels) of in-plane boxes ``(y0, x0, y1, x1)``
        given as inclusive voxel indices of the slice."""
        return torch.tensor([[b[1] * self.sx, b[0] * self.sy, b[3] * self.sx, b[2] * self.sy] for b in boxes_yx],
                            dtype=torch.float32, device=self.backbone.device)

    def decode(self, embedding: torch.Tensor, rects: torch.Tensor, mask_decoder=None) -> torch.Tensor:
        """Logits ``K x Y x X`` of ``K`` box prompts on one slice's ``1 x C x ...`` embedding, on the
        slice's own grid. ``mask_decoder`` replaces the backbone's; gradients reach it when grad
        mode is on (the prompt encoder stays frozen)."""
        bb = self.backbone
        decoder = bb.mask_decoder if mask_decoder is None else mask_decoder
        with torch.no_grad():
            sparse, dense = bb.prompt_encoder(points=None, boxes=rects, masks=None)
            image_pe = bb.prompt_encoder.get_dense_pe()
        logits, _ = decoder(image_embeddings=embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense, multimask_output=False)
        logits = bb.upscale_logits(logits[:, :1])[..., :self.h, :self.w]
        return F.interpolate(logits, size=self.shape_yx, mode="bilinear", align_corners=False)[:, 0]


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
    mask_decoder=None,
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
    :param mask_decoder: a (fine-tuned) mask decoder used instead of the backbone's.
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
    window = resolve_window(window, volume)
    frame = SliceFrame(backbone, volume.shape[1:], spacing[1:], window)
    slices = sorted({z for b in checked.values() for z in range(b[0], b[3] + 1)})
    logger.info("box segmentation: %d labels, %d slices, window %s, %dx%d -> %dx%d in %d", len(labels),
                len(slices), window, *volume.shape[1:], frame.h, frame.w, frame.size)
    probs = {lab: np.zeros(volume.shape, dtype=np.float32) for lab in labels}
    for start in range(0, len(slices), batch_size):
        zs = slices[start:start + batch_size]
        emb = frame.encode(volume[zs], batch_size=batch_size)
        for i, z in enumerate(zs):
            labs = [lab for lab in labels if checked[lab][0] <= z <= checked[lab][3]]
            rects = frame.rects([checked[lab][1:3] + checked[lab][4:6] for lab in labs])
            p = torch.sigmoid(frame.decode(emb[i:i + 1], rects, mask_decoder)).float().cpu().numpy()
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
