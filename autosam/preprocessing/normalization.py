"""Intensity normalisation per channel, selected by the plans' ``normalization_schemes``.

- ``CTNormalization``: clip to the dataset's foreground 0.5/99.5 percentiles, subtract the
  foreground mean, divide by the foreground std (all from the fingerprint, via the plans);
- ``ZScoreNormalization``: per image mean/std; with ``use_mask_for_norm`` only inside the
  non-zero mask, and voxels outside the mask are set to 0. Before the mean and std are taken, the
  image is clipped to its own 0.5/99.5 percentiles (inside the mask when one is used). This
  departs from nnU-Net, which z-scores the raw values: one hot voxel (MR scans have them; a
  Decathlon hippocampus case reaches 1.7e6 next to tissue in the hundreds) would otherwise inflate
  the std so much that all tissue lands within a tiny fraction of a unit around 0. On an image
  without such outliers the clip moves only its extreme 1% of voxels to the tails;
- ``RescaleTo01Normalization``: per image min/max to [0, 1];
- ``NoNormalization``: float32 cast only.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-8
#: ZScoreNormalization clips each image to these percentiles of its own (masked) values first.
ZSCORE_CLIP_PERCENTILES = (0.5, 99.5)


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
        values = channel[mask] if mask is not None else channel
        if values.size:
            lo, hi = (float(v) for v in np.percentile(values, ZSCORE_CLIP_PERCENTILES))
            np.clip(channel, lo, hi, out=channel)
            values = channel[mask] if mask is not None else channel
            mean = float(values.mean(dtype=np.float64))
            std = float(values.std(dtype=np.float64))
        else:
            mean, std = 0.0, 1.0
        channel -= mean
        channel /= max(std, EPS)
        if mask is not None:
            channel[~mask] = 0
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
