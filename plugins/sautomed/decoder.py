"""SAM's two-way decoder extended with class mask tokens and historical information tokens (HIS).

Token layout of one decoder call: ``[class mask tokens (K classes incl. background),
history tokens (K_his), prompt tokens]``. The pretrained two-way transformer and output upscaling
of SAM's mask decoder are reused; every class gets its own mask token and hypernetwork MLP
(initialised from SAM's first mask token / MLP), so one call yields the logits of all classes
(softmax with background) instead of SAM's three ambiguous masks. The history tokens leave the
transformer updated with slice t's image features and pass the *information filter* (MLP +
LayerNorm) before they go to the next slice (paper Eq. 3).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class HistoryFilter(nn.Module):
    """The HIS information filter: ``LayerNorm(x + MLP(x))``."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(x))


class SAutoMedDecoder(nn.Module):
    """:param sam_mask_decoder: a pretrained ``segment_anything`` ``MaskDecoder`` whose transformer
    and upscaling are taken over. :param num_classes: including background.
    :param history_tokens: K of HIS (0 disables HIS)."""

    def __init__(self, sam_mask_decoder: nn.Module, num_classes: int, history_tokens: int = 8):
        super().__init__()
        dim = sam_mask_decoder.transformer_dim
        self.dim = dim
        self.num_classes = num_classes
        self.num_history = history_tokens
        self.transformer = sam_mask_decoder.transformer
        self.output_upscaling = sam_mask_decoder.output_upscaling
        base_token = sam_mask_decoder.mask_tokens.weight[0].detach()
        self.class_tokens = nn.Parameter(base_token.repeat(num_classes, 1) + 0.02 * torch.randn(num_classes, dim))
        base_mlp = sam_mask_decoder.output_hypernetworks_mlps[0]
        self.class_mlps = nn.ModuleList(copy.deepcopy(base_mlp) for _ in range(num_classes))
        if history_tokens > 0:
            self.history_init = nn.Parameter(0.02 * torch.randn(history_tokens, dim))
            self.history_filter = HistoryFilter(dim)

    def initial_history(self, batch: int) -> torch.Tensor | None:
        """History tokens of the first slice of a sequence (learned)."""
        if self.num_history == 0:
            return None
        return self.history_init.unsqueeze(0).expand(batch, -1, -1)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor | None,
                history: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:param image_embedding: ``B x C x h x w`` (3D-aware features plus the dense prompt).
        :param image_pe: ``1 x C x h x w``. :param prompt_tokens: ``B x P x C`` or ``None``.
        :param history: ``B x K_his x C`` or ``None`` (HIS ablated).
        :return: logits ``B x K x 4h x 4w`` and the filtered history tokens for the next slice."""
        b, c, h, w = image_embedding.shape
        parts = [self.class_tokens.unsqueeze(0).expand(b, -1, -1)]
        if self.num_history:
            if history is None:
                raise ValueError("the decoder was built with history tokens; pass the previous slice's")
            parts.append(history)
        if prompt_tokens is not None:
            parts.append(prompt_tokens)
        tokens = torch.cat(parts, dim=1)
        hs, src = self.transformer(image_embedding, image_pe, tokens)
        k = self.num_classes
        class_out = hs[:, :k]
        new_history = self.history_filter(hs[:, k:k + self.num_history]) if self.num_history else None
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(class_out[:, i]) for i, mlp in enumerate(self.class_mlps)], dim=1)
        _, cu, hu, wu = upscaled.shape
        logits = (hyper @ upscaled.flatten(2)).view(b, k, hu, wu)
        return logits, new_history
