"""Box prompts followed through a volume: the engine of :mod:`autosam.sam.box_segment`.

A :class:`BoxPrompt` is one box of one label: an in-plane box on the slice where the walk starts
and the z range it covers. :func:`propagate_boxes` predicts every slice of each prompt's z range:

- ``"propagate"`` (default; LiteMedSAM's 3D inference, the CVPR 2024 "MedSAM on laptop" way):
  the start slice (a 3D box's middle slice, a challenge 2D box's own slice) is prompted with the
  box; then the walk goes up and down, each slice prompted with the bounding box of the previous
  slice's mask (``probability > threshold``) widened by :data:`PROPAGATION_MARGIN_PX` pixels on
  each side (5 pixels of a 256-pixel input, as the reference's ``bbox_shift``; scaled to the
  backbone's input size, then to slice voxels), clipped to a 3D box's in-plane rectangle. The
  walk stops in a direction where the mask vanishes: the slices beyond stay background. Every
  slice of the z range is predicted (the reference skips the first and the last: not here).
- ``"fixed"``: the box's in-plane rectangle on every slice of its z range (the former behaviour).

Cost: every slice is encoded at most once, lazily (when a live prompt first needs it; start slices
and fixed boxes up to ``batch_size`` at a time), and dropped after its last use;
prompts on one slice are decoded together in batches of ``decode_batch``. Results go to a
callback per (prompt, slice); :class:`RunningMaximum` merges them into a label map with memory of
two volume-sized arrays, whatever the number of prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

#: Margin (pixels of a 256-pixel backbone input, each side) added to the previous slice's mask box
#: when propagating; LiteMedSAM's reference adds 5 at 256 (``bbox_shift``).
PROPAGATION_MARGIN_PX = 5.0
#: Default bound on the number of box prompts of one call (``max_boxes``; ``--max-boxes``).
DEFAULT_MAX_BOXES = 256
#: Largest label value: label maps are written as int16.
MAX_LABEL = int(np.iinfo(np.int16).max)
BOX_MODES = ("propagate", "fixed")


@dataclass(frozen=True)
class BoxPrompt:
    """One box prompt of a label: in-plane box ``(y0, x0, y1, x1)`` on slice ``z`` (where the walk
    starts), the z range ``z_lo..z_hi`` it covers, and whether propagated boxes are clipped to the
    in-plane box (a 3D box bounds the structure on every slice; a challenge 2D box only on its own)."""

    label: int
    z: int
    yx: tuple[int, int, int, int]
    z_lo: int
    z_hi: int
    clip: bool = True

    @classmethod
    def from_box3d(cls, label: int, box: Sequence[int]) -> "BoxPrompt":
        z0, y0, x0, z1, y1, x1 = (int(v) for v in box)
        return cls(int(label), (z0 + z1) // 2, (y0, x0, y1, x1), z0, z1, True)

    @classmethod
    def from_box2d(cls, label: int, b) -> "BoxPrompt":
        """From an :class:`autosam.prompts.Box2D`."""
        return cls(int(label), int(b.z), (int(b.y0), int(b.x0), int(b.y1), int(b.x1)), int(b.z_lo), int(b.z_hi), False)

    def slices(self, mode: str) -> list[tuple[int, list[int]]]:
        """``[(phase, slices in visiting order)]``: phase 0 the start slice, 1 up, 2 down (``fixed``: one
        phase, every slice with the box)."""
        if mode == "fixed":
            return [(1, list(range(self.z_lo, self.z_hi + 1)))]
        return [(0, [self.z]), (1, list(range(self.z + 1, self.z_hi + 1))), (2, list(range(self.z - 1, self.z_lo - 1, -1)))]


def check_box_count(n: int, max_boxes: int | None, flag: str = "--max-boxes") -> None:
    """Refuse more than ``max_boxes`` box prompts (``None``: no limit), saying how to raise it."""
    if max_boxes is not None and n > int(max_boxes):
        raise ValueError(f"{n} box prompts exceed the limit of {int(max_boxes)} (each box costs a decoder pass per "
                         f"slice); pass {flag} {n} to allow them")


def check_label_value(label: int) -> int:
    """A label value that fits the int16 label map (1..:data:`MAX_LABEL`)."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 < int(label) <= MAX_LABEL:
        raise ValueError(f"label {label!r}: label values must be integers in 1..{MAX_LABEL} (the label map is int16)")
    return int(label)


