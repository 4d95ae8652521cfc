"""Per-slice targets and Hungarian matching (paper Sec. 2.2 "dataset mapping" and Sec. 2.7).

A label slice becomes a set of ``(class, binary mask, box)`` segments, one per foreground label
present. Predictions (N queries) and segments are matched one-to-one by
``scipy.optimize.linear_sum_assignment`` on a cost that combines the classification, the final
and the auxiliary masks and the boxes with the loss weights (as DETR/MaskFormer do).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autosam.utils.precision import no_autocast

from .prompt_generator import boxes_from_masks


@dataclass
class SliceTarget:
    labels: torch.Tensor  # (M,) class indices 0..K-1 (label value - 1)
    masks: torch.Tensor  # (M, H, W) float 0/1
    boxes: torch.Tensor  # (M, 4) normalised xyxy


def slice_targets(seg: torch.Tensor, num_classes: int) -> list[SliceTarget]:
    """``seg``: B x 1 x T x H x W (or B x T x H x W) integer labels -> B*T targets (slice order b, t).

    Values outside ``1..K`` (background, ignore labels) produce no segment.
    """
    if seg.dim() == 5:
        seg = seg[:, 0]
    b, t, h, w = seg.shape
    flat = seg.reshape(b * t, h, w).long()
    classes = torch.arange(1, num_classes + 1, device=seg.device)
    onehot = flat[:, None] == classes[None, :, None, None]  # (B*T, K, H, W)
    present = onehot.flatten(2).any(-1).cpu()  # (B*T, K); one host sync for all slices, not one per slice
    out = []
    for i in range(b * t):
        idx = present[i].nonzero().flatten().to(seg.device)
        masks = onehot[i, idx].float()
        boxes, _ = boxes_from_masks(masks)
        out.append(SliceTarget(idx, masks, boxes))
    return out


def hungarian(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one assignment of rows (queries) to columns (segments) minimising the cost."""
    from scipy.optimize import linear_sum_assignment  # lazily (training only): keeps plugin loading fast

    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return rows, cols


def pairwise_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction (N, P) against every target (M, P) -> (N, M)."""
    pos = F.softplus(-logits) @ targets.T
    neg = F.softplus(logits) @ (1 - targets).T
    return (pos + neg) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid()
    inter = p @ targets.T
    return 1 - (2 * inter + 1) / (p.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1)


@dataclass
class CostWeights:
    ce: float = 0.2
    bce: float = 1.2
    dice: float = 1.2
    aux_bce: float = 0.5
    aux_dice: float = 0.5
    l1: float = 0.5
    giou: float = 0.2


def _flat(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]
    return masks.flatten(1)


@torch.no_grad()
def match_slice(class_logits: torch.Tensor, masks: torch.Tensor, aux_masks: torch.Tensor | None,
                boxes: torch.Tensor | None, target: SliceTarget, w: CostWeights,
                cost_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Match the N predictions of one slice to its segments; returns (query indices, segment indices).

    The cost is computed in float32 outside autocast: its matrix products sum over up to
    ``cost_size**2`` pixels, which overflows fp16 (inf costs make the solver fail)."""
    m = len(target.labels)
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    with no_autocast(class_logits.device.type):
        return hungarian(match_cost(class_logits, masks, aux_masks, boxes, target, w, cost_size))


def match_cost(class_logits, masks, aux_masks, boxes, target: SliceTarget, w: CostWeights, cost_size: int = 64) -> torch.Tensor:
    """The (N queries x M segments) matching cost of :func:`match_slice` (float32; call it outside autocast)."""
    h, w_ = target.masks.shape[-2:]
    size = (min(h, cost_size), min(w_, cost_size))
    tgt = _flat(target.masks.float(), size)
    tgt = (tgt > 0.5).float() if size != (h, w_) else tgt
    cost = -w.ce * class_logits.float().softmax(-1)[:, target.labels]
    pm = _flat(masks.float(), size)
    cost = cost + w.bce * pairwise_bce(pm, tgt) + w.dice * pairwise_dice(pm, tgt)
    if aux_masks is not None:
        am = _flat(aux_masks.float(), size)
        cost = cost + w.aux_bce * pairwise_bce(am, tgt) + w.aux_dice * pairwise_dice(am, tgt)
    if boxes is not None:
        cost = cost + w.l1 * torch.cdist(boxes.float(), target.boxes.float(), p=1)
        from torchvision.ops import generalized_box_iou  # lazily: torchvision.ops imports torch._dynamo (~3 s)

        cost = cost - w.giou * generalized_box_iou(boxes.float(), target.boxes.float())
    return cost
