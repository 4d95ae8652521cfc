"""Prompts simulated from a training patch's labels, in the manner of nnInteractive: the network
learns from boxes, clicks and previous masks that a user (or the interactive evaluator) would give.

Per sample, with probability ``p_no_prompts`` no class gets a prompt (the network must segment
automatically). Otherwise, per foreground class present in the patch and independently of the other
classes, one *mode* is drawn with the weights of :class:`SimulationConfig`:

- ``none``: no prompt for this class;
- ``box3d``: the class's bounding box in the patch, each face moved outwards by 0..``box_jitter``
  of the box's extent on that axis (at least 0..1 voxel), clipped to the patch;
- ``box2d``: the challenge's box (:func:`autosam.prompts.box2d_from_mask`: the 2D box on the middle
  slice of the class's z range, plus that range);
- ``clicks``: 1..``max_clicks`` positive clicks at voxels of the class (drawn with weights equal
  to their distance from the class's border, so rather inside than on the edge) and 0..as many negative
  clicks in the ring of ``negative_ring`` voxels around it (outside the class);
- ``refine``: a previous mask (:func:`simulate_previous_mask`: empty, or the class's mask eroded or
  dilated, shifted, with its end slices or a chunk missing, with a false-positive blob) with, as
  in the protocol's later steps, the challenge's 2D box (probability ``refine_box2d``), 0..``max_clicks-1``
  earlier clicks (placed as in ``clicks``) and 1 or 2 new clicks at the centres of the largest error
  regions of the previous mask (:func:`largest_error_click`, the evaluator's rule).

Everything runs on the CPU with scipy (a few milliseconds per sample of a small patch).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autosam.interactive.clicks import component_centre, error_region, largest_component
from autosam.prompts import Box3D, LabelPrompts, Point, box2d_from_mask
from autosam_plugins.promptunet.encoding import paint_ball

MODES = ("none", "box3d", "box2d", "clicks", "refine")


@dataclass
class SimulationConfig:
    """Probabilities and sizes of the simulated prompts (``promptunet`` options of the same names)."""

    p_no_prompts: float = 0.2  # per sample: no prompt for any class (automatic segmentation)
    w_none: float = 0.1  # per class: relative weights of the modes
    w_box3d: float = 0.15
    w_box2d: float = 0.25
    w_clicks: float = 0.15
    w_refine: float = 0.35
    max_clicks: int = 5
    box_jitter: float = 0.1  # a 3D box's faces move outwards by up to this fraction of its extent
    negative_ring: int = 3  # negative clicks lie within this many voxels outside the structure
    refine_box2d: float = 0.7  # probability that a refinement keeps the challenge's 2D box


def mode_probabilities(cfg: SimulationConfig) -> np.ndarray:
    w = np.array([cfg.w_none, cfg.w_box3d, cfg.w_box2d, cfg.w_clicks, cfg.w_refine], dtype=float)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"promptunet: prompt mode weights w_none, w_box3d, w_box2d, w_clicks, w_refine must be >= 0 "
                         f"with a positive sum, got {w.tolist()}")
    return w / w.sum()


def largest_error_click(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None
                        ) -> tuple[Point, np.ndarray] | None:
    """The evaluator's click (:mod:`autosam.interactive.clicks`, the CVPR 2025 challenge's rule): at the
    centre (maximum of the distance transform, the image border counting as outside) of the largest
    26-connected region where ``pred`` and ``ref`` differ, positive where ``ref`` is set (missed
    foreground), negative otherwise (false positive). Returns ``(point, region)``, or None when they
    agree everywhere (outside ``valid``'s False voxels)."""
    region = largest_component(error_region(ref, pred, valid))
    if region is None:
        return None
    z, y, x = component_centre(region)
    return Point(z, y, x, positive=bool(ref[z, y, x])), region


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float) -> Box3D:
    """The bounding box of ``mask``, each face moved outwards at random (never inwards)."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    out_lo, out_hi = [], []
    for axis, size in enumerate(mask.shape):
        j = max(1, int(round(jitter * (hi[axis] - lo[axis] + 1))))
        out_lo.append(max(0, int(lo[axis]) - int(rng.integers(0, j + 1))))
        out_hi.append(min(size - 1, int(hi[axis]) + int(rng.integers(0, j + 1))))
    return (*out_lo, *out_hi)  # type: ignore[return-value]


def _pick(candidates: np.ndarray, n: int, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` distinct voxels (rows of ``argwhere``) from a boolean mask, optionally weighted."""
    idx = np.argwhere(candidates)
    if len(idx) == 0 or n <= 0:
        return idx[:0]
    p = None
    if weights is not None:
        w = weights[candidates].astype(float)
        p = w / w.sum() if w.sum() > 0 else None
    return idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False, p=p)]


