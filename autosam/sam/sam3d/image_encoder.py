"""3D ViT image encoder of SAM-Med3D.

Conv3d patch embedding (patch ``p``) -> absolute position embedding ``1 x g x g x g x C``
(``g = S/p``) -> blocks (pre-norm attention with 3D decomposed relative positions, windowed
except the global blocks; MLP) -> neck (1^3 conv, LayerNorm3d, 3^3 conv, LayerNorm3d) to
``out_chans``. Windowed blocks pad the token grid to a multiple of the window and attend over the
padded window, as SAM-Med3D does (its window 14 exceeds the 8^3 grid of a 128^3 input).

Relative positions, ``rel_pos_mode``:

* ``"decomposed"``: ``bias(i, j) = q_i . (R_d[d_i - d_j] + R_h[h_i - h_j] + R_w[w_i - w_j])``.
* ``"sam_med3d"``: what SAM-Med3D's code computes, which its pretrained weights were trained
  with: the depth term as above, but its broadcasting pairs the height term's query-width index
  with the key depth and its key-height index with the key width, and the width term's
  query-width index with the key height. Only defined for cubic grids. Use it to load
  ``sam_med3d*.pth``; models trained here from scratch use ``"decomposed"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.image_encoder import get_rel_pos
from torch import nn

from autosam.sam.sam3d.prompt_encoder import LayerNorm3d


class Attention3D(nn.Module):
    """Multi-head self-attention over a ``B x D x H x W x C`` grid with a fused ``qkv`` Linear."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = True,
                 input_size: tuple[int, int, int] | None = None, rel_pos_mode: str = "decomposed") -> None:
        super().__init__()
        if rel_pos_mode not in ("decomposed", "sam_med3d"):
            raise ValueError(f"unknown rel_pos_mode {rel_pos_mode!r}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.rel_pos_mode = rel_pos_mode
        self.use_sdpa = True
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is needed for relative positions")
            self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[2] - 1, head_dim))

    def rel_pos_bias(self, q: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """Additive bias ``B x heads x N x N`` from unscaled ``q`` (``B x heads x N x hd``)."""
        d, h, w = size
        rd, rh, rw = (get_rel_pos(n, n, t).to(q.dtype) for n, t in
                      ((d, self.rel_pos_d), (h, self.rel_pos_h), (w, self.rel_pos_w)))
        r_q = q.reshape(*q.shape[:2], d, h, w, q.shape[-1])
        rel_d = torch.einsum("bndhwc,dkc->bndhwk", r_q, rd)
        rel_h = torch.einsum("bndhwc,hkc->bndhwk", r_q, rh)
        rel_w = torch.einsum("bndhwc,wkc->bndhwk", r_q, rw)
        # target layout: b n qd qh qw kd kh kw
        term_d = rel_d[..., :, None, None]
        if self.rel_pos_mode == "decomposed":
            term_h = rel_h[..., None, :, None]
            term_w = rel_w[..., None, None, :]
        else:  # SAM-Med3D's broadcasting (see module docstring); needs d == h == w
            if not d == h == w:
                raise ValueError(f"rel_pos_mode 'sam_med3d' needs a cubic token grid, got {size}")
            term_h = rel_h.unsqueeze(-3).unsqueeze(-2)  # b n qd qh 1 qw 1 kh
            term_w = rel_w.unsqueeze(-3).unsqueeze(-3)  # b n qd qh 1 1 qw kw
        bias = term_d + term_h + term_w
        n = d * h * w
        return bias.reshape(*q.shape[:2], n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, d * h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B x heads x N x hd
        bias = self.rel_pos_bias(q, (d, h, w)) if self.use_rel_pos else None
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            out = attn.softmax(dim=-1) @ v
        out = out.view(b, self.num_heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, -1)
        return self.proj(out)


def window_partition3d(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``B x D x H x W x C`` -> ``(B * nwin) x ws x ws x ws x C`` with zero padding."""
    b, d, h, w, c = x.shape
    pd, ph, pw = ((ws - s % ws) % ws for s in (d, h, w))
    if pd or ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph, 0, pd))
    dp, hp, wp = d + pd, h + ph, w + pw
    x = x.view(b, dp // ws, ws, hp // ws, ws, wp // ws, ws, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws, ws, ws, c), (dp, hp, wp)


def window_unpartition3d(win: torch.Tensor, ws: int, padded: tuple[int, int, int],
                         size: tuple[int, int, int]) -> torch.Tensor:
    dp, hp, wp = padded
    b = win.shape[0] // ((dp // ws) * (hp // ws) * (wp // ws))
    x = win.view(b, dp // ws, hp // ws, wp // ws, ws, ws, ws, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, dp, hp, wp, -1)
    d, h, w = size
    return x[:, :d, :h, :w].contiguous()


class Block3D(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, window_size: int = 0,
                 input_size: tuple[int, int, int] = (8, 8, 8), rel_pos_mode: str = "decomposed") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        rel_size = input_size if window_size == 0 else (window_size,) * 3
        self.attn = Attention3D(dim, num_heads, input_size=rel_size, rel_pos_mode=rel_pos_mode)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = tuple(x.shape[1:4])
            x, padded = window_partition3d(x, self.window_size)
            x = window_unpartition3d(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)  # B x D x H x W x C


class ImageEncoderViT3D(nn.Module):
    """``B x in_chans x S x S x S`` -> ``B x out_chans x S/p x S/p x S/p``."""

    def __init__(self, img_size: int = 128, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 384,
                 window_size: int = 14, global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11),
                 rel_pos_mode: str = "decomposed") -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"3D input size {img_size} must be a multiple of the patch size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        g = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio, window_size=0 if i in global_attn_indexes else window_size,
                    input_size=(g, g, g), rel_pos_mode=rel_pos_mode)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if x.shape[1:4] != self.pos_embed.shape[1:4]:
            raise ValueError(f"3D encoder built for {self.img_size}^3 input got {tuple(x.shape[1:4])} patches; "
                             "build the backbone with this input_size")
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
