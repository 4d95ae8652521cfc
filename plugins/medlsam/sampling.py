"""Coarse volumes, patch cropping and self-supervised training pairs for MedLAM."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_coarse(volume: torch.Tensor, spacing, coarse_spacing, mode: str = "trilinear") -> torch.Tensor:
    """Resample a C x Z x Y x X volume from ``spacing`` to ``coarse_spacing`` (mm, z y x)."""
    shape = volume.shape[1:]
    new_shape = [max(1, int(round(s * sp / cs))) for s, sp, cs in zip(shape, spacing, coarse_spacing)]
    x = volume[None].float()
    if mode == "nearest":
        return F.interpolate(x, size=new_shape, mode="nearest")[0]
    return F.interpolate(x, size=new_shape, mode="trilinear", align_corners=False)[0]


def crop_patch(volume: torch.Tensor, center, size: int, pad_value: float | None = None) -> torch.Tensor:
    """A ``size``^3 patch of a C x Z x Y x X volume centred on ``center`` (voxel coordinates),
    padded with ``pad_value`` (default: the volume's minimum) outside the volume."""
    if pad_value is None:
        pad_value = float(volume.min())
    c = volume.shape[0]
    out = volume.new_full((c, size, size, size), pad_value)
    src, dst = [], []
    for ax in range(3):
        start = int(round(float(center[ax]))) - size // 2
        lo, hi = max(start, 0), min(start + size, volume.shape[ax + 1])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out


def augment_intensity(patch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Intensity-only augmentation (contrast, brightness, gamma-like, noise): voxel correspondence is kept."""
    x = patch * float(rng.uniform(0.75, 1.25)) + float(rng.uniform(-0.25, 0.25))
    x = x + torch.randn_like(x) * float(rng.uniform(0.0, 0.15))
    return x


def sample_pair(volume: torch.Tensor, patch: int, coarse_spacing, rng: np.random.Generator, n_points: int = 16):
    """Two random patches of one coarse volume, their augmented copies, the true offset from the
    query centre to the support centre in mm, and random points of the support patch for MSS."""
    shape = np.array(volume.shape[1:])
    c_q = rng.integers(0, shape)
    c_s = rng.integers(0, shape)
    x_q = crop_patch(volume, c_q, patch)
    x_s = crop_patch(volume, c_s, patch)
    offset = torch.tensor((c_s - c_q) * np.asarray(coarse_spacing), dtype=torch.float32)
    pts = torch.from_numpy(rng.integers(patch // 8, patch - patch // 8, size=(n_points, 3)))
    return x_q, x_s, augment_intensity(x_s, rng), offset, pts


def make_batch(volumes: list[torch.Tensor], batch_size: int, patch: int, coarse_spacing, rng: np.random.Generator) -> dict:
    xs_q, xs_s, xs_s_aug, offs, pts = [], [], [], [], []
    for _ in range(batch_size):
        v = volumes[int(rng.integers(len(volumes)))]
        q, s, s_aug, o, p = sample_pair(v, patch, coarse_spacing, rng)
        xs_q.append(q), xs_s.append(s), xs_s_aug.append(s_aug), offs.append(o), pts.append(p)
    return {
        "query": torch.stack(xs_q),
        "support": torch.stack(xs_s),
        "support_aug": torch.stack(xs_s_aug),
        "offset_mm": torch.stack(offs),
        "points": torch.stack(pts),
    }
