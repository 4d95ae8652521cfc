"""Box utilities of 3D-SAutoMed: boxes of label maps, format conversions and the GIoU.

Boxes are normalised to ``[0, 1]`` in the slice frame (x along the last axis, y along the one
before), so they do not change when a slice is resized to the SAM input size. ``cxcywh`` is the
anchor format of the Box Prompt Generator (DAB-DETR), ``xyxy`` the format of SAM's prompt encoder.
"""
from __future__ import annotations

import torch


def boxes_from_labels(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class bounding boxes of label maps.

    :param labels: ``B x H x W`` integer label map (0 = background).
    :param num_classes: number of classes including background.
    :return: ``boxes`` ``B x (num_classes - 1) x 4`` normalised ``xyxy`` (pixel edges, so a single
        pixel has a non-zero extent) and ``present`` ``B x (num_classes - 1)`` bool; boxes of absent
        classes are zero.
    """
    b, h, w = labels.shape
    classes = torch.arange(1, num_classes, device=labels.device).view(1, -1, 1, 1)
    onehot = labels.unsqueeze(1) == classes  # B x F x H x W
    rows = onehot.any(dim=3)  # B x F x H
    cols = onehot.any(dim=2)  # B x F x W
    present = rows.any(dim=2)
    ys = torch.arange(h, device=labels.device, dtype=torch.float32)
    xs = torch.arange(w, device=labels.device, dtype=torch.float32)
    big = float(max(h, w) + 1)
    y0 = torch.where(rows, ys, big).amin(dim=2)
    y1 = torch.where(rows, ys, -1.0).amax(dim=2) + 1
    x0 = torch.where(cols, xs, big).amin(dim=2)
    x1 = torch.where(cols, xs, -1.0).amax(dim=2) + 1
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=-1)
    boxes = torch.where(present.unsqueeze(-1), boxes, torch.zeros_like(boxes))
    return boxes, present


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise generalised IoU of two sets of ``xyxy`` boxes with the same shape ``... x 4``."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    lt_c = torch.minimum(a[..., :2], b[..., :2])
    rb_c = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / (hull + eps)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))
