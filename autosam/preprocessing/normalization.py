"""Intensity normalisation per channel, selected by the plans' ``normalization_schemes``.

- ``CTNormalization``: clip to the dataset's foreground 0.5/99.5 percentiles, subtract the
  foreground mean, divide by the foreground std (all from the fingerprint, via the plans);
- ``ZScoreNormalization``: per image mean/std; with ``use_mask_for_norm`` only inside the
  non-zero mask, and voxels outside the mask are set to 0;
- ``RescaleTo01Normalization``: per image min/max to [0, 1];
- ``NoNormalization``: float32 cast only.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-8


def normalize_channel(channel: np.ndarray, scheme: str, intensity_properties: dict | None = None,
                      mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel (Z x Y x X float32) in place and return it."""
    if scheme == "CTNormalization":
        if not intensity_properties:
            raise ValueError("CTNormalization needs the foreground intensity properties of the channel (fingerprint)")
        lo = float(intensity_properties["percentile_00_5"])
        hi = float(intensity_properties["percentile_99_5"])
        mean = float(intensity_properties["mean"])
        std = float(intensity_properties["std"])
        np.clip(channel, lo, hi, out=channel)
        channel -= mean
        channel /= max(std, EPS)
    elif scheme == "ZScoreNormalization":
        if mask is not None:
            values = channel[mask]
            mean = float(values.mean()) if values.size else 0.0
            std = float(values.std()) if values.size else 1.0
            channel -= mean
            channel /= max(std, EPS)
            channel[~mask] = 0
        else:
            mean = float(channel.mean(dtype=np.float64))
            std = float(channel.std(dtype=np.float64))
            channel -= mean
            channel /= max(std, EPS)
    elif scheme == "RescaleTo01Normalization":
        lo, hi = float(channel.min()), float(channel.max())
        channel -= lo
        channel /= max(hi - lo, EPS)
    elif scheme != "NoNormalization":
        raise ValueError(f"unknown normalisation scheme {scheme!r}; known: CTNormalization, ZScoreNormalization, "
                         "RescaleTo01Normalization, NoNormalization")
    return channel


def normalize(data: np.ndarray, schemes: list[str], use_mask: list[bool], intensity_properties: dict,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise C x Z x Y x X float32 ``data`` in place, channel by channel."""
    if len(schemes) != data.shape[0]:
        raise ValueError(f"plans give {len(schemes)} normalisation schemes for {data.shape[0]} channels")
    for c, scheme in enumerate(schemes):
        m = mask if use_mask[c] else None
        if use_mask[c] and mask is None:
            raise ValueError(f"channel {c}: use_mask_for_norm needs the non-zero mask")
        normalize_channel(data[c], scheme, intensity_properties.get(str(c)), m)
    return data
