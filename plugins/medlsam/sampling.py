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


def canonical_flips(properties: dict | None) -> tuple[int, ...]:
    """Array axes (0 = z, 1 = y, 2 = x) whose voxel index runs against the world axis it follows
    (from the case's direction cosines, SimpleITK row-major 3 x 3 in ``properties["geometry"]``).

    MedLAM's latent coordinates are anatomical positions, so every volume it sees is flipped to a
    common orientation first (the preprocessed arrays keep each file's own index order). Axis
    permutations are not undone. No geometry: no flip.
    """
    geometry = (properties or {}).get("geometry") or {}
    direction = geometry.get("direction")
    if direction is None or len(direction) != 9:
        return ()
    m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    flips = []
    for array_axis, itk_axis in ((0, 2), (1, 1), (2, 0)):
        column = m[:, itk_axis]
        if column[np.argmax(np.abs(column))] < 0:
            flips.append(array_axis)
    return tuple(flips)


def flip_volume(volume: torch.Tensor, flips) -> torch.Tensor:
    """Flip the spatial axes ``flips`` of a C x Z x Y x X (or Z x Y x X with ``offset`` 0) volume."""
    return volume.flip([a + volume.ndim - 3 for a in flips]) if flips else volume


def unflip_box(box: np.ndarray, flips, shape) -> np.ndarray:
    """An inclusive box [z0, y0, x0, z1, y1, x1] found in the flipped volume, in the original index order."""
    box = np.asarray(box, dtype=np.float64).copy()
    for a in flips:
        lo, hi = box[a], box[a + 3]
        box[a], box[a + 3] = shape[a] - 1 - hi, shape[a] - 1 - lo
    return box
