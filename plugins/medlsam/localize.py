"""Few-shot localisation with MedLAM: extreme points, support prototypes, agent moves, MSS refinement, boxes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .localizer import MedLAM, feature_at, mss_similarity, predicted_offset_mm
from .sampling import crop_patch

# order of the six extreme points: (axis, min|max)
EXTREMES = [(0, "min"), (0, "max"), (1, "min"), (1, "max"), (2, "min"), (2, "max")]


def extreme_points(mask: np.ndarray) -> np.ndarray | None:
    """The 6 extreme points (z-min, z-max, y-min, y-max, x-min, x-max) of a binary 3D mask, 6 x 3 voxel
    coordinates. On the extreme plane of an axis, the point is the foreground voxel closest to the
    centroid of that plane's foreground voxels. ``None`` for an empty mask."""
    coords = np.argwhere(mask)
    if coords.size == 0:
        return None
    points = []
    for axis, which in EXTREMES:
        value = coords[:, axis].min() if which == "min" else coords[:, axis].max()
        plane = coords[coords[:, axis] == value]
        centre = plane.mean(0)
        points.append(plane[np.argmin(((plane - centre) ** 2).sum(1))])
    return np.stack(points).astype(np.float64)


def box_from_extremes(points: np.ndarray) -> np.ndarray:
    """3D box [z0, y0, x0, z1, y1, x1] (inclusive) spanned by the 6 extreme points: each axis's
    range is taken from the min and max extreme point of that axis."""
    lo = np.array([points[0, 0], points[2, 1], points[4, 2]])
    hi = np.array([points[1, 0], points[3, 1], points[5, 2]])
    return np.concatenate([np.minimum(lo, hi), np.maximum(lo, hi)])


def extend_box(box: np.ndarray, margin, shape) -> np.ndarray:
    """Extend an inclusive box by ``margin`` voxels per axis (z, y, x) on both sides, clipped to ``shape``."""
    margin = np.asarray(margin)
    lo = np.clip(np.floor(box[:3]) - margin, 0, np.asarray(shape) - 1)
    hi = np.clip(np.ceil(box[3:]) + margin, 0, np.asarray(shape) - 1)
    return np.concatenate([lo, hi]).astype(int)


def box_iou_3d(a, b) -> float:
    """IoU of two inclusive voxel boxes [z0, y0, x0, z1, y1, x1]."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    inter = np.prod(np.clip(np.minimum(a[3:], b[3:]) - np.maximum(a[:3], b[:3]) + 1, 0, None))
    va, vb = np.prod(a[3:] - a[:3] + 1), np.prod(b[3:] - b[:3] + 1)
    return float(inter / (va + vb - inter)) if va + vb - inter > 0 else 0.0


@dataclass
class Prototype:
    """Averaged support description of one extreme point: latent coordinate and MSS feature vectors."""

    latent: torch.Tensor  # 3
    vectors: list[torch.Tensor]  # per scale, D


@torch.no_grad()
def point_descriptor(model: MedLAM, volume: torch.Tensor, point, patch: int):
    x = crop_patch(volume, point, patch)[None]
    p, feats = model(x)
    centre = torch.full((1, 1, 3), patch // 2, dtype=torch.long)
    vecs = [v[0, 0] for v in feature_at(feats, centre, patch)]
    return p[0], vecs


@torch.no_grad()
def build_prototypes(model: MedLAM, supports: list[tuple[torch.Tensor, np.ndarray]], labels: list[int], patch: int
                     ) -> dict[int, list[Prototype]]:
    """Per class, 6 prototypes averaged over the support cases where the class is present.

    :param supports: ``(coarse volume C x Z x Y x X, coarse label map Z x Y x X)`` pairs.
    """
    protos: dict[int, list[Prototype]] = {}
    for label in labels:
        per_point: list[list] = [[] for _ in EXTREMES]
        for volume, seg in supports:
            pts = extreme_points(seg == label)
            if pts is None:
                continue
            for i, pt in enumerate(pts):
                per_point[i].append(point_descriptor(model, volume, pt, patch))
        if not per_point[0]:
            continue
        protos[label] = [
            Prototype(
                torch.stack([d[0] for d in descs]).mean(0),
                [torch.nn.functional.normalize(torch.stack([d[1][s] for d in descs]).mean(0), dim=0) for s in range(len(descs[0][1]))],
            )
            for descs in per_point
        ]
    return protos


@torch.no_grad()
def localize_point(model: MedLAM, volume: torch.Tensor, proto: Prototype, patch: int, spacing, r_mm: torch.Tensor,
                   start=None, moves: int = 3, refine: bool = True, radius: int | None = None) -> np.ndarray:
    """Move an agent from ``start`` (default: the volume centre) by the predicted offsets towards
    the prototype's latent coordinate, then refine by the argmax of the multi-scale similarity
    within ``radius`` coarse voxels of the agent (None: the whole patch)."""
    shape = np.array(volume.shape[1:])
    pos = np.array(start if start is not None else (shape - 1) / 2.0, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    for _ in range(moves):
        p_q, _ = model(crop_patch(volume, pos, patch)[None], with_features=False)
        offset = predicted_offset_mm(p_q[0], proto.latent, r_mm).numpy()
        pos = np.clip(pos + offset / spacing, 0, shape - 1)
    if refine:
        x = crop_patch(volume, pos, patch)[None]
        _, feats = model(x)
        sim = mss_similarity([v[None] for v in proto.vectors], feats, (patch,) * 3)[0]
        # only positions inside the volume count
        start_idx = np.round(pos).astype(int) - patch // 2
        valid = torch.zeros_like(sim, dtype=torch.bool)
        lo = np.maximum(-start_idx, 0)
        hi = np.minimum(shape - start_idx, patch)
        if radius is not None:
            lo = np.maximum(lo, patch // 2 - radius)
            hi = np.minimum(hi, patch // 2 + radius + 1)
        valid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        sim = sim.masked_fill(~valid, float("-inf"))
        best = np.array(np.unravel_index(int(torch.argmax(sim)), sim.shape))
        pos = np.clip(start_idx + best, 0, shape - 1).astype(np.float64)
    return pos


def localize_box(model: MedLAM, volume: torch.Tensor, protos: list[Prototype], patch: int, spacing, r_mm, refine=True,
                 moves: int = 3, radius: int | None = None) -> np.ndarray:
    """Coarse-grid inclusive box of one class from its 6 localised extreme points."""
    pts = np.stack([localize_point(model, volume, p, patch, spacing, r_mm, refine=refine, moves=moves, radius=radius)
                    for p in protos])
    return box_from_extremes(pts)
