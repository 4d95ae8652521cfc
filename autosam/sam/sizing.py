"""How big the slices fed to a 2D SAM encoder are, and at what input size (shared by the 2D SAM
method plugins so that their planning agrees).

SAM was trained with 512-voxel CT slices at 1024 input (64 x 64 tokens of 16 pixels) and
MedSAM/LiteMedSAM at 256 input (64 x 64 tokens of 4 pixels): one embedding token per 8 voxels of
the slice. We keep that ratio for whatever slice size the plans give.
"""
from __future__ import annotations

import math


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def median_slice_size(configuration, cap: int = 512) -> list[int]:
    """Whole typical slices: the configuration's median in-plane image size (rounded up to a
    multiple of 8, at most ``cap``), never smaller than its in-plane patch. A slice-wise method
    then sees one tile per slice in prediction instead of the many small tiles a CPU-sized 3D
    patch would give."""
    median = list(configuration.median_image_size_in_voxels)[-2:]
    patch = list(configuration.patch_size)[-2:]
    return [max(min(round_up(m, 8), cap), int(p)) for m, p in zip(median, patch)]


def encoder_input_size(slice_size: list[int], spec) -> int:
    """SAM input side for slices of ``slice_size`` voxels: ``max(slice) / 8 * stride`` (``stride``:
    the encoder's patch size, 16 for the ViTs, 4 for LiteMedSAM), rounded up to a multiple of the
    stride, at least 4 tokens and at most the size the weights were trained at."""
    stride = int(spec.vit_patch_size)
    want = round_up(max(slice_size) / 8 * stride, stride)
    return int(min(max(want, 4 * stride), int(spec.default_input_size)))
