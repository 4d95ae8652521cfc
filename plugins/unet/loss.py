"""Soft Dice + cross-entropy with deep supervision (nnU-Net's loss recipe, our implementation),
for classes (softmax) or regions (sigmoid per region), with an optional ignore label."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None = None, *,
              batch_dice: bool = False, smooth: float = 1e-5, distributed: bool = False) -> torch.Tensor:
    """``1 - mean Dice`` of probabilities against a one-hot (or region) target, both B x K x *S;
    ``mask`` (B x 1 x *S, True = counts) removes voxels from both, so they get no gradient.

    ``distributed`` (DDP, each rank holding part of the global batch): the batch Dice sums its
    counts over every rank's samples (an all-reduce that back-propagates), so that it is the Dice of
    the global batch, as nnU-Net computes it under DDP."""
    if mask is not None:
        probs, onehot = probs * mask, onehot * mask
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0, *axes)
    intersect = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    if batch_dice and distributed:
        from autosam.training.distributed import differentiable_all_reduce_sum

        intersect, denom = differentiable_all_reduce_sum(intersect), differentiable_all_reduce_sum(denom)
    dice = (2 * intersect + smooth) / (denom + smooth).clamp_min(1e-8)
    return 1 - dice.mean()


def _labels_and_mask(target: torch.Tensor, ignore_label: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Integer labels (ignored voxels set to background) and the mask of annotated voxels."""
    labels = target.long()
    if ignore_label is None:
        return labels, None
    mask = labels != ignore_label
    return torch.where(mask, labels, torch.zeros_like(labels)), mask


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, batch_dice: bool = False,
                   include_background: bool = False, smooth: float = 1e-5,
                   ignore_label: int | None = None, distributed: bool = False) -> torch.Tensor:
    """``1 - mean Dice`` of softmax(logits) (B x K x *S) against integer labels (B x 1 x *S).

    With ``batch_dice`` the true/false positives are summed over the whole batch (one Dice per
    class), otherwise per sample. Classes absent from both prediction and target score ~1 thanks
    to ``smooth``, as in nnU-Net. Voxels labelled ``ignore_label`` count nowhere.
    """
    probs = torch.softmax(logits.float(), 1)
    labels, mask = _labels_and_mask(target, ignore_label)
    onehot = torch.zeros_like(probs).scatter_(1, labels.clamp_min(0), 1.0)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    return soft_dice(probs, onehot, mask, batch_dice=batch_dice, smooth=smooth, distributed=distributed)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B x K x *S) over the voxels where ``mask`` (B x 1 x *S) is True (0 if none)."""
    if mask is None:
        return values.mean()
    mask = mask.expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1)


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * soft Dice`` on one output.

    Classes: softmax cross-entropy + soft Dice over the foreground classes. Regions (``regions``:
    one tuple of label values per output channel): binary cross-entropy + soft Dice of the sigmoid
    per region, the region target being "label in region" (nnU-Net's region-based training). With
    ``ignore_label``, voxels of that label are left out of both terms (no loss, no gradient).
    ``distributed``: under DDP the batch Dice is that of the global batch (:func:`soft_dice`).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, batch_dice: bool = False,
                 regions: list[tuple[int, ...]] | None = None, ignore_label: int | None = None,
                 distributed: bool = False):
        super().__init__()
        self.dice_weight, self.ce_weight, self.batch_dice = dice_weight, ce_weight, batch_dice
        self.distributed = distributed
        self.regions = [tuple(int(v) for v in r) for r in regions] if regions else None
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.regions is None:
            labels, mask = _labels_and_mask(target, self.ignore_label)
            ce = _masked_mean(F.cross_entropy(logits, labels[:, 0], reduction="none")[:, None], mask)
            dice = soft_dice_loss(logits, target, batch_dice=self.batch_dice, ignore_label=self.ignore_label,
                                  distributed=self.distributed)
        else:
            if logits.shape[1] != len(self.regions):
                raise ValueError(f"region-based loss: {logits.shape[1]} outputs for {len(self.regions)} regions")
            labels, mask = _labels_and_mask(target, self.ignore_label)
            regions = torch.cat([torch.isin(labels, torch.as_tensor(r, device=labels.device)) for r in self.regions], 1)
            regions = regions.float()
            ce = _masked_mean(F.binary_cross_entropy_with_logits(logits, regions, reduction="none"), mask)
            dice = soft_dice(torch.sigmoid(logits), regions, mask, batch_dice=self.batch_dice,
                             distributed=self.distributed)
        return self.ce_weight * ce + self.dice_weight * dice


class DeepSupervisionLoss(nn.Module):
    """Weighted sum over resolutions: weights 1, 1/2, 1/4, ..., the lowest resolution 0, normalised.

    Accepts a single tensor (no deep supervision) or lists of outputs and targets. ``distributed``
    (DDP): the output of weight 0 still enters the sum (times 0), so that its head's parameters
    get a (zero) gradient and DDP needs no search for unused parameters; nnU-Net gives it a weight
    of 1e-6 instead, this keeps the gradients those of a single process.
    """

    def __init__(self, loss: nn.Module, num_outputs: int, distributed: bool = False):
        super().__init__()
        self.loss = loss
        self.distributed = distributed
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
        return sum(w * self.loss(o, t) for w, o, t in zip(self.weights, outputs, targets) if w > 0 or self.distributed)
