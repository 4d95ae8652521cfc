"""Mapping normalised medical images into the input range a SAM encoder was trained on.

Every backbone states its expected input in its :class:`~autosam.sam.registry.BackboneSpec`
(``intensity``); the functions here implement the two steps the core applies to a slice:

1. **window**: clip to an intensity window (given in the units of the data: HU for raw CT, z-score
   units for preprocessed data) and rescale each image to ``[0, 1]`` by its own min/max inside the
   window (MedSAM's recipe: window, then min-max);
2. **backbone normalisation**: ``"sam_rgb"`` multiplies by 255 and applies SAM's RGB-uint8
   pixel mean/std; ``"unit"`` keeps ``[0, 1]`` (LiteMedSAM was trained on that); ``"zscore"``
   standardises each volume (SAM-Med3D).
"""
from __future__ import annotations

import torch

#: SAM's pixel statistics (RGB, uint8 scale) from the segment-anything package.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

#: Common CT windows in HU (level - width/2, level + width/2).
CT_WINDOWS = {
    "abdomen": (-160.0, 240.0),  # W400 L40, MedSAM's soft-tissue window
    "lung": (-1000.0, 200.0),
    "bone": (-450.0, 1050.0),
}


def window_to_unit(x: torch.Tensor, window: tuple[float, float] | None = None, dims: int = 2) -> torch.Tensor:
    """Clip ``x`` to ``window`` (if given) and min-max scale every image to ``[0, 1]``.

    :param x: ``B x C x H x W`` (``dims=2``) or ``B x C x D x H x W`` (``dims=3``).
    :param window: ``(low, high)`` in the units of ``x``; ``None`` uses each image's own range.
    :param dims: number of spatial dimensions; min/max are taken per batch element over
        channels and space, so channels keep their relative contrast.
    """
    x = x.float()
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise ValueError(f"intensity window must have high > low, got {window}")
        x = x.clamp(lo, hi)
    flat = x.reshape(x.shape[0], -1)
    mn = flat.min(dim=1).values.view(-1, *([1] * (dims + 1)))
    mx = flat.max(dim=1).values.view(-1, *([1] * (dims + 1)))
    return (x - mn) / (mx - mn).clamp_min(1e-8)


def normalise_for_backbone(x01: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply a backbone's own normalisation to images in ``[0, 1]`` (``B x 3 x H x W`` for 2D)."""
    if mode == "sam_rgb":
        mean = torch.tensor(SAM_PIXEL_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        return (x01 * 255.0 - mean) / std
    if mode == "unit":
        return x01
    if mode == "zscore":
        flat = x01.reshape(x01.shape[0], -1)
        mean = flat.mean(dim=1).view(-1, *([1] * (x01.dim() - 1)))
        std = flat.std(dim=1).view(-1, *([1] * (x01.dim() - 1)))
        return (x01 - mean) / std.clamp_min(1e-6)
    raise ValueError(f"unknown backbone normalisation {mode!r} (known: sam_rgb, unit, zscore)")
