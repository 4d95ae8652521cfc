"""Box-prompted segmentation of a 3D volume with a 2D SAM backbone, slice by slice.

MedSAM-style usage (and MedLSAM's segmentation stage): every axial slice is windowed, resized so
its longer physical side is the backbone's input size (aspect ratio kept from the voxel spacing,
the rest zero-padded), encoded once, and decoded with a box prompt scaled the same way.

A 3D box is followed through its slices by :func:`autosam.sam.box_propagation.propagate_boxes`:
by default each slice is prompted with the box of the previous slice's mask (LiteMedSAM's way),
or (``mode="fixed"``) every slice with the box itself. Slices are encoded lazily, each at most
once, and labels are merged with one running maximum (memory of the volume's size, whatever the
number of boxes).

Boxes are ``(z0, y0, x0, z1, y1, x1)`` voxel indices in the array order of
:func:`autosam.io.image.read_image`, inclusive at both ends (the min and max of a label's voxels).
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autosam.sam.box_propagation import (DEFAULT_MAX_BOXES, PROPAGATION_MARGIN_PX, BoxPrompt, RunningMaximum,
                                          check_box_count, check_label_value, propagate_boxes)
from autosam.sam.intensity import CT_WINDOWS

logger = logging.getLogger(__name__)

Box3D = Sequence[int]

def check_box(box: Box3D, shape: Sequence[int], label: int | None = None) -> tuple[int, ...]:
    """Validate a ``(z0, y0, x0, z1, y1, x1)`` box of integers against a ``(Z, Y, X)`` shape; clip
    and round nothing (a non-integer coordinate is an error)."""
    what = f"box for label {label}" if label is not None else "box"
    if len(box) != 6:
        raise ValueError(f"{what}: expected 6 numbers z0 y0 x0 z1 y1 x1, got {list(box)}")
    b = []
    for v in box:
        if isinstance(v, (bool, np.bool_)) or not (isinstance(v, (int, np.integer)) or
                                                   (isinstance(v, (float, np.floating)) and float(v).is_integer())):
            raise ValueError(f"{what}: coordinates must be integers (voxel indices), got {list(box)}")
        b.append(int(v))
    for axis, name in enumerate("zyx"):
        lo, hi = b[axis], b[axis + 3]
        if not 0 <= lo <= hi < shape[axis]:
            raise ValueError(f"{what}: {name}0={lo}, {name}1={hi} must satisfy 0 <= {name}0 <= {name}1 < {shape[axis]} "
                             f"(image shape z,y,x = {tuple(shape)})")
    return tuple(b)


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

    def points(self, points_yx: Sequence[Sequence[float]], positive: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM point prompts (``1 x N x 2`` x, y in input pixels at voxel centres; ``1 x N`` labels 1/0)
        of clicks ``(y, x)`` on the slice."""
        xy = [[(p[1] + 0.5) * self.sx, (p[0] + 0.5) * self.sy] for p in points_yx]
        dev = self.backbone.device
        return (torch.tensor([xy], dtype=torch.float32, device=dev),
                torch.tensor([[1 if s else 0 for s in positive]], dtype=torch.int64, device=dev))

    def margin_voxels(self, margin_px: float = PROPAGATION_MARGIN_PX) -> tuple[float, float]:
        """``margin_px`` pixels of a 256-pixel input, scaled to this backbone's input, in slice voxels (y, x)."""
        px = float(margin_px) * self.size / 256.0
        return px / self.sy, px / self.sx

    def decode(self, embedding: torch.Tensor, rects: torch.Tensor | None, mask_decoder=None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``K x Y x X`` of ``K`` box prompts (``rects``; or one point prompt set) on one
        slice's ``1 x C x ...`` embedding, on the slice's own grid. ``mask_decoder`` replaces the
        backbone's; gradients reach it when grad mode is on (the prompt encoder stays frozen)."""
        bb = self.backbone
        decoder = bb.mask_decoder if mask_decoder is None else mask_decoder
        with torch.no_grad():
            sparse, dense = bb.prompt_encoder(points=points, boxes=rects, masks=None)
            image_pe = bb.prompt_encoder.get_dense_pe()
        logits, _ = decoder(image_embeddings=embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense, multimask_output=False)
        logits = bb.upscale_logits(logits[:, :1])[..., :self.h, :self.w]
        return F.interpolate(logits, size=self.shape_yx, mode="bilinear", align_corners=False)[:, 0]


def box_prompts(boxes: Mapping[int, Box3D | Sequence[Box3D]], shape: Sequence[int]) -> list[BoxPrompt]:
    """``label -> box`` or ``label -> list of boxes`` as :class:`BoxPrompt` s, checked against ``shape``."""
    out = []
    for lab in sorted(boxes, key=int):
        value = boxes[lab]
        lab = check_label_value(int(lab))
        many = len(value) > 0 and isinstance(value[0], (list, tuple, np.ndarray))
        out.extend(BoxPrompt.from_box3d(lab, check_box(b, shape, lab)) for b in (value if many else [value]))
    return out


def count_boxes(boxes: Mapping[int, Box3D | Sequence[Box3D]]) -> int:
    """Number of boxes in ``label -> box or list of boxes``."""
    return sum(len(v) if len(v) and isinstance(v[0], (list, tuple, np.ndarray)) else 1 for v in boxes.values())


@torch.no_grad()
def segment_volume_with_boxes(
    volume: np.ndarray,
    spacing: Sequence[float],
    boxes: Mapping[int, Box3D | Sequence[Box3D]],
    backbone,
    window: tuple[float, float] | str | None = "auto",
    threshold: float = 0.5,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    mask_decoder=None,
    mode: str = "propagate",
    max_boxes: int | None = DEFAULT_MAX_BOXES,
    decode_batch: int = 16,
    keep_probabilities: bool = True,
    stats: dict | None = None,
    prompts: Sequence[BoxPrompt] = (),
    embeddings: dict | None = None,
) -> tuple[np.ndarray, dict[int, dict[int, np.ndarray]] | None]:
    """Segment ``volume`` inside each box with a 2D SAM ``backbone``.

    :param volume: ``(Z, Y, X)`` intensities (HU for CT).
    :param spacing: ``(z, y, x)`` voxel size in mm (the in-plane aspect ratio is kept).
    :param boxes: label -> ``(z0, y0, x0, z1, y1, x1)`` or a list of them, inclusive voxel indices.
    :param backbone: a 2D :class:`~autosam.sam.backbone.SamBackbone` (e.g. ``build_backbone("litemedsam")``).
    :param window: ``(low, high)`` intensity window, ``"auto"`` (:func:`auto_window`) or ``None``
        (each slice's own range).
    :param threshold: probability above which a voxel is foreground (also where propagation stops).
    :param batch_size: slices encoded per encoder call.
    :param progress: called as ``progress(done, total)`` (prompt-slices).
    :param mask_decoder: a (fine-tuned) mask decoder used instead of the backbone's.
    :param mode: ``"propagate"`` or ``"fixed"`` (module docstring).
    :param max_boxes: refuse more box prompts than this (None: no limit).
    :param keep_probabilities: return per-label probabilities of the predicted slices.
    :param prompts: further :class:`BoxPrompt` s (e.g. challenge 2D boxes), beside ``boxes``.
    :param embeddings: slice embeddings kept across calls on the same volume, window and backbone
        (``z -> embedding``; see :func:`~autosam.sam.box_propagation.propagate_boxes`).
    :returns: ``(label_map, probabilities)``: an int16 ``(Z, Y, X)`` map and, per label, its
        probabilities on the slices its boxes predicted (``{z: Y x X float32}``; None unless
        ``keep_probabilities``).
    """
    if backbone.dims != 2:
        raise ValueError(f"box segmentation needs a 2D backbone, {backbone.name!r} is 3D")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (Z, Y, X), got shape {volume.shape}")
    if not boxes and not prompts:
        raise ValueError("no boxes given")
    check_box_count(count_boxes(boxes) + len(prompts), max_boxes)
    all_prompts = sorted(box_prompts(boxes, volume.shape) + list(prompts), key=lambda p: p.label)
    window = resolve_window(window, volume)
    frame = SliceFrame(backbone, volume.shape[1:], spacing[1:], window)
    logger.info("box segmentation (%s): %d prompts of %d labels, window %s, %dx%d -> %dx%d in %d", mode,
                len(all_prompts), len({p.label for p in all_prompts}), window, *volume.shape[1:], frame.h, frame.w,
                frame.size)
    merged = RunningMaximum(volume.shape, keep_probabilities)
    propagate_boxes(frame, volume, all_prompts, merged, mode=mode, threshold=threshold, batch_size=batch_size,
                    decode_batch=decode_batch, mask_decoder=mask_decoder, progress=progress, stats=stats,
                    embeddings=embeddings)
    return merged.label_map(threshold), merged.probabilities


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
