"""MaskSAM's prompt generator (paper Sec. 2.3, Fig. 3b and Fig. 5).

A UNETR-like decoder over the encoder's multi-level features: starting from the deepest level
(the image embedding), each stage is upsampled x2, concatenated with the next shallower level
(itself brought to that stride by transposed convolutions, as in UNETR) and convolved, until the
input resolution; a 1x1 convolution gives ``N`` auxiliary mask logits. The output of every stage
is average-pooled to 2x2 (box queries) and 1x1 (classifier queries); the pooled features of all
stages are concatenated and an MLP maps them to ``N`` boxes and ``N`` classifier tokens.

Prompt variants (Table 4): ``mask`` (B1: mask prompts, boxes computed from the masks), ``box``
(B2: learned boxes only), ``mask_box`` (B3: masks and learned boxes), ``mask_avg_box`` (B4, the
paper's choice: masks, and the average of the learned box and the box of ``aux mask > 0.5``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import Level, log2_int

PROMPT_MODES = ("mask_avg_box", "mask", "box", "mask_box")


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.01, inplace=True))


def up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2), conv_block(cout, cout))


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)


def boxes_from_masks(masks: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes ``(x0, y0, x1, y1)`` normalised to [0, 1] of ``masks > threshold``.

    ``masks``: (..., H, W) probabilities (or binary). Returns ``(boxes (..., 4), valid (...))``;
    an empty mask gives the whole image ``(0, 0, 1, 1)`` and ``valid = False``. Pixel ``x`` covers
    ``[x, x + 1)``, so a single pixel at column 3 of 8 gives ``x0 = 3/8, x1 = 4/8``.
    """
    h, w = masks.shape[-2:]
    fg = masks > threshold
    rows, cols = fg.any(-1), fg.any(-2)  # (..., H), (..., W)
    valid = rows.any(-1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(-1)
    y1 = torch.where(rows, ar_h, -1).amax(-1) + 1
    x0 = torch.where(cols, ar_w, w).amin(-1)
    x1 = torch.where(cols, ar_w, -1).amax(-1) + 1
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], -1).to(masks.dtype if masks.is_floating_point() else torch.float32)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device, dtype=boxes.dtype)
    return torch.where(valid[..., None], boxes, full), valid


def combine_boxes(learned: torch.Tensor | None, mask_probs: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Final box prompts (normalised xyxy) of a prompt mode (see module docstring)."""
    if mode == "box" or mode == "mask_box":
        return learned
    mboxes, valid = boxes_from_masks(mask_probs.detach())
    if mode == "mask":
        return mboxes
    # mask_avg_box: average where the auxiliary mask is non-empty, the learned box elsewhere
    return torch.where(valid[..., None], 0.5 * (learned + mboxes), learned)


class PromptGenerator(nn.Module):
    """Multi-level features -> ``aux_masks`` (B*T, N, S, S) logits, ``boxes`` (B*T, N, 4) learned
    normalised xyxy, ``tokens`` (B*T, N, token_dim) auxiliary classifier tokens."""

    def __init__(self, levels: list[Level], num_queries: int, token_dim: int = 256, width: int = 32,
                 mode: str = "mask_avg_box"):
        super().__init__()
        if mode not in PROMPT_MODES:
            raise ValueError(f"unknown prompt generator mode {mode!r}; choose from {PROMPT_MODES}")
        self.mode, self.num_queries, self.token_dim = mode, num_queries, token_dim
        deep = levels[::-1]  # deepest (image embedding) first
        s0 = deep[0].stride
        self.proj = nn.ModuleList()
        for j, lv in enumerate(deep):
            target = max(1, s0 // (2 ** j))
            n_up = log2_int(lv.stride) - log2_int(target) if lv.stride > target else 0
            mods: list[nn.Module] = [conv_block(lv.channels, width)]
            mods += [up_block(width, width) for _ in range(n_up)]
            self.proj.append(nn.Sequential(*mods))
        self.fuse = nn.ModuleList(conv_block(2 * width, width) for _ in deep[1:])
        self.up = nn.ModuleList(nn.ConvTranspose2d(width, width, 2, stride=2) for _ in deep[1:])
        last = max(1, s0 // (2 ** (len(deep) - 1)))
        self.tail = nn.ModuleList(up_block(width, width) for _ in range(log2_int(last)))
        n_stages = len(deep) + len(self.tail)
        self.mask_head = nn.Conv2d(width, num_queries, 1) if mode != "box" else None
        pooled = width * n_stages
        self.box_head = (nn.Sequential(nn.Linear(pooled, 256), nn.GELU(), nn.Linear(256, num_queries))
                         if mode != "mask" else None)
        self.token_head = nn.Sequential(nn.Linear(pooled, 256), nn.GELU(), nn.Linear(256, num_queries * token_dim))

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor | None]:
        feats = feats[::-1]
        y = self.proj[0](feats[0])
        stages = [y]
        for j in range(1, len(feats)):
            skip = self.proj[j](feats[j])
            y = self.up[j - 1](y)
            if y.shape[-2:] != skip.shape[-2:]:
                y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse[j - 1](torch.cat([y, skip], 1))
            stages.append(y)
        for blk in self.tail:
            y = blk(y)
            stages.append(y)
        n = y.shape[0]
        out: dict[str, torch.Tensor | None] = {"aux_masks": None, "learned_boxes": None}
        if self.mask_head is not None:
            out["aux_masks"] = self.mask_head(y)
        if self.box_head is not None:
            q = torch.cat([F.adaptive_avg_pool2d(s, 2).flatten(2) for s in stages], 1)  # (n, C_all, 4)
            raw = self.box_head(q.transpose(1, 2)).transpose(1, 2)  # channel MLP -> (n, N, 4)
            out["learned_boxes"] = cxcywh_to_xyxy(raw.sigmoid())
        c = torch.cat([F.adaptive_avg_pool2d(s, 1).flatten(1) for s in stages], 1)  # (n, C_all)
        out["tokens"] = self.token_head(c).view(n, self.num_queries, self.token_dim)
        probs = out["aux_masks"].sigmoid() if out["aux_masks"] is not None else None
        out["boxes"] = combine_boxes(out["learned_boxes"], probs, self.mode)
        return out
