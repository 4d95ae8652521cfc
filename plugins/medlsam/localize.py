"""Few-shot localisation with MedLAM: extreme points, support prototypes, agent moves, MSS refinement, boxes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .localizer import MedLAM, feature_templates, mss_similarity, predicted_offset_mm
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


def union_box(boxes) -> np.ndarray:
    boxes = np.asarray(list(boxes), dtype=np.float64)
    return np.concatenate([boxes[:, :3].min(0), boxes[:, 3:].max(0)])


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


def split_components(mask: np.ndarray, min_fraction: float = 0.1) -> list[np.ndarray]:
    """The connected components (26-connectivity) of ``mask`` holding at least ``min_fraction`` of
    its voxels, in a canonical order: along the axis on which their centroids spread most (e.g.
    x for the two kidneys of one label), lowest first. One component (or none): ``[mask]``."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return [mask]
    sizes = np.bincount(lab.ravel())[1:]
    keep = [i + 1 for i in np.flatnonzero(sizes >= min_fraction * sizes.sum())]
    if len(keep) <= 1:
        return [mask]
    cents = np.array(ndimage.center_of_mass(mask, lab, keep))
    axis = int(np.argmax(cents.max(0) - cents.min(0)))
    return [lab == keep[i] for i in np.argsort(cents[:, axis], kind="stable")]


@dataclass
class Prototype:
    """Averaged support description of one extreme point: latent coordinate and, per MSS scale, the
    feature template around the point (D x t x t x t; t = 1 is the paper's single feature vector)."""

    latent: torch.Tensor  # 3
    templates: list[torch.Tensor]  # per scale (1/4, 1/2, full), D x t x t x t


def label_boxes(seg: np.ndarray, labels, margin=(0, 0, 0), split: bool = True) -> dict[int, list[np.ndarray]]:
    """Boxes FROM A LABEL MAP (the paper's "manual box" protocol; it uses the label): per label of
    ``labels`` present in ``seg`` (Z x Y x X), the box of its six extreme points, one per connected
    part when ``split`` (:func:`split_components`, as the supports are split), extended by
    ``margin`` voxels (z, y, x)."""
    out = {}
    for k in labels:
        mask = seg == k
        if mask.any():
            parts = split_components(mask) if split else [mask]
            out[int(k)] = [extend_box(box_from_extremes(extreme_points(m)), margin, seg.shape) for m in parts]
    return out


@torch.no_grad()
def point_descriptors(model: MedLAM, volume: torch.Tensor, points, patch: int, template: int):
    """Latents (N x 3) and feature templates (per scale N x D x t^3) of patches centred on ``points``."""
    x = torch.stack([crop_patch(volume, pt, patch) for pt in points])
    p, feats = model(x)
    return p, feature_templates(feats, template, patch)


@torch.no_grad()
def build_prototypes(model: MedLAM, supports: list[tuple[torch.Tensor, np.ndarray]], labels: list[int], patch: int,
                     template: int = 1, split: bool = True, max_components: int = 2
                     ) -> dict[int, list[list[Prototype]]]:
    """Per class, per component, 6 prototypes averaged over the support cases where the class is present.

    With ``split``, a class whose mask falls into the same number ``n`` (2 <= n <= ``max_components``)
    of large connected components in every support (e.g. both kidneys in one label) gets one set of
    prototypes per component (components matched across supports by their canonical order, see
    :func:`split_components`); otherwise the whole mask is one target, as in the paper.

    :param supports: ``(coarse volume C x Z x Y x X, coarse label map Z x Y x X)`` pairs.
    """
    protos: dict[int, list[list[Prototype]]] = {}
    for label in labels:
        masks = [(v, seg == label) for v, seg in supports if (seg == label).any()]
        if not masks:
            continue
        parts = [split_components(m) if split else [m] for _, m in masks]
        counts = {len(p) for p in parts}
        if len(counts) != 1 or next(iter(counts)) > max_components:
            parts = [[m] for _, m in masks]
        n_comp = len(parts[0])
        protos[label] = []
        for c in range(n_comp):
            latents, temps = [], []
            for (volume, _), comps in zip(masks, parts):
                p, t = point_descriptors(model, volume, extreme_points(comps[c]), patch, template)
                latents.append(p)
                temps.append(t)
            lat = torch.stack(latents).mean(0)  # 6 x 3
            per_scale = [torch.stack([t[s] for t in temps]).mean(0) for s in range(len(temps[0]))]  # 6 x D x t^3
            protos[label].append([Prototype(lat[i], [ps[i] for ps in per_scale]) for i in range(len(EXTREMES))])
    return protos


