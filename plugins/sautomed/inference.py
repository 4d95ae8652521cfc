"""Whole-volume inference of 3D-SAutoMed: every slice, middle slice outward to both ends.

Slices larger than the trained in-plane size are cut into overlapping tiles (half-tile steps);
every tile is its own slice sequence (history and boxes are per tile), tiles and both directions
are batched together, and tile probabilities are blended with Gaussian weights. Smaller slices
are zero-padded as the training loader pads them.
"""
from __future__ import annotations

import itertools
import logging

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def tile_starts(size: int, tile: int, step_size: float = 0.5) -> list[int]:
    """Start positions of tiles of ``tile`` covering ``size``, at most ``step_size`` tiles apart
    (0.5: about half-tile overlap)."""
    if size <= tile:
        return [0]
    n = int(np.ceil((size - tile) / (tile * step_size))) + 1
    return [int(round(v)) for v in np.linspace(0, size - tile, n)]


def gaussian_weights(tile: tuple[int, int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net-style importance map of a tile (centre 1, borders small but non-zero)."""
    axes = []
    for n in tile:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-3)) ** 2))
    w = axes[0][:, None] * axes[1][None, :]
    return (w / w.max()).clamp_min(1e-3)


@torch.no_grad()
def predict_volume_middle_out(network, data: torch.Tensor, slice_size, num_classes: int, device, *,
                              tile_batch: int = 4, use_mirroring: bool = True, progress: bool = False,
                              step_size: float = 0.5) -> torch.Tensor:
    """Class probabilities ``K x Z x Y x X`` (float32, CPU) of ``data`` (``C x Z x Y x X``)."""
    if data.dim() != 4:
        raise ValueError(f"predict_volume expects C x Z x Y x X, got shape {tuple(data.shape)}")
    was_training = network.training
    network.eval()
    try:
        probs = _predict(network, data, slice_size, num_classes, device, tile_batch, progress, step_size)
        if use_mirroring:
            flipped = _predict(network, data.flip(-1), slice_size, num_classes, device, tile_batch, progress, step_size)
            probs = (probs + flipped.flip(-1)) / 2
    finally:
        network.train(was_training)
    return probs


def padded_tiles(data: torch.Tensor, slice_size, step_size: float = 0.5):
    """``data`` zero-padded to at least one tile in-plane, and the tiles' starts ``(sy, sx)``."""
    c, z_len, y, x = data.shape
    ty, tx = int(slice_size[0]), int(slice_size[1])
    py, px = max(y, ty), max(x, tx)
    padded = torch.zeros((c, z_len, py, px), dtype=torch.float32)
    padded[:, :, :y, :x] = data.float()
    return padded, list(itertools.product(tile_starts(py, ty, step_size), tile_starts(px, tx, step_size)))


def _predict(network, data, slice_size, num_classes, device, tile_batch, progress, step_size=0.5, features=None,
             guide_for_tile=None) -> torch.Tensor:
    """``features``: ``(sy, sx) -> Z x E x h x w`` encoder features of each tile (an interactive
    cache); ``guide_for_tile((sy, sx), z)``: user boxes ``(given F, boxes F x 4, exact F)`` or None."""
    c, z_len, y, x = data.shape
    ty, tx = int(slice_size[0]), int(slice_size[1])
    padded, tiles = padded_tiles(data, slice_size, step_size)
    py, px = padded.shape[-2:]
    weight = gaussian_weights((ty, tx)) if len(tiles) > 1 else torch.ones((ty, tx))
    out = torch.zeros((num_classes, z_len, py, px), dtype=torch.float32)
    norm = torch.zeros((py, px), dtype=torch.float32)
    for sy, sx in tiles:
        norm[sy:sy + ty, sx:sx + tx] += weight
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tiles) * z_len, desc="sautomed slices", leave=False)
    for group_start in range(0, len(tiles), max(1, tile_batch)):
        group = tiles[group_start:group_start + tile_batch]
        vol = torch.stack([padded[:, :, sy:sy + ty, sx:sx + tx] for sy, sx in group]).to(device)

        def on_slice(z: int, logits: torch.Tensor, w: float, group=group) -> None:
            p = F.interpolate(logits, size=(ty, tx), mode="bilinear", align_corners=False).softmax(1).float().cpu()
            for i, (sy, sx) in enumerate(group):
                out[:, z, sy:sy + ty, sx:sx + tx] += (w * p[i]) * weight
            if bar is not None:
                bar.update(w * len(group))

        feats = torch.stack([features[t] for t in group]).to(device) if features is not None else None
        guide_for = None
        if guide_for_tile is not None:
            from .network import BoxGuide

            def guide_for(z: int, group=group):
                parts = [guide_for_tile(t, z) for t in group]
                if all(p is None for p in parts):
                    return None
                f = num_classes - 1
                parts = [p if p is not None else (torch.zeros(f, dtype=torch.bool), torch.zeros(f, 4),
                                                  torch.zeros(f, dtype=torch.bool)) for p in parts]
                return BoxGuide(*(torch.stack([p[k] for p in parts]).to(device) for k in range(3)))

        network.segment(vol, on_slice, features=feats, guide_for=guide_for)
    if bar is not None:
        bar.close()
    out /= norm
    return out[:, :, :y, :x].contiguous()
