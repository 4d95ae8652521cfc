"""Iterative refinement with simulated clicks (training, and the label-reading evaluation mode)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .network import MSamNetwork, with_background


def sample_clicks(pred: torch.Tensor | None, target: torch.Tensor, generator: torch.Generator | None = None):
    """One click per sample. ``target``: B x S^3 integer labels; ``pred``: B x S^3 predicted labels
    or None (first iteration: the click is drawn from the foreground). Later clicks are drawn from
    the error region ``pred != target``; a click is positive (label 1) where the target is foreground,
    negative (0) where it is background. Returns (coords B x 1 x 3 in voxels (z, y, x), labels B x 1)
    and a B-vector telling which samples had a region to click in (others get a padding point, -1)."""
    b = target.shape[0]
    coords = torch.zeros(b, 1, 3, device=target.device)
    labels = torch.full((b, 1), -1, dtype=torch.long, device=target.device)
    for i in range(b):
        region = target[i] > 0 if pred is None else pred[i] != target[i]
        idx = region.nonzero()
        if len(idx) == 0:
            continue
        pick = idx[torch.randint(len(idx), (1,), generator=generator, device="cpu").item()]
        coords[i, 0] = pick.float()
        labels[i, 0] = 1 if target[i][tuple(pick)] > 0 else 0
    return coords, labels


def refine_with_clicks(net: MSamNetwork, x: torch.Tensor, target: torch.Tensor, iterations: int, use_clicks: bool = True,
                       generator: torch.Generator | None = None, record: list | None = None) -> list[torch.Tensor]:
    """Run ``iterations`` refinement steps from an all-zero mask, each with one new click (accumulated,
    as in SAM-Med3D) sampled from the previous prediction's error region; gradients flow through
    all iterations (no detach, as in the official code). Returns the full-resolution class logits
    (B x (K+1) x S^3) of every iteration. ``record`` receives (click coords, labels, previous prediction)."""
    emb = net.encode(x)
    low = net.initial_mask(x.shape[0], x.device)
    coords_all = labels_all = None
    pred = None
    outputs = []
    for _ in range(iterations):
        points = None
        if use_clicks:
            c, lab = sample_clicks(pred, target, generator)
            if record is not None:
                record.append((c.clone(), lab.clone(), None if pred is None else pred.clone()))
            # click coordinates are in patch voxels; the prompt encoder works in encoder-input voxels
            scale = net.backbone.input_size / torch.tensor(x.shape[2:], dtype=torch.float32, device=x.device)
            # SAM-Med3D's dense PE stacks the grid as (axis 1, axis 0, axis 2): match it
            c = (c * scale)[..., [1, 0, 2]]
            coords_all = c if coords_all is None else torch.cat([coords_all, c], 1)
            labels_all = lab if labels_all is None else torch.cat([labels_all, lab], 1)
            points = (coords_all, labels_all)
        low = net.step(emb, low, points)
        full = with_background(net.upsample(low, x.shape[2:]))
        outputs.append(full)
        pred = full.detach().max(1).indices  # (argmax over a strided dim is slow on the CPU)
    return outputs


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, w_dice: float = 0.5, w_ce: float = 0.5) -> torch.Tensor:
    """0.5 soft Dice (foreground classes) + 0.5 cross-entropy over [background 0, class logits]
    (for one class this CE is exactly the paper's BCE; the official code's one-channel CE is 0)."""
    ce = F.cross_entropy(logits, target.long())
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    dims = (0, *range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    dice = 1 - ((2 * inter + 1e-5) / (probs.sum(dims) + onehot.sum(dims) + 1e-5)).mean()
    return w_dice * dice + w_ce * ce
