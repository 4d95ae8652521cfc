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



def ct_window_in_normalised_units(scheme: str, properties: dict | None,
                                  window: tuple[float, float] = CT_WINDOWS["abdomen"]) -> tuple[float, float] | None:
    """``window`` (HU) in the units a preprocessed channel is stored in, or ``None`` when the
    channel is not CT (``scheme`` is not ``CTNormalization``) or its intensity properties are unknown.

    Preprocessing clips CT to the dataset's foreground 0.5-99.5 percentiles and z-scores it with the
    foreground mean/std (nnU-Net's CTNormalization), so HU are gone by the time a method sees the
    data, while MedSAM and LiteMedSAM were trained on the soft-tissue window W400/L40. This maps the
    window through the same affine map, clipped to the range the data were clipped to.

    :param scheme: the channel's normalisation scheme (``configuration.normalization_schemes[c]``).
    :param properties: the channel's ``foreground_intensity_properties_per_channel`` entry of the plans.
    """
    if scheme != "CTNormalization" or not properties:
        return None
    p_lo, p_hi = float(properties["percentile_00_5"]), float(properties["percentile_99_5"])
    lo, hi = max(float(window[0]), p_lo), min(float(window[1]), p_hi)
    if not hi > lo:  # the window lies outside the data's range: the whole clipped range instead
        lo, hi = p_lo, p_hi
    mean, std = float(properties["mean"]), max(float(properties["std"]), 1e-8)
    return (lo - mean) / std, (hi - mean) / std


def method_window(ctx, option=None, channel: int = 0) -> tuple[float, float] | None:
    """The clip window a 2D SAM method applies to preprocessed slices before min-max scaling:
    ``option`` (the method's ``window`` option, in normalised units) when given; else, when channel
    ``channel`` is CT, MedSAM's soft-tissue window in its normalised units
    (:func:`ct_window_in_normalised_units`); else ``None`` (each slice's own range, right for
    z-scored MR). Measured on the TotalSegmentator example CT with LiteMedSAM and the reference
    boxes: Dice 0.75 with the volume's 0.5-99.5 percentiles of the z-scored CT, 0.88 with the
    soft-tissue window (``benchmarks/sam_probes/ct_window.py``)."""
    if option is not None:
        lo, hi = (float(v) for v in option)
        if not hi > lo:
            raise ValueError(f"window must be (low, high) with high > low, got {list(option)}")
        return lo, hi
    schemes = list(getattr(ctx.configuration, "normalization_schemes", None) or [])
    props = (getattr(ctx.plans, "foreground_intensity_properties_per_channel", None) or {}).get(str(channel))
    return ct_window_in_normalised_units(schemes[channel], props) if channel < len(schemes) else None
