"""Local 3D awareness: Inter- and Intra-slice Attention (paper Eq. 1-2).

``z1 = InterSA([f(t-1), f(t), f(t+1)])[t] + f(t)``: at every embedding location (h, w) the three
tokens of slices t-1, t, t+1 attend to each other; the output at slice t is added to f(t).
``z2 = IntraSA(z1) + z1``: all tokens of slice t attend to each other.
``z = MLP(z2) + z2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Multi-head attention on ``B x N x C`` tokens using PyTorch's fused attention kernel
    (memory-efficient on CPU and GPU, which matters for 64 x 64 = 4096 intra-slice tokens)."""

    def __init__(self, dim: int, num_heads: int, internal_dim: int | None = None):
        super().__init__()
        internal_dim = internal_dim or dim
        if internal_dim % num_heads:
            raise ValueError(f"attention: {num_heads} heads do not divide the width {internal_dim}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, internal_dim)
        self.k_proj = nn.Linear(dim, internal_dim)
        self.v_proj = nn.Linear(dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)))
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class LocalAwareness3D(nn.Module):
    """Inter-slice MHSA, intra-slice MHSA and an MLP, each with a residual connection.

    Pre-norm LayerNorms stabilise the new residual branches (the paper's equations leave norms out).
    A learnable slice-position embedding (previous / current / next) is added to the queries and
    keys of the inter-slice attention so that it can tell the three slices apart.

    :param use_inter: ablation switch of the inter-slice attention (``False``: slice t alone).
    :param use_intra: ablation switch of the intra-slice attention.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 2.0, use_inter: bool = True,
                 use_intra: bool = True):
        super().__init__()
        self.use_inter = use_inter
        self.use_intra = use_intra
        if use_inter:
            self.norm_inter = nn.LayerNorm(dim)
            self.slice_pos = nn.Parameter(torch.zeros(3, dim))
            nn.init.trunc_normal_(self.slice_pos, std=0.02)
            self.inter_attn = MultiHeadAttention(dim, num_heads)
        if use_intra:
            self.norm_intra = nn.LayerNorm(dim)
            self.intra_attn = MultiHeadAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, f_prev: torch.Tensor | None, f_cur: torch.Tensor, f_next: torch.Tensor | None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """:param f_prev, f_cur, f_next: ``B x C x h x w`` encoder features of slices t-1, t, t+1
        (the neighbours may be ``None`` when the inter-slice attention is ablated).
        :param pos: optional ``1 x C x h x w`` positional encoding for the intra-slice attention.
        :return: ``B x C x h x w`` 3D-aware features of slice t."""
        b, c, h, w = f_cur.shape
        cur = f_cur.flatten(2).transpose(1, 2)  # B x hw x C
        z = cur
        if self.use_inter:
            if f_prev is None or f_next is None:
                raise ValueError("inter-slice attention needs the features of slices t-1 and t+1")
            trio = torch.stack([f_prev, f_cur, f_next], dim=1)  # B x 3 x C x h x w
            trio = trio.permute(0, 3, 4, 1, 2).reshape(b * h * w, 3, c)  # one 3-token sequence per location
            x = self.norm_inter(trio)
            qk = x + self.slice_pos
            attn = self.inter_attn(qk[:, 1:2], qk, x)  # only slice t's output is used (Eq. 1)
            z = z + attn.view(b, h * w, c)
        if self.use_intra:
            x = self.norm_intra(z)
            qk = x if pos is None else x + pos.flatten(2).transpose(1, 2)
            z = z + self.intra_attn(qk, qk, x)
        z = z + self.mlp(self.norm_mlp(z))
        return z.transpose(1, 2).reshape(b, c, h, w)
