"""Soft Dice + cross-entropy with deep supervision (nnU-Net's loss recipe, our implementation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, batch_dice: bool = False,
                   include_background: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """``1 - mean Dice`` of softmax(logits) (B x K x *S) against integer labels (B x 1 x *S).

    With ``batch_dice`` the true/false positives are summed over the whole batch (one Dice per
    class), otherwise per sample. Classes absent from both prediction and target score ~1 thanks
    to ``smooth``, as in nnU-Net.
    """
    probs = torch.softmax(logits.float(), 1)
    onehot = torch.zeros_like(probs).scatter_(1, target.long().clamp_min(0), 1.0)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0, *axes)
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + smooth) / (denom + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * soft Dice`` on one output."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False):
        super().__init__()
        self.dice_weight, self.ce_weight, self.batch_dice = dice_weight, ce_weight, batch_dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target[:, 0].long())
        dice = soft_dice_loss(logits, target, batch_dice=self.batch_dice)
        return self.ce_weight * ce + self.dice_weight * dice


class DeepSupervisionLoss(nn.Module):
    """Weighted sum over resolutions: weights 1, 1/2, 1/4, ..., the lowest resolution 0, normalised.

    Accepts a single tensor (no deep supervision) or lists of outputs and targets.
    """

    def __init__(self, loss: nn.Module, num_outputs: int):
        super().__init__()
        self.loss = loss
        w = [1 / 2**i for i in range(num_outputs)]
        if num_outputs > 1:
            w[-1] = 0.0
        total = sum(w)
        self.weights = [x / total for x in w]

    def forward(self, outputs, targets) -> torch.Tensor:
        if not isinstance(outputs, (list, tuple)):
            target = targets[0] if isinstance(targets, (list, tuple)) else targets
            return self.loss(outputs, target)
        if len(outputs) != len(targets):
            raise ValueError(f"deep supervision: {len(outputs)} outputs but {len(targets)} targets")
        return sum(w * self.loss(o, t) for w, o, t in zip(self.weights, outputs, targets) if w > 0)
