"""MaskSAM's set loss (paper Sec. 2.7; weights from the official code, see METHODS.md):

``0.2 CE`` over all queries (no-object class weight 0.1) ``+ 1.2 BCE + 1.2 Dice`` on the matched
final masks ``+ 0.5 BCE + 0.5 Dice`` on the matched auxiliary masks ``+ 0.5 L1 + 0.2 GIoU`` on the
matched learned boxes. Mask losses are computed at the label resolution and averaged over the
matched segments of the batch; the CE is the class-weighted mean over every query of every slice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .matching import CostWeights, match_slice, slice_targets


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of ``1 - (2 |p t| + 1) / (|p| + |t| + 1)``; inputs (M, P)."""
    p = logits.sigmoid()
    return (1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)).mean()


class MaskSAMLoss(nn.Module):
    def __init__(self, num_classes: int, weights: CostWeights | None = None, no_object_weight: float = 0.1,
                 cost_size: int = 64):
        super().__init__()
        self.num_classes, self.w, self.cost_size = num_classes, weights or CostWeights(), cost_size
        cw = torch.ones(num_classes + 1)
        cw[-1] = no_object_weight
        self.register_buffer("class_weight", cw, persistent=False)

    def forward(self, out: dict, seg: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``out`` from :class:`MaskSAMNet`, ``seg``: B x 1 x T x H x W labels. Returns (loss, logs)."""
        cls = out["class_logits"]
        b, t, n, _ = cls.shape
        k = self.num_classes
        targets = slice_targets(seg, k)
        h, w = targets[0].masks.shape[-2:] if targets else seg.shape[-2:]
        flat = lambda v: None if v is None else v.reshape(b * t, *v.shape[2:])  # noqa: E731
        cls_f, masks_f, aux_f, boxes_f = flat(cls), flat(out["masks"]), flat(out.get("aux_masks")), flat(out.get("boxes"))
        tgt_classes = torch.full((b * t, n), k, dtype=torch.long, device=cls.device)
        q_idx, s_idx, tm, tb = [], [], [], []
        for i, tg in enumerate(targets):
            rows, cols = match_slice(cls_f[i], masks_f[i], None if aux_f is None else aux_f[i],
                                     None if boxes_f is None else boxes_f[i], tg, self.w, self.cost_size)
            if len(rows) == 0:
                continue
            rows_t = torch.as_tensor(rows, device=cls.device)
            cols_t = torch.as_tensor(cols, device=cls.device)
            tgt_classes[i, rows_t] = tg.labels[cols_t]
            q_idx.append(rows_t + i * n)
            tm.append(tg.masks[cols_t])
            tb.append(tg.boxes[cols_t])
        loss_ce = F.cross_entropy(cls_f.reshape(-1, k + 1).float(), tgt_classes.flatten(),
                                  weight=self.class_weight.to(cls.device))
        logs = {"ce": loss_ce.detach()}
        total = self.w.ce * loss_ce
        if q_idx:
            q = torch.cat(q_idx)
            tmask = torch.cat(tm).flatten(1)
            tbox = torch.cat(tb)

            def mask_terms(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                p = pred.reshape(b * t * n, *pred.shape[-2:])[q].float()
                if p.shape[-2:] != (h, w):
                    p = F.interpolate(p[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
                p = p.flatten(1)
                return F.binary_cross_entropy_with_logits(p, tmask), dice_loss(p, tmask)

            bce, dice = mask_terms(masks_f)
            total = total + self.w.bce * bce + self.w.dice * dice
            logs.update(bce=bce.detach(), dice=dice.detach())
            if aux_f is not None:
                abce, adice = mask_terms(aux_f)
                total = total + self.w.aux_bce * abce + self.w.aux_dice * adice
                logs.update(aux_bce=abce.detach(), aux_dice=adice.detach())
            if boxes_f is not None:
                pb = boxes_f.reshape(b * t * n, 4)[q].float()
                l1 = F.l1_loss(pb, tbox, reduction="none").sum(-1).mean()
                from torchvision.ops import generalized_box_iou_loss  # lazily: torchvision.ops imports torch._dynamo (~3 s)

                giou = generalized_box_iou_loss(pb, tbox, reduction="mean")
                total = total + self.w.l1 * l1 + self.w.giou * giou
                logs.update(l1=l1.detach(), giou=giou.detach())
        else:  # no segment on any slice of this batch: the mask, auxiliary and box heads stay in the graph
            # with a zero gradient (DDP without find_unused_parameters needs every parameter on every rank)
            for head in (masks_f, aux_f, boxes_f):
                if head is not None:
                    total = total + 0.0 * head.float().sum()
        logs["matched"] = float(sum(len(x) for x in q_idx))
        return total, logs
