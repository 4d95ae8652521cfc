"""MaskSAM's adapters (paper Fig. 4) and the Table 4 variants.

Every adapter works on tokens of a whole patch, shaped ``(B*T, ..., D)`` with the slices of one
patch consecutive, so that its middle layer can mix information along the depth axis ``T``:

- :class:`DConvAdapter` (image embeddings): Linear ``D -> D/4``, GELU, depth-wise 3x3x3
  ``Conv3d`` over ``(T, h, w)`` with a skip connection, Linear ``D/4 -> D``.
- :class:`DMLPAdapter` (prompt tokens): Linear ``D -> D/4``, GELU, an inverted-bottleneck MLP over
  the depth axis (``T -> 4T -> T``) with a skip connection, Linear ``D/4 -> D``.
- ``vanilla``: the Houlsby adapter (no depth layer); ``dmlp_after_up`` / ``dmlp_before_down``: the
  depth MLP placed after the up-projection (B6) or before the down-projection (B7).

``skip=True`` returns ``x + adapter(x)`` (the adapter "after attention"), ``skip=False`` returns
the adapter's output alone (the adapter "parallel to the MLP", scaled by the caller).
"""
from __future__ import annotations

import torch
from torch import nn

ADAPTER_KINDS = ("dconv", "dmlp", "vanilla", "dmlp_after_up", "dmlp_before_down")


class DepthMLP(nn.Module):
    """Inverted-bottleneck MLP over the depth axis with a skip: ``x + fc2(gelu(fc1(x)))`` along T."""

    def __init__(self, depth: int, ratio: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(depth, ratio * depth)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * depth, depth)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B*T, ..., C) -> same shape, mixed along T."""
        bt = x.shape[0]
        if bt % self.depth:
            raise ValueError(f"DepthMLP: leading dimension {bt} is not a multiple of the patch depth T={self.depth}")
        y = x.reshape(bt // self.depth, self.depth, -1).transpose(1, 2)  # B, rest, T
        y = y + self.fc2(self.act(self.fc1(y)))
        return y.transpose(1, 2).reshape(x.shape)


class DepthConv(nn.Module):
    """Depth-wise 3x3x3 convolution over (T, h, w) with a skip connection."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B*T, h, w, C) channels-last tokens -> same shape."""
        bt, h, w, c = x.shape
        if bt % self.depth:
            raise ValueError(f"DepthConv: leading dimension {bt} is not a multiple of the patch depth T={self.depth}")
        y = x.reshape(bt // self.depth, self.depth, h, w, c).permute(0, 4, 1, 2, 3)  # B, C, T, h, w
        y = y + self.conv(y)
        return y.permute(0, 2, 3, 4, 1).reshape(bt, h, w, c)


class Adapter(nn.Module):
    """A bottleneck adapter with an optional depth layer (see module docstring for ``kind``).

    Token layouts: ``dconv`` needs spatial tokens ``(B*T, h, w, D)``; the others accept any
    ``(B*T, ..., D)``. The up-projection is zero-initialised so that an untrained adapter leaves
    the pretrained SAM unchanged (see the plugin README, "Deviations").
    """

    def __init__(self, dim: int, depth: int, kind: str = "dmlp", skip: bool = True, ratio: float = 0.25,
                 zero_init: bool = True):
        super().__init__()
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown adapter kind {kind!r}; choose from {ADAPTER_KINDS}")
        hidden = max(1, int(dim * ratio))
        self.kind, self.skip, self.depth = kind, skip, depth
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        if kind == "dconv":
            self.mid = DepthConv(hidden, depth)
        elif kind == "dmlp":
            self.mid = DepthMLP(depth)
        elif kind in ("dmlp_after_up", "dmlp_before_down"):
            self.mid = DepthMLP(depth)
        else:
            self.mid = None
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    @property
    def mixes_depth(self) -> bool:
        return self.mid is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.kind == "dmlp_before_down":
            y = self.mid(y)
        y = self.act(self.down(y))
        if self.kind in ("dconv", "dmlp"):
            y = self.mid(y)
        y = self.up(y)
        if self.kind == "dmlp_after_up":
            y = self.mid(y)
        return x + y if self.skip else y


def image_adapter_kind(dconv: bool, prompt_kind: str) -> str:
    """Adapter of the image-embedding blocks: DConv (B9) or, without it, the prompt-side kind (B5-B8)."""
    return "dconv" if dconv else prompt_kind
