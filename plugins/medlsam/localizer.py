"""MedLAM: the self-supervised 3D localiser of MedLSAM (Lei et al.).

A shared "Pnet" maps a 3D patch to a 3-vector ``p`` in a latent anatomical coordinate system;
the offset between two patches is predicted as ``r * tanh(p_s - p_q)`` (relative distance
regression, RDR). A U-Net-like decoder yields feature maps at three scales (1/4, 1/2 and the full
patch resolution, as in the official network) used by the multi-scale similarity (MSS).
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
    """3D conv encoder (InstanceNorm + ReLU, ``base_width`` doubling, ``num_pool`` poolings); an FC
    head on the *flattened* bottleneck (as the official ``fc1..fc3``: the spatial layout of the
    bottleneck is what tells where the patch is) giving 3 latent coordinates; a decoder with skip
    connections up to the full patch resolution whose last three levels (1/4, 1/2, 1) give the MSS
    feature maps.

    :param feature_dim: channels of each (L2-normalised) MSS feature map.
    :param patch: side of the (cubic) input patch; the FC head's input size depends on it.
    """

    def __init__(self, in_channels: int = 1, base_width: int = 24, num_pool: int = 4, feature_dim: int = 32,
                 patch: int = 64, max_width: int = 256):
        super().__init__()
        if num_pool < 2:
            raise ValueError("MedLAM needs at least 2 poolings (MSS uses the 1/4, 1/2 and full resolutions)")
        if patch % 2**num_pool:
            raise ValueError(f"patch {patch} is not divisible by 2**num_pool = {2**num_pool}")
        widths = [min(base_width * 2**i, max_width) for i in range(num_pool + 1)]
        self.widths = widths
        self.patch = patch
        self.encoder = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.encoder.append(_block(cin, w))
            cin = w
        self.pool = nn.MaxPool3d(2)
        bottleneck_voxels = (patch // 2**num_pool) ** 3
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * bottleneck_voxels, 256), nn.ReLU(inplace=True),
                                  nn.Linear(256, 3))
        # decoder: level i (from num_pool - 1 down to 0) fuses the upsampled level i + 1 with skip i
        self.decoder = nn.ModuleList([_block(widths[i + 1] + widths[i], widths[i]) for i in range(num_pool - 1, -1, -1)])
        # MSS projections of the last three decoder levels: 1/4, 1/2, full resolution (coarse -> fine)
        self.proj = nn.ModuleList([nn.Conv3d(widths[i], feature_dim, 1) for i in (2, 1, 0)])

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            skips.append(x)
        return skips

    def forward(self, x: torch.Tensor, with_features: bool = True):
        """Return ``(p, features)``: ``p`` B x 3; ``features`` a list [1/4, 1/2, full resolution] of
        B x feature_dim x d x h x w, L2-normalised over channels (or None)."""
        skips = self._encode(x)
        p = self.head(skips[-1])
        if not with_features:
            return p, None
        out = skips[-1]
        levels = {len(skips) - 1: out}  # with 2 poolings the 1/4 scale is the bottleneck itself
        for block, i in zip(self.decoder, range(len(skips) - 2, -1, -1)):
            up = F.interpolate(out, size=skips[i].shape[2:], mode="trilinear", align_corners=False)
            out = block(torch.cat([up, skips[i]], 1))
            levels[i] = out
        feats = [F.normalize(proj(levels[i]), dim=1) for proj, i in zip(self.proj, (2, 1, 0))]
        return p, feats


def predicted_offset_mm(p_query: torch.Tensor, p_support: torch.Tensor, r_mm: torch.Tensor) -> torch.Tensor:
    """RDR (paper Eq. 2): offset from the query patch to the support patch, ``r * tanh(p_s - p_q)``, in mm (z, y, x)."""
    return r_mm * torch.tanh(p_support - p_query)


def rdr_loss(p_query: torch.Tensor, p_support: torch.Tensor, true_offset_mm: torch.Tensor, r_mm: torch.Tensor) -> torch.Tensor:
    """The paper's RDR loss: MSE between predicted and true offsets in mm (paper Eq. 3). In mm^2 it
    dominates the MSS loss until the offsets are within a few mm, as in the official training."""
    return F.mse_loss(predicted_offset_mm(p_query, p_support, r_mm), true_offset_mm)


def pair_indices(scan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs ``(i, j)``, ``i < j``, of crops taken from the same scan (``scan``: B scan ids)."""
    same = scan[:, None] == scan[None, :]
    i, j = torch.nonzero(torch.triu(same, diagonal=1), as_tuple=True)
    return i, j