def random_clicks(mask: np.ndarray, rng: np.random.Generator, n_pos: int, n_neg: int, ring: int,
                  allowed: np.ndarray | None = None) -> list[Point]:
    """``n_pos`` positive clicks inside ``mask`` (weighted by the distance to its border) and ``n_neg``
    negative ones in the ``ring`` voxels around it (restricted to ``allowed`` when given)."""
    inside = ndimage.distance_transform_edt(mask)
    around = ndimage.binary_dilation(mask, iterations=ring) & ~mask
    if allowed is not None:
        around &= allowed
    points = [Point(*map(int, v), positive=True) for v in _pick(mask, n_pos, rng, inside)]
    points += [Point(*map(int, v), positive=False) for v in _pick(around, n_neg, rng)]
    return points


def _shift(mask: np.ndarray, offsets) -> np.ndarray:
    out = np.zeros_like(mask)
    src, dst = [], []
    for o, size in zip(offsets, mask.shape):
        o = int(o)
        src.append(slice(max(0, -o), size - max(0, o)))
        dst.append(slice(max(0, o), size - max(0, -o)))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def simulate_previous_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible earlier segmentation of ``mask``: empty (10%), or the mask with some of: erosion or
    dilation by 1-2 voxels (50%), a shift of up to 2 voxels per axis (30%), its first or last slices
    missing (up to a third of its z extent, 30%), a ball-shaped chunk missing (radius 2-4, 30%), a
    false-positive ball nearby (radius 1-3, 20%); at least the erosion or dilation when none was drawn."""
    if rng.random() < 0.1:
        return np.zeros_like(mask)
    out = mask.copy()
    changed = False
    if rng.random() < 0.5:
        op = ndimage.binary_erosion if rng.random() < 0.5 else ndimage.binary_dilation
        out, changed = op(out, iterations=int(rng.integers(1, 3))), True
    if rng.random() < 0.3:
        out, changed = _shift(out, rng.integers(-2, 3, size=3)), True
    zs = np.flatnonzero(out.any(axis=(1, 2)))
    if rng.random() < 0.3 and zs.size > 1:
        n = int(rng.integers(1, max(1, zs.size // 3) + 1))
        cut = zs[:n] if rng.random() < 0.5 else zs[-n:]
        out[cut] = False
        changed = True
    if rng.random() < 0.3 and out.any():
        centre = _pick(out, 1, rng)[0]
        out &= ~_ball_mask(out.shape, centre, int(rng.integers(2, 5)))
        changed = True
    if rng.random() < 0.2:
        near = ndimage.binary_dilation(mask, iterations=4) & ~mask
        if near.any():
            out |= _ball_mask(out.shape, _pick(near, 1, rng)[0], int(rng.integers(1, 4)))
            changed = True
    if not changed:
        op = ndimage.binary_erosion if rng.random() < 0.5 else ndimage.binary_dilation
        out = op(out, iterations=1)
    return out


def _ball_mask(shape, centre, radius: int) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    paint_ball(out, centre, radius)
    return out > 0


def simulate_label_prompts(mask: np.ndarray, mode: str, rng: np.random.Generator, cfg: SimulationConfig,
                           allowed: np.ndarray | None = None) -> LabelPrompts | None:
    """The prompts of one structure (``mask``, non-empty) in one ``mode`` of :data:`MODES`."""
    if mode == "none":
        return None
    if mode == "box3d":
        return LabelPrompts(boxes3d=[jittered_box(mask, rng, cfg.box_jitter)])
    if mode == "box2d":
        return LabelPrompts(box2d=box2d_from_mask(mask))
    if mode == "clicks":
        n_pos = int(rng.integers(1, cfg.max_clicks + 1))
        return LabelPrompts(points=random_clicks(mask, rng, n_pos, int(rng.integers(0, n_pos + 1)), cfg.negative_ring,
                                                 allowed))
    if mode != "refine":
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {MODES}")
    prev = simulate_previous_mask(mask, rng)
    n_old = int(rng.integers(0, max(1, cfg.max_clicks)))
    n_old_pos = int(rng.integers(0, n_old + 1))
    points = random_clicks(mask, rng, n_old_pos, n_old - n_old_pos, cfg.negative_ring, allowed)
    current = prev.copy()
    for _ in range(1 if rng.random() < 0.7 else 2):
        click = largest_error_click(current, mask, allowed)
        if click is None:
            break
        point, region = click
        points.append(point)
        current[region] = mask[region]  # the next click goes to the next error region
    return LabelPrompts(box2d=box2d_from_mask(mask) if rng.random() < cfg.refine_box2d else None, points=points,
                        previous_mask=prev)


def simulate_prompts(target: np.ndarray, num_foreground: int, rng: np.random.Generator, cfg: SimulationConfig,
                     ignore_label: int | None = None) -> dict[int, LabelPrompts]:
    """Prompts (label -> :class:`LabelPrompts`) for one training patch's label map ``target``
    (Z x Y x X integers), drawn as the module docstring describes."""
    if rng.random() < cfg.p_no_prompts:
        return {}
    probs = mode_probabilities(cfg)
    allowed = None if ignore_label is None else target != ignore_label
    prompts = {}
    for label in range(1, num_foreground + 1):
        mask = target == label
        if not mask.any():
            continue
        p = simulate_label_prompts(mask, MODES[int(rng.choice(len(MODES), p=probs))], rng, cfg, allowed)
        if p is not None:
            prompts[label] = p
    return prompts
