"""Prompts: what a user (a viewer, or the interactive evaluator) tells a promptable method about one
structure of one image.

A case's prompts are a mapping ``label value -> LabelPrompts``. All coordinates are voxel indices
``(z, y, x)`` in the array order of :func:`autosam.io.image.read_image` on the grid the prompts are
given for (the input image for users; the configuration's preprocessed grid inside a method, see
:mod:`autosam.inference.prompt_mapping`), inclusive at both ends.

The kinds of prompt (:data:`PROMPT_KINDS`):

- ``box3d``: one or more 3D boxes ``(z0, y0, x0, z1, y1, x1)``;
- ``box2d``: the CVPR 2025 interactive challenge's box: a 2D box ``(y0, x0, y1, x1)`` on one slice
  ``z`` (the structure's middle slice) plus the z range ``(z_lo, z_hi)`` the structure spans;
- ``points``: clicks, each positive (inside the structure) or negative (outside);
- ``mask``: a previous mask of the structure to refine (a boolean ``Z x Y x X`` array).

A method declares the kinds it takes in ``Method.prompt_kinds``; :func:`check_prompt_kinds` gives
the clear error for a kind it does not take.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

PROMPT_KINDS = ("box3d", "box2d", "points", "mask")

Box3D = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Box2D:
    """The challenge's box: ``(y0, x0, y1, x1)`` on slice ``z``, the structure spanning ``z_lo..z_hi``."""

    z: int
    y0: int
    x0: int
    y1: int
    x1: int
    z_lo: int
    z_hi: int

    def as_box3d(self) -> Box3D:
        """The 3D box the 2D box and its z range span (the in-plane box repeated on every slice)."""
        return (self.z_lo, self.y0, self.x0, self.z_hi, self.y1, self.x1)


@dataclass(frozen=True)
class Point:
    """A click at voxel ``(z, y, x)``: positive inside the structure, negative outside."""

    z: int
    y: int
    x: int
    positive: bool = True


@dataclass
class LabelPrompts:
    """The prompts for one structure (label value)."""

    boxes3d: list[Box3D] = field(default_factory=list)
    box2d: Box2D | None = None
    points: list[Point] = field(default_factory=list)
    previous_mask: np.ndarray | None = None  # bool, Z x Y x X on the same grid

    def kinds(self) -> set[str]:
        """The prompt kinds present."""
        out = set()
        if self.boxes3d:
            out.add("box3d")
        if self.box2d is not None:
            out.add("box2d")
        if self.points:
            out.add("points")
        if self.previous_mask is not None:
            out.add("mask")
        return out

    def bounding_box(self) -> Box3D | None:
        """One 3D box around every box given (3D boxes, the 2D box's span), or None without boxes."""
        boxes = list(self.boxes3d) + ([self.box2d.as_box3d()] if self.box2d is not None else [])
        if not boxes:
            return None
        arr = np.asarray(boxes, dtype=np.int64)
        return tuple(int(v) for v in (*arr[:, :3].min(0), *arr[:, 3:].max(0)))  # type: ignore[return-value]

    def validate(self, shape: Sequence[int], label: int | None = None) -> None:
        """Raise ``ValueError`` naming the prompt when a coordinate lies outside ``shape`` (Z, Y, X)."""
        what = f"label {label}" if label is not None else "prompt"
        for box in self.boxes3d:
            if len(box) != 6:
                raise ValueError(f"{what}: a 3D box needs 6 numbers z0 y0 x0 z1 y1 x1, got {list(box)}")
            for axis, name in enumerate("zyx"):
                lo, hi = int(box[axis]), int(box[axis + 3])
                if not 0 <= lo <= hi < shape[axis]:
                    raise ValueError(f"{what}: 3D box {list(box)}: {name}0={lo}, {name}1={hi} must satisfy "
                                     f"0 <= {name}0 <= {name}1 < {shape[axis]} (shape z,y,x = {tuple(shape)})")
        if self.box2d is not None:
            b = self.box2d
            if not (0 <= b.z_lo <= b.z <= b.z_hi < shape[0]):
                raise ValueError(f"{what}: 2D box slice z={b.z} and range {b.z_lo}..{b.z_hi} must satisfy "
                                 f"0 <= z_lo <= z <= z_hi < {shape[0]}")
            if not (0 <= b.y0 <= b.y1 < shape[1] and 0 <= b.x0 <= b.x1 < shape[2]):
                raise ValueError(f"{what}: 2D box y {b.y0}..{b.y1}, x {b.x0}..{b.x1} lies outside the slice "
                                 f"{shape[1]} x {shape[2]}")
        for p in self.points:
            if not (0 <= p.z < shape[0] and 0 <= p.y < shape[1] and 0 <= p.x < shape[2]):
                raise ValueError(f"{what}: click ({p.z}, {p.y}, {p.x}) lies outside the image (shape z,y,x = "
                                 f"{tuple(shape)})")
        if self.previous_mask is not None and tuple(self.previous_mask.shape) != tuple(shape):
            raise ValueError(f"{what}: previous mask has shape {tuple(self.previous_mask.shape)}, the image "
                             f"{tuple(shape)}")


CasePrompts = Mapping[int, LabelPrompts]


def prompt_kinds_used(prompts: CasePrompts) -> set[str]:
    """Every kind used by any label."""
    return set().union(*(p.kinds() for p in prompts.values())) if prompts else set()


def check_prompt_kinds(method_name: str, accepted: Iterable[str], prompts: CasePrompts) -> None:
    """Raise ``ValueError`` when ``prompts`` use a kind the method does not take."""
    accepted = set(accepted)
    used = prompt_kinds_used(prompts)
    if not accepted and used:
        raise ValueError(f"method {method_name!r} takes no prompts (it segments automatically); prompts given: "
                         f"{', '.join(sorted(used))}")
    extra = used - accepted
    if extra:
        raise ValueError(f"method {method_name!r} does not take {', '.join(sorted(extra))} prompts; it takes: "
                         f"{', '.join(k for k in PROMPT_KINDS if k in accepted)}")


def prompts_from_boxes(boxes: Mapping[int, Sequence[Sequence[int]]]) -> dict[int, LabelPrompts]:
    """``label -> list of 3D boxes`` (the ``--boxes-json`` form) as prompts."""
    return {int(lab): LabelPrompts(boxes3d=[tuple(int(v) for v in b) for b in bs]) for lab, bs in boxes.items()}


def box2d_from_mask(mask: np.ndarray) -> Box2D:
    """The challenge's box prompt of a structure: its 2D bounding box on the middle slice of its z range
    (the slice ``(z_lo + z_hi) // 2``; when that slice is empty, the nonempty slice nearest to it)."""
    mask = np.asarray(mask, dtype=bool)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("empty mask: no box prompt")
    z_lo, z_hi = int(zs[0]), int(zs[-1])
    mid = (z_lo + z_hi) // 2
    z = int(zs[np.argmin(np.abs(zs - mid))])
    ys, xs = np.nonzero(mask[z])
    return Box2D(z=z, y0=int(ys.min()), x0=int(xs.min()), y1=int(ys.max()), x1=int(xs.max()), z_lo=z_lo, z_hi=z_hi)
