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
    if mode in ("nearest", "nearest-exact"):
        # "nearest-exact": voxel centres aligned like the trilinear image (align_corners=False);
        # torch's plain "nearest" shifts the label by up to half a coarse voxel
        return F.interpolate(x, size=new_shape, mode="nearest-exact")[0]
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


def make_batch(volumes: list[torch.Tensor], batch_size: int, patch: int, coarse_spacing, rng: np.random.Generator,
               crops_per_scan: int = 2, mss_crops: int | None = None, n_points: int = 16) -> dict:
    """Self-supervised batch: ``batch_size`` random crops, in groups of ``crops_per_scan`` crops of
    one (randomly chosen) scan; every pair of crops within a group is an RDR pair (the paper's pair
    of crops is ``crops_per_scan = 2``). The first crop of each group (or the first ``mss_crops``
    crops) also gets an MSS twin: a crop shifted by up to ``patch // 4`` voxels, intensity-augmented,
    with ``n_points`` corresponding points in both.

    Returns ``crops`` (B x 1 x p^3), ``scan`` (B group ids), ``centre_mm`` (B x 3: crop centres in
    mm), ``mss_index`` (M), ``crops_aug`` (M x 1 x p^3), ``points`` and ``points_aug`` (M x n x 3
    voxel coordinates of the same anatomical points in the crop and in its twin).
    """
    if crops_per_scan < 2:
        raise ValueError("crops_per_scan must be >= 2 (RDR needs pairs)")
    n_groups = -(-batch_size // crops_per_scan)
    crops, scans, centres, centre_vox, volumes_of = [], [], [], [], []
    for g in range(n_groups):
        v = volumes[int(rng.integers(len(volumes)))]
        shape = np.array(v.shape[1:])
        for _ in range(min(crops_per_scan, batch_size - g * crops_per_scan)):
            c = rng.integers(0, shape)
            crops.append(crop_patch(v, c, patch))
            centre_vox.append(c)
            volumes_of.append(v)
            scans.append(g)
            centres.append(c * np.asarray(coarse_spacing, dtype=np.float64))
    if mss_crops is None:
        mss_idx = list(range(0, len(crops), crops_per_scan))  # the first crop of each group
    else:
        mss_idx = list(range(min(mss_crops, len(crops))))
    # MSS view B: a crop of the same scan shifted by a random offset, intensity-augmented; a point p
    # of crop A is p - shift in crop B. (Identical crops would let the features encode the position
    # in the patch -- the zero padding makes that trivial -- instead of the anatomy.)
    lo, hi = patch // 8, patch - patch // 8
    max_shift = patch // 4
    aug, pts_a, pts_b = [], [], []
    for i in mss_idx:
        v = volumes_of[i]
        shift = rng.integers(-max_shift, max_shift + 1, size=3)
        aug.append(augment_intensity(crop_patch(v, np.asarray(centre_vox[i]) + shift, patch, pad_value=float(v.min())), rng))
        a_lo, a_hi = np.maximum(lo, lo + shift), np.minimum(hi, hi + shift)  # p in A and p - shift in B both inside
        p = rng.integers(a_lo, a_hi, size=(n_points, 3))
        pts_a.append(p)
        pts_b.append(p - shift)
    return {
        "crops": torch.stack(crops),
        "scan": torch.tensor(scans, dtype=torch.long),
        "centre_mm": torch.tensor(np.stack(centres), dtype=torch.float32),
        "mss_index": torch.tensor(mss_idx, dtype=torch.long),
        "crops_aug": torch.stack(aug),
        "points": torch.from_numpy(np.stack(pts_a)),
        "points_aug": torch.from_numpy(np.stack(pts_b)),
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
