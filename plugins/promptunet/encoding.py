"""Prompt channels: how ``promptunet`` sees the prompts of one image.

For every foreground class ``c`` (label value ``1..F``, the network's output channel ``c``) four
channels follow the image channels, at ``C + 4 * (c - 1) + k``:

====  =================  ============================================================================
k     channel            value
====  =================  ============================================================================
0     box                1 inside every 3D box; for the challenge's 2D box, 1 inside the rectangle on
                         its slice ``z`` and :data:`BOX2D_RANGE_VALUE` (0.5) inside the same rectangle
                         on the other slices of its z range ``z_lo..z_hi`` (the structure is roughly
                         there, but its outline on those slices is unknown); the maximum where
                         boxes overlap
1     positive clicks    1 in a ball of radius :data:`CLICK_RADIUS` voxels around each positive click
2     negative clicks    the same for negative clicks
3     previous mask      1 where the previous mask of the class is set
====  =================  ============================================================================

Every channel of a class without prompts is 0: the network then segments that class automatically.
Coordinates are voxel indices on the grid of the image the channels are built for (the preprocessed
grid inside the method), inclusive at both ends; the ball radius is in voxels of that grid.

The same function builds the channels of the simulated prompts in training and of the user's prompts
at prediction, so the two cannot disagree.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from autosam.prompts import LabelPrompts

CHANNELS_PER_CLASS = 4
BOX, POSITIVE, NEGATIVE, MASK = range(CHANNELS_PER_CLASS)
#: value of the 2D box's rectangle on the slices of its z range other than its own slice
BOX2D_RANGE_VALUE = 0.5
#: radius (voxels of the preprocessed grid) of the ball painted at each click
CLICK_RADIUS = 2


def num_prompt_channels(num_foreground: int) -> int:
    """Prompt channels of a network with ``num_foreground`` foreground classes."""
    return CHANNELS_PER_CLASS * int(num_foreground)


def _ball(radius: int) -> np.ndarray:
    r = int(radius)
    zz, yy, xx = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (zz ** 2 + yy ** 2 + xx ** 2) <= r * r


def paint_ball(channel: np.ndarray, centre: Sequence[int], radius: int = CLICK_RADIUS) -> None:
    """Set ``channel`` (Z x Y x X) to 1 in a ball of ``radius`` voxels around ``centre``, clipped at
    the borders."""
    ball = _ball(radius)
    r = int(radius)
    dst, src = [], []
    for c, size in zip(centre, channel.shape):
        lo, hi = int(c) - r, int(c) + r + 1
        dst.append(slice(max(lo, 0), min(hi, size)))
        src.append(slice(max(lo, 0) - lo, 2 * r + 1 - (hi - min(hi, size))))
    region = channel[tuple(dst)]
    np.maximum(region, ball[tuple(src)].astype(channel.dtype), out=region)


def paint_label_prompts(channels: np.ndarray, prompts: LabelPrompts, radius: int = CLICK_RADIUS) -> None:
    """Paint one class's prompts into its four channels (``4 x Z x Y x X``, modified in place)."""
    box = channels[BOX]
    for z0, y0, x0, z1, y1, x1 in prompts.boxes3d:
        box[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1] = 1.0
    b = prompts.box2d
    if b is not None:
        rect = box[b.z_lo:b.z_hi + 1, b.y0:b.y1 + 1, b.x0:b.x1 + 1]
        np.maximum(rect, BOX2D_RANGE_VALUE, out=rect)
        box[b.z, b.y0:b.y1 + 1, b.x0:b.x1 + 1] = 1.0
    for p in prompts.points:
        paint_ball(channels[POSITIVE if p.positive else NEGATIVE], (p.z, p.y, p.x), radius)
    if prompts.previous_mask is not None:
        np.maximum(channels[MASK], np.asarray(prompts.previous_mask, dtype=bool), out=channels[MASK])


def rasterise_prompts(prompts: Mapping[int, LabelPrompts], shape: Sequence[int], num_foreground: int,
                      radius: int = CLICK_RADIUS) -> np.ndarray:
    """The prompt channels (``4 * num_foreground x Z x Y x X``, float32) of ``prompts`` (label value ->
    :class:`~autosam.prompts.LabelPrompts`) on a grid of ``shape``. Raises ``ValueError`` for a label
    outside ``1..num_foreground`` or a prompt outside the grid."""
    shape = tuple(int(s) for s in shape)
    out = np.zeros((num_prompt_channels(num_foreground), *shape), dtype=np.float32)
    for label, p in prompts.items():
        label = int(label)
        if not 1 <= label <= num_foreground:
            raise ValueError(f"prompt for label {label}: this model segments the labels 1..{num_foreground}")
        p.validate(shape, label)
        first = CHANNELS_PER_CLASS * (label - 1)
        paint_label_prompts(out[first:first + CHANNELS_PER_CLASS], p, radius)
    return out