def propagate_boxes(frame, volume: np.ndarray, prompts: Sequence[BoxPrompt],
                    on_slice: Callable[[BoxPrompt, int, np.ndarray], None], *, mode: str = "propagate",
                    threshold: float = 0.5, batch_size: int = 8, decode_batch: int = 16, mask_decoder=None,
                    progress: Callable[[int, int], None] | None = None, stats: dict | None = None,
                    embeddings: dict[int, torch.Tensor] | None = None) -> None:
    """Predict each prompt's slices (module docstring), calling ``on_slice(prompt, z, probabilities)``
    with the ``Y x X`` float32 probabilities of every slice predicted.

    ``frame``: a :class:`autosam.sam.box_segment.SliceFrame` of ``volume`` (``Z x Y x X``).
    ``stats`` (a dict) receives ``encoded_slices`` and ``decoded_prompts``; ``progress(done, total)``
    counts prompt-slices (those skipped after the mask vanished included). ``embeddings``: a dict
    ``z -> 1 x C x h x w`` kept by the caller across calls (an interactive session): slices found
    there are not encoded again, slices encoded are added and never dropped."""
    if mode not in BOX_MODES:
        raise ValueError(f"box mode must be one of {', '.join(BOX_MODES)}; got {mode!r}")
    prompts = list(prompts)
    total = sum(p.z_hi - p.z_lo + 1 for p in prompts)
    counts = {"encoded_slices": 0, "decoded_prompts": 0}
    # phase -> slice -> prompts visiting it; uses left per slice (its embedding is dropped after the last)
    visits: dict[int, dict[int, list[int]]] = {}
    uses: dict[int, int] = {}
    for i, p in enumerate(prompts):
        for phase, zs in p.slices(mode):
            for z in zs:
                visits.setdefault(phase, {}).setdefault(z, []).append(i)
                uses[z] = uses.get(z, 0) + 1
    keep = embeddings is not None
    cache: dict[int, torch.Tensor] = embeddings if keep else {}
    box: dict[tuple[int, int], tuple[float, ...] | None] = {}  # (prompt, phase) -> its box on the next slice
    my, mx = frame.margin_voxels(PROPAGATION_MARGIN_PX)
    done = 0

    def release(z: int, n: int) -> None:
        uses[z] -= n
        if uses[z] <= 0 and not keep:
            cache.pop(z, None)

    def mask_box(p: BoxPrompt, prob: np.ndarray) -> tuple[float, ...] | None:
        ys, xs = np.nonzero(prob > threshold)
        if ys.size == 0:
            return None
        lo_y, lo_x, hi_y, hi_x = p.yx if p.clip else (0, 0, volume.shape[1] - 1, volume.shape[2] - 1)
        return (max(float(lo_y), ys.min() - my), max(float(lo_x), xs.min() - mx),
                min(float(hi_y), ys.max() + my), min(float(hi_x), xs.max() + mx))

    for phase in sorted(visits):
        order = sorted(visits[phase], reverse=phase == 2)
        for zi, z in enumerate(order):
            work = []
            for i in visits[phase][z]:
                b = tuple(map(float, prompts[i].yx)) if phase == 0 or mode == "fixed" else box.get((i, phase))
                if b is None:  # the mask vanished on the previous slice: this walk has stopped
                    release(z, 1)
                    done += 1
                else:
                    work.append((i, b))
            if not work:
                continue
            if z not in cache:
                # read ahead only where every slice is predicted anyway (start slices, fixed boxes): a
                # walk may stop at the next slice
                live = {i for i, _ in work} if phase == 0 or mode == "fixed" else set()
                ahead = [u for u in order[zi + 1:] if u not in cache and live & set(visits[phase][u])]
                batch = [z] + ahead[:max(0, batch_size - 1)]
                emb = frame.encode(volume[batch], batch_size=batch_size)
                counts["encoded_slices"] += len(batch)
                cache.update({u: emb[k:k + 1] for k, u in enumerate(batch)})
            for start in range(0, len(work), max(1, decode_batch)):
                chunk = work[start:start + max(1, decode_batch)]
                with torch.no_grad():
                    probs = torch.sigmoid(frame.decode(cache[z], frame.rects([b for _, b in chunk]), mask_decoder))
                counts["decoded_prompts"] += len(chunk)
                for (i, _), prob in zip(chunk, probs.float().cpu().numpy()):
                    on_slice(prompts[i], z, prob)
                    if mode == "propagate":
                        nb = mask_box(prompts[i], prob)
                        for ph in ((1, 2) if phase == 0 else (phase,)):
                            box[(i, ph)] = nb
            release(z, len(work))
            done += len(work)
            if progress is not None:
                progress(done, total)
    if progress is not None and done < total:
        progress(total, total)
    if stats is not None:
        stats.update(counts)


class RunningMaximum:
    """Label merging with one running maximum: per voxel the highest probability seen and its label;
    :meth:`label_map` keeps the label where that probability exceeds the threshold (the same as the
    most probable label of per-label maxima; ties go to the prompt seen first).
    ``keep_probabilities``: also keep, per label, the running maximum of each slice its prompts
    predicted (``label -> {z: Y x X float32}``)."""

    def __init__(self, shape: Sequence[int], keep_probabilities: bool = False):
        self.best = np.zeros(tuple(shape), dtype=np.float32)
        self.labels = np.zeros(tuple(shape), dtype=np.int16)
        self.probabilities: dict[int, dict[int, np.ndarray]] | None = {} if keep_probabilities else None

    def __call__(self, prompt: BoxPrompt, z: int, prob: np.ndarray) -> None:
        better = prob > self.best[z]
        self.best[z][better] = prob[better]
        self.labels[z][better] = prompt.label
        if self.probabilities is not None:
            per = self.probabilities.setdefault(prompt.label, {})
            # a copy, not a view that would keep the whole decoded batch alive
            per[z] = np.array(prob, dtype=np.float32) if z not in per else np.maximum(per[z], prob)

    def label_map(self, threshold: float = 0.5) -> np.ndarray:
        out = self.labels.copy()
        out[self.best <= threshold] = 0
        return out
