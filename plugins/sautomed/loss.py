"""3D-SAutoMed's loss: cross-entropy + soft Dice on the class logits, plus L1 + GIoU on the Box
Prompt Generator's boxes against the ground-truth boxes of the classes present in the slice."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .boxes import boxes_from_labels, cxcywh_to_xyxy, generalized_iou, xyxy_to_cxcywh


def _labels(target: torch.Tensor) -> torch.Tensor:
    """``B x 1 x *spatial`` (or ``B x *spatial``) float/int -> ``B x *spatial`` long; labels below 0
    (regions nnU-Net marks as outside the image) count as background."""
    if target.dim() >= 3 and target.shape[1] == 1:
        target = target[:, 0]
    return target.long().clamp_min(0)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - mean foreground soft Dice``; sums over the batch and all positions per class
    (nnU-Net's batch Dice), so classes absent from one slice do not dominate."""
    k = logits.shape[1]
    probs = logits.softmax(1)
    onehot = F.one_hot(labels, k).movedim(-1, 1).to(probs.dtype)
    dims = [0] + list(range(2, logits.dim()))
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(1e-8)
    return 1 - dice[1:].mean()


class SAutoMedLoss:
    def __init__(self, num_classes: int, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 box_l1_weight: float = 1.0, box_giou_weight: float = 1.0):
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.box_l1_weight = box_l1_weight
        self.box_giou_weight = box_giou_weight

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CE + Dice of logits ``B x K x *spatial`` against ``target`` ``B x 1 x *spatial``."""
        return self.segmentation(logits, target)[0]

    def segmentation(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        labels = _labels(target)
        ce = F.cross_entropy(logits, labels)
        dice = soft_dice_loss(logits, labels)
        loss = self.ce_weight * ce + self.dice_weight * dice
        return loss, {"ce": ce.detach(), "dice_loss": dice.detach()}

    def boxes(self, layer_boxes: list[torch.Tensor], target_slice: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 + GIoU of every generator layer's boxes (``B x F x 4`` cxcywh) against the boxes of
        the classes present in ``target_slice`` (``B x H x W`` labels), averaged over layers."""
        gt_xyxy, present = boxes_from_labels(_labels(target_slice), self.num_classes)
        if not present.any():
            zero = layer_boxes[-1].sum() * 0
            return zero, {"box_l1": 0.0, "box_giou": 0.0}
        gt_cxcywh = xyxy_to_cxcywh(gt_xyxy)[present]
        l1 = giou = 0
        for boxes in layer_boxes:
            pred = boxes[present]
            l1 = l1 + F.l1_loss(pred, gt_cxcywh, reduction="none").sum(-1).mean()
            giou = giou + (1 - generalized_iou(cxcywh_to_xyxy(pred), gt_xyxy[present])).mean()
        l1, giou = l1 / len(layer_boxes), giou / len(layer_boxes)
        loss = self.box_l1_weight * l1 + self.box_giou_weight * giou
        return loss, {"box_l1": l1.detach(), "box_giou": giou.detach()}
