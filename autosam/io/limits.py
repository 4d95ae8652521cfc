"""Bounds on what a small input may demand: voxels of an image, bytes a zip unpacks to.

A 2 MB ``.nii.gz`` may declare a 1024 x 1024 x 512 volume and a 100 kB zip may unpack to gigabytes;
both are checked against these limits *before* anything is allocated or written. Each limit has a
default for ordinary medical images and models, an environment variable, and a command-line flag
(which sets the variable, so worker processes see it too); the error names both.
"""
from __future__ import annotations

import os

#: 400 million voxels per image: a 512 x 512 x 1500 whole-body CT fits, a 1024 x 1024 x 512 volume does not.
DEFAULT_MAX_VOXELS = 400_000_000
ENV_MAX_VOXELS = "AUTOSAM_MAX_VOXELS"
#: What a model zip may unpack to, in GB (a SAM-sized model of 5 folds with 2 checkpoints is ~10 GB).
DEFAULT_MAX_UNPACKED_GB = 50.0
ENV_MAX_UNPACKED_GB = "AUTOSAM_MAX_UNPACKED_GB"


class LimitError(ValueError):
    """An input demands more than a limit allows; the message says how to raise the limit."""


def _read(env: str, default: float, kind: type) -> float:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = kind(float(text)) if kind is int else float(text)
    except ValueError:
        raise LimitError(f"{env}={text!r}: not a number") from None
    if value <= 0:
        raise LimitError(f"{env}={text!r}: must be positive")
    return value


def max_voxels() -> int:
    """The voxel limit per image: ``AUTOSAM_MAX_VOXELS`` or :data:`DEFAULT_MAX_VOXELS`."""
    return int(_read(ENV_MAX_VOXELS, DEFAULT_MAX_VOXELS, int))


def max_unpacked_bytes() -> int:
    """What a model zip may unpack to: ``AUTOSAM_MAX_UNPACKED_GB`` (GB) or :data:`DEFAULT_MAX_UNPACKED_GB`."""
    return int(_read(ENV_MAX_UNPACKED_GB, DEFAULT_MAX_UNPACKED_GB, float) * 1e9)


def check_voxels(name: str, shape, channels: int = 1) -> None:
    """Raise :class:`LimitError` (naming ``name``) when an image of ``shape`` exceeds :func:`max_voxels`."""
    count = 1
    for s in shape:
        count *= int(s)
    limit = max_voxels()
    if count > limit:
        dims = " x ".join(str(int(s)) for s in shape)
        raise LimitError(
            f"{name}: {dims} = {count:,} voxels exceeds the limit of {limit:,} per image (reading it would take "
            f"about {count * 4 * max(channels, 1) / 1e9:.1f} GB as float32, several times that to process); if the "
            f"image is genuine, raise the limit with --max_voxels {count} or {ENV_MAX_VOXELS}={count}")


def check_unpacked_size(name: str, needed: int) -> None:
    """Raise :class:`LimitError` when a zip would unpack to more than :func:`max_unpacked_bytes`."""
    limit = max_unpacked_bytes()
    if needed > limit:
        gb = -(-needed // 10**7) / 100  # rounded up to 0.01 GB
        raise LimitError(
            f"{name}: unpacks to {needed / 1e9:.2f} GB, more than the limit of {limit / 1e9:.2f} GB; nothing was "
            f"installed. If you trust the zip, raise the limit with --max_unpacked_gb {gb:g} or "
            f"{ENV_MAX_UNPACKED_GB}={gb:g}")


def set_limits(max_voxels: int | None = None, max_unpacked_gb: float | None = None) -> None:
    """Command-line flags -> the environment (read by this process, its threads and workers)."""
    if max_voxels is not None:
        os.environ[ENV_MAX_VOXELS] = str(int(max_voxels))
    if max_unpacked_gb is not None:
        os.environ[ENV_MAX_UNPACKED_GB] = repr(float(max_unpacked_gb))
