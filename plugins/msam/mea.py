"""Mask-Enhanced Adapter (M-SAM, Sec. 2.2): MFEB with mutual residuals, add & norm, MHSA on the
fused embeddings, add & norm, MLP. Works on flattened 3D embeddings (B x N x D)."""
from __future__ import annotations

import torch
from torch import nn


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class MFEB(nn.Module):
    """Mutual Feature Enhancement Block: two parallel transformer blocks (image, mask) whose
    residual connections are swapped ("mutual"): each branch's attention and MLP outputs are added
    to the *other* branch's stream."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm_i1, self.norm_m1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn_i = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_m = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_i2, self.norm_m2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp_i, self.mlp_m = _Mlp(dim, hidden), _Mlp(dim, hidden)

    def forward(self, e_i: torch.Tensor, e_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.norm_i1(e_i)
        b = self.norm_m1(e_m)
        x_i = e_m + self.attn_i(a, a, a, need_weights=False)[0]  # mutual residual
        x_m = e_i + self.attn_m(b, b, b, need_weights=False)[0]
        y_i = x_m + self.mlp_i(self.norm_i2(x_i))  # mutual residual again
        y_m = x_i + self.mlp_m(self.norm_m2(x_m))
        return y_i, y_m


class MaskEnhancedAdapter(nn.Module):
    """``E_I, E_M -> Ê_I``: MFEB, ``E'' = LN(E + E')`` per stream, ``Ē = MHSA(E''_I + E''_M)``,
    ``Ê = LN(E''_I + Ē)``, then ``Ê + MLP(Ê)`` (official recipe: 1 MFEB, 6 heads, MLP D -> 4D -> D)."""

    def __init__(self, dim: int, heads: int | None = 6, mlp_ratio: float = 4.0, num_mfeb: int = 1, zero_init: bool = True):
        super().__init__()
        if heads is None:  # the official recipe's 64-d heads (6 at 384-d)
            heads = max(1, dim // 64)
        if dim % heads:
            heads = next(h for h in range(heads, 0, -1) if dim % h == 0)
        self.mfeb = nn.ModuleList(MFEB(dim, heads, mlp_ratio) for _ in range(num_mfeb))
        self.norm_i, self.norm_m = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fuse = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_f = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        if zero_init:
            self.zero_init_outputs()

    def zero_init_outputs(self) -> None:
        """[ours] Zero the output projections of every attention and MLP: the mutual residuals then
        swap the streams twice (identity), the fusion adds nothing, and the adapter starts as
        ``LN(E_I)``, i.e. the (already layer-normed) image embedding; the mask path is learnt from
        there instead of starting as noise added to the image stream."""
        outs = [self.fuse.out_proj, self.mlp[2]]
        for block in self.mfeb:
            outs += [block.attn_i.out_proj, block.attn_m.out_proj, block.mlp_i[2], block.mlp_m[2]]
        for lin in outs:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, image_embedding: torch.Tensor, mask_embedding: torch.Tensor) -> torch.Tensor:
        """Both ``B x D x d x h x w``; returns the updated image embedding of the same shape."""
        shape = image_embedding.shape
        e_i = image_embedding.flatten(2).transpose(1, 2)
        e_m = mask_embedding.flatten(2).transpose(1, 2)
        a, b = e_i, e_m
        for block in self.mfeb:
            a, b = block(a, b)
        e_i2 = self.norm_i(e_i + a)
        e_m2 = self.norm_m(e_m + b)
        fused = e_i2 + e_m2
        e_bar = self.fuse(fused, fused, fused, need_weights=False)[0]
        e_hat = self.norm_f(e_i2 + e_bar)
        out = e_hat + self.mlp(e_hat)
        return out.transpose(1, 2).reshape(shape)