def rdr_pairs_loss(p: torch.Tensor, centre_mm: torch.Tensor, scan: torch.Tensor, r_mm: torch.Tensor) -> torch.Tensor:
    """RDR loss over every pair of crops of one scan in the batch (B crops -> up to B(B-1)/2 pairs)."""
    i, j = pair_indices(scan)
    return rdr_loss(p[i], p[j], centre_mm[j] - centre_mm[i], r_mm)


def feature_at(features: list[torch.Tensor], points: torch.Tensor, patch_size: int) -> list[torch.Tensor]:
    """Feature vectors (B x N x D per scale) at ``points`` (B x N x 3 voxel coordinates in the patch)."""
    out = []
    for f in features:
        scale = f.shape[2] / patch_size
        idx = (points.float() * scale).long().clamp(0, f.shape[2] - 1)
        b = torch.arange(f.shape[0], device=f.device)[:, None].expand(-1, points.shape[1])
        out.append(f[b, :, idx[..., 0], idx[..., 1], idx[..., 2]])  # B x N x D
    return out


def feature_templates(features: list[torch.Tensor], size: int, patch_size: int) -> list[torch.Tensor]:
    """The official code's "label_patch" MSS descriptor: per scale, the (normalised) feature block
    of side ``size * scale`` (at least 1) around the patch centre, B x D x t x t x t."""
    out = []
    for f in features:
        t = max(1, int(round(size * f.shape[2] / patch_size)))
        c = f.shape[2] // 2
        lo = c - t // 2
        out.append(f[:, :, lo:lo + t, lo:lo + t, lo:lo + t])
    return out


def mss_similarity(support_vectors: list[torch.Tensor], features: list[torch.Tensor], out_size) -> torch.Tensor:
    """Aggregated multi-scale cosine similarity (paper Fig. 3): for each scale the similarity of the
    support descriptor with the feature map (B x D x d x h x w), resized to ``out_size`` and summed.

    A descriptor is a vector (B x D: the paper's point feature) or a template (B x D x t x t x t:
    the official code's feature block around the point, matched by correlation and divided by t^3)."""
    total = None
    for v, f in zip(support_vectors, features):
        if v.dim() == 2:
            sim = torch.einsum("bd,bdxyz->bxyz", v, f)[:, None]
        else:
            t = v.shape[-1]
            sims = []
            for k in range(f.shape[0]):
                s = F.conv3d(F.pad(f[k:k + 1], [t // 2, (t - 1) // 2] * 3, mode="replicate"), v[k:k + 1])
                sims.append(s)
            sim = torch.cat(sims) / t**3
        sim = F.interpolate(sim, size=tuple(out_size), mode="trilinear", align_corners=False)[:, 0]
        total = sim if total is None else total + sim
    return total


def mss_loss(features_a: list[torch.Tensor], features_b: list[torch.Tensor], points: torch.Tensor, patch_size: int,
             temperature: float = 0.1, points_b: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-scale similarity loss: at each scale, the feature of a point in view A must be most similar
    to the same point of the augmented view B (at ``points_b``; default the same voxel coordinates)
    among all positions (InfoNCE over positions)."""
    loss = 0.0
    points_b = points if points_b is None else points_b
    vecs = feature_at(features_a, points, patch_size)
    for v, fb in zip(vecs, features_b):
        b, n, d = v.shape
        flat = fb.flatten(2)  # B x D x P
        logits = torch.einsum("bnd,bdp->bnp", v, flat) / temperature
        size = fb.shape[2]
        idx = (points_b.float() * size / patch_size).long().clamp(0, size - 1)
        target = (idx[..., 0] * fb.shape[3] + idx[..., 1]) * fb.shape[4] + idx[..., 2]
        loss = loss + F.cross_entropy(logits.reshape(b * n, -1), target.reshape(-1))
    return loss / len(features_a)
