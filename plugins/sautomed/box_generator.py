"""Box Prompt Generator (paper Sec. 2.3, Eq. 4-5), in the style of DAB-DETR.

One query per foreground class. Its *anchor* (a ``cx, cy, w, h`` box) is the class's box in the
previous slice's prediction, or a learnable default anchor when there is no previous slice or the
class was absent there. The anchor is turned into a positional query (sine embedding + MLP, as in
DAB-DETR); a learnable *semantic token* per class is the query's content (``SeQ_anc``). A
transformer decoder (self-attention among the class queries, cross-attention to the image
embedding, FFN) refines the box layer by layer (``box = sigmoid(logit(anchor) + delta)``) and
its output query is the class's prompt embedding ``E_pmt``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .boxes import inverse_sigmoid
from .local3d import MultiHeadAttention


def sine_embedding(boxes: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of each coordinate of ``... x 4`` boxes into ``dim // 2`` features
    each (``... x 2 dim``), as DAB-DETR embeds its anchors."""
    half = dim // 4
    freqs = temperature ** (torch.arange(half, device=boxes.device, dtype=torch.float32) / half)
    x = boxes.unsqueeze(-1) * (2 * math.pi) / freqs  # ... x 4 x half
    emb = torch.cat([x.sin(), x.cos()], dim=-1)  # ... x 4 x dim/2
    return emb.flatten(-2)


class _Mlp(nn.Sequential):
    def __init__(self, dims: list[int]):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)


class GeneratorLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, dim))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, content, pos, keys, values):
        q = content + pos
        content = self.norm1(content + self.self_attn(q, q, content))
        content = self.norm2(content + self.cross_attn(content + pos, keys, values))
        return self.norm3(content + self.ffn(content))


class BoxPromptGenerator(nn.Module):
    """:param dim: embedding width (SAM's 256). :param num_foreground: classes without background."""

    def __init__(self, dim: int, num_foreground: int, num_layers: int = 3, num_heads: int = 8, ffn_dim: int = 1024):
        super().__init__()
        self.dim = dim
        self.num_foreground = num_foreground
        self.semantic_tokens = nn.Embedding(num_foreground, dim)
        # logits of the default anchors; zero = a centred box half the slice wide and high
        self.default_anchor_logits = nn.Parameter(torch.zeros(num_foreground, 4))
        self.anchor_head = _Mlp([2 * dim, dim, dim])
        self.layers = nn.ModuleList(GeneratorLayer(dim, num_heads, ffn_dim) for _ in range(num_layers))
        self.box_head = _Mlp([dim, dim, dim, 4])
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)

    def anchors(self, prev_boxes: torch.Tensor | None, prev_present: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``B x F x 4`` anchors (``cxcywh``): previous boxes where present, default anchors elsewhere."""
        default = self.default_anchor_logits.sigmoid().unsqueeze(0).expand(batch, -1, -1)
        if prev_boxes is None:
            return default
        return torch.where(prev_present.unsqueeze(-1), prev_boxes.to(default.dtype), default)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, anchors: torch.Tensor):
        """:param image_embedding: ``B x C x h x w``; :param image_pe: ``1 x C x h x w``;
        :param anchors: ``B x F x 4`` (``cxcywh``, normalised).
        :return: prompt embeddings ``B x F x C`` and the refined boxes of every layer
            (list of ``B x F x 4`` ``cxcywh``; the last one is the generator's box)."""
        b = image_embedding.shape[0]
        values = image_embedding.flatten(2).transpose(1, 2)
        keys = values + image_pe.flatten(2).transpose(1, 2)
        content = self.semantic_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        ref = anchors  # previous-slice boxes carry no gradient; the default anchors are learned through it
        boxes = []
        for layer in self.layers:
            pos = self.anchor_head(sine_embedding(ref, self.dim))
            content = layer(content, pos, keys, values)
            box = (inverse_sigmoid(ref) + self.box_head(content)).sigmoid()
            boxes.append(box)
            ref = box.detach()
        return content, boxes