def start_positions(shape, n: int, seed: int = 0) -> np.ndarray:
    """``n`` agent start positions (n x 3 voxel coordinates): the volume centre, then seeded random
    positions in the central 80% of the volume (the official code averages 10 random crops)."""
    shape = np.asarray(shape, dtype=np.float64)
    rng = np.random.default_rng(seed)
    starts = [(shape - 1) / 2.0] + [rng.uniform(0.1, 0.9, 3) * (shape - 1) for _ in range(n - 1)]
    return np.stack(starts)


@torch.no_grad()
def _latents(model: MedLAM, volume: torch.Tensor, positions: np.ndarray, patch: int, chunk: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(positions), chunk):
        x = torch.stack([crop_patch(volume, pos, patch) for pos in positions[i:i + chunk]])
        out.append(model(x, with_features=False)[0].cpu())
    return torch.cat(out)


@torch.no_grad()
def localize_points(model: MedLAM, volume: torch.Tensor, protos: list[Prototype], patch: int, spacing, r_mm: torch.Tensor,
                    moves: int = 3, starts: int = 1, refine: bool = True, radius: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Localise every prototype's point in ``volume`` (N x 3 coarse voxel coordinates).

    An agent per (point, start) moves ``moves`` times by the predicted offset ``r tanh(p_s - p_q)``
    towards the prototype's latent coordinate; the agents of one point are combined by the median
    (with ``starts`` = 1 a single agent from the volume centre). Then, with ``refine``, the MSS
    refinement moves the point to the argmax of the multi-scale similarity with the prototype's
    feature templates within ``radius`` coarse voxels (None: the whole patch)."""
    shape = np.array(volume.shape[1:])
    spacing = np.asarray(spacing, dtype=np.float64)
    target = torch.stack([p.latent.cpu() for p in protos])  # N x 3
    r = r_mm.cpu()
    n = len(protos)
    start = start_positions(shape, starts, seed)
    # the first move of every point starts from the same patches: one forward pass for all of them
    p0 = _latents(model, volume, start, patch)  # S x 3
    off = predicted_offset_mm(p0[None], target[:, None], r).numpy()  # N x S x 3
    pos = np.clip(start[None] + off / spacing, 0, shape - 1)
    for _ in range(moves - 1):
        flat = pos.reshape(-1, 3)
        p_q = _latents(model, volume, flat, patch).reshape(n, starts, 3)
        off = predicted_offset_mm(p_q, target[:, None], r).numpy()
        pos = np.clip(pos + off / spacing, 0, shape - 1)
    pos = np.median(pos, axis=1)  # N x 3
    if not refine:
        return pos
    out = np.empty_like(pos)
    for k, proto in enumerate(protos):
        centre = np.round(pos[k]).astype(int)
        _, feats = model(crop_patch(volume, centre, patch)[None])
        sim = mss_similarity([t[None].to(feats[0].device) for t in proto.templates], feats, (patch,) * 3)[0]
        start_idx = centre - patch // 2
        valid = torch.zeros_like(sim, dtype=torch.bool)
        lo = np.maximum(-start_idx, 0)  # only positions inside the volume count
        hi = np.minimum(shape - start_idx, patch)
        if radius is not None:
            lo = np.maximum(lo, patch // 2 - radius)
            hi = np.minimum(hi, patch // 2 + radius + 1)
        valid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        sim = sim.masked_fill(~valid, float("-inf"))
        best = np.array(np.unravel_index(int(torch.argmax(sim)), sim.shape))
        out[k] = np.clip(start_idx + best, 0, shape - 1)
    return out


def localize_boxes(model: MedLAM, volume: torch.Tensor, protos: dict[int, list[list[Prototype]]], patch: int, spacing,
                   r_mm, **kwargs) -> dict[int, list[np.ndarray]]:
    """Per class, the coarse-grid inclusive box of each component, from its 6 localised extreme points
    (all points of all classes localised together)."""
    flat = [(label, c) for label, comps in protos.items() for c in range(len(comps))]
    if not flat:
        return {}
    points = localize_points(model, volume, [p for label, c in flat for p in protos[label][c]], patch, spacing, r_mm,
                             **kwargs)
    boxes: dict[int, list[np.ndarray]] = {}
    for i, (label, c) in enumerate(flat):
        boxes.setdefault(label, []).append(box_from_extremes(points[6 * i:6 * i + 6]))
    return boxes
