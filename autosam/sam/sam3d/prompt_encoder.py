"""3D prompt encoder of SAM-Med3D: point prompts (positive/negative) embedded with a random
Fourier position encoding, and a mask prompt (``B x 1 x 4g x 4g x 4g`` low-res logits) embedded
by two stride-2 convolutions; no box prompts (SAM-Med3D has none).

The position encoding uses ``embed_dim // 3`` random frequencies and returns
``[sin, cos, sin]`` of the projected coordinates (so ``embed_dim`` must be divisible by 3, e.g.
384). Points are given as ``(B x N x 3)`` voxel coordinates of the encoder input in the order of
the volume's array axes (SAM-Med3D's clicks are array indices); coordinate ``i`` is divided by
``input_image_size[i]``. The dense grid encoding follows SAM-Med3D's axis pairing (feature 0 <->
grid axis 1, feature 1 <-> grid axis 0, feature 2 <-> grid axis 2), which its weights expect.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from autosam.utils.precision import channel_layer_norm


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of ``B x C x D x H x W`` (eps 1e-6), in float32 under autocast."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.weight, self.bias, self.eps)


class PositionEmbeddingRandom3D(nn.Module):
    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((3, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)

    def forward(self, size: tuple[int, int, int]) -> torch.Tensor:
        """``C x a0 x a1 x a2`` encoding of the grid of ``size``."""
        dev = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=dev, dtype=torch.float32) + 0.5) / n for n in size]
        g0, g1, g2 = torch.meshgrid(*axes, indexing="ij")
        pe = self._pe_encoding(torch.stack([g1, g0, g2], dim=-1))
        return pe.permute(3, 0, 1, 2)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:
        scale = torch.tensor(image_size, device=coords.device, dtype=torch.float32)
        return self._pe_encoding(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int, int],
                 input_image_size: tuple[int, int, int], mask_in_chans: int = 16) -> None:
        super().__init__()
        if embed_dim % 3:
            raise ValueError(f"3D prompt embedding dim must be divisible by 3, got {embed_dim}")
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.num_point_embeddings = 2
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in image_embedding_size)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # voxel centres
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        emb = torch.where((labels == -1)[..., None], torch.zeros_like(emb), emb)
        emb = emb + (labels == -1)[..., None] * self.not_a_point_embed.weight
        emb = emb + (labels == 0)[..., None] * self.point_embeddings[0].weight
        emb = emb + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return emb

    def forward(self, points=None, boxes=None, masks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``points``: ``(B x N x 3, B x N)`` with labels 1 (foreground), 0 (background), -1 (pad);
        ``masks``: ``B x 1 x 4g x 4g x 4g``. Returns sparse ``B x N' x C`` and dense ``B x C x g^3``."""
        if boxes is not None:
            raise ValueError("the 3D prompt encoder (SAM-Med3D) takes points and masks, not boxes")
        if points is not None:
            bs = points[0].shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], pad=True)], dim=1)
        if masks is not None:
            if tuple(masks.shape[-3:]) != self.mask_input_size:
                raise ValueError(f"mask prompt must be B x 1 x {self.mask_input_size}, got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
