"""MedLAM: the self-supervised 3D localiser of MedLSAM (Lei et al.).

A shared "Pnet" maps a 3D patch to a 3-vector ``p`` in a latent anatomical coordinate system;
the offset between two patches is predicted as ``r * tanh(p_s - p_q)`` (relative distance
regression, RDR). A light decoder yields feature maps at three scales used by the multi-scale
similarity (MSS) refinement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.InstanceNorm3d(cout, affine=True),
        nn.ReLU(inplace=True),
    )


class MedLAM(nn.Module):
    """3D conv encoder (InstanceNorm + ReLU, ``base_width`` doubling, ``num_pool`` poolings), an FC
    head on the bottleneck giving 3 latent coordinates, and MSS feature maps at 3 scales.

    :param feature_dim: channels of each (L2-normalised) MSS feature map.
    """

    def __init__(self, in_channels: int = 1, base_width: int = 24, num_pool: int = 4, feature_dim: int = 32,
                 max_width: int = 256):
        super().__init__()
        widths = [min(base_width * 2**i, max_width) for i in range(num_pool + 1)]
        self.widths = widths
        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoder.append(_block(cin, w))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.head = nn.Sequential(nn.Linear(widths[-1], 256), nn.ReLU(inplace=True), nn.Linear(256, 3))
        # MSS decoder: coarse (bottleneck), middle and fine scales, each projected to feature_dim
        self.up_mid = _block(widths[-1] + widths[-2], widths[-2])
        self.up_fine = _block(widths[-2] + widths[-3], widths[-3])
        self.proj = nn.ModuleList(
            [nn.Conv3d(widths[-1], feature_dim, 1), nn.Conv3d(widths[-2], feature_dim, 1), nn.Conv3d(widths[-3], feature_dim, 1)]
        )

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor, with_features: bool = True):
        """Return ``(p, features)``: ``p`` B x 3; ``features`` a list [coarse, mid, fine] of
        B x feature_dim x d x h x w, L2-normalised over channels (or None)."""
        skips = self._encode(x)
        bottleneck = skips[-1]
        p = self.head(bottleneck.mean(dim=(2, 3, 4)))
        if not with_features:
            return p, None
        mid = self.up_mid(torch.cat([F.interpolate(bottleneck, size=skips[-2].shape[2:], mode="trilinear", align_corners=False), skips[-2]], 1))
        fine = self.up_fine(torch.cat([F.interpolate(mid, size=skips[-3].shape[2:], mode="trilinear", align_corners=False), skips[-3]], 1))
        feats = [F.normalize(proj(f), dim=1) for proj, f in zip(self.proj, (bottleneck, mid, fine))]
        return p, feats


def predicted_offset_mm(p_query: torch.Tensor, p_support: torch.Tensor, r_mm: torch.Tensor) -> torch.Tensor:
    """RDR (paper Eq. 2): offset from the query patch to the support patch, ``r * tanh(p_s - p_q)``, in mm (z, y, x)."""
    return r_mm * torch.tanh(p_support - p_query)


def rdr_loss(p_query: torch.Tensor, p_support: torch.Tensor, true_offset_mm: torch.Tensor, r_mm: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and true offsets, measured in units of ``r`` (a constant rescaling of
    the paper's mm MSE that keeps the loss O(1))."""
    pred = predicted_offset_mm(p_query, p_support, r_mm)
    return F.mse_loss(pred / r_mm, true_offset_mm / r_mm)


def feature_at(features: list[torch.Tensor], points: torch.Tensor, patch_size: int) -> list[torch.Tensor]:
    """Feature vectors (B x N x D per scale) at ``points`` (B x N x 3 voxel coordinates in the patch)."""
    out = []
    for f in features:
        scale = f.shape[2] / patch_size
        idx = (points.float() * scale).long().clamp(0, f.shape[2] - 1)
        b = torch.arange(f.shape[0], device=f.device)[:, None].expand(-1, points.shape[1])
        out.append(f[b, :, idx[..., 0], idx[..., 1], idx[..., 2]])  # B x N x D
    return out


def mss_similarity(support_vectors: list[torch.Tensor], features: list[torch.Tensor], out_size) -> torch.Tensor:
    """Aggregated multi-scale cosine similarity (paper Fig. 3): for each scale the similarity of the
    support vector (B x D) with the feature map (B x D x d x h x w), resized to ``out_size`` and summed."""
    total = None
    for v, f in zip(support_vectors, features):
        sim = torch.einsum("bd,bdxyz->bxyz", v, f)[:, None]
        sim = F.interpolate(sim, size=tuple(out_size), mode="trilinear", align_corners=False)[:, 0]
        total = sim if total is None else total + sim
    return total


def mss_loss(features_a: list[torch.Tensor], features_b: list[torch.Tensor], points: torch.Tensor, patch_size: int,
             temperature: float = 0.1) -> torch.Tensor:
    """Multi-scale similarity loss: at each scale, the feature of a point in view A must be most similar
    to the same point of the augmented view B among all positions (InfoNCE over positions)."""
    loss = 0.0
    vecs = feature_at(features_a, points, patch_size)
    for v, fb in zip(vecs, features_b):
        b, n, d = v.shape
        flat = fb.flatten(2)  # B x D x P
        logits = torch.einsum("bnd,bdp->bnp", v, flat) / temperature
        size = fb.shape[2]
        idx = (points.float() * size / patch_size).long().clamp(0, size - 1)
        target = (idx[..., 0] * fb.shape[3] + idx[..., 1]) * fb.shape[4] + idx[..., 2]
        loss = loss + F.cross_entropy(logits.reshape(b * n, -1), target.reshape(-1))
    return loss / len(features_a)
