"""UNet topology, a GPU-memory estimate, and patch/batch size from a memory budget.

Topology (nnU-Net's rule): starting at the patch size and the target spacing, every stage halves
the axes whose feature map is still at least ``2 * MIN_FEATURE_MAP`` voxels and whose current
spacing is less than twice the finest current spacing (so a coarse axis waits until the others
have caught up). A stage's kernel is 3 along an axis once that axis's spacing is within 2x of the
finest, else 1. Features double per stage from 32, capped at 320 (3D) or 512 (2D). Two
convolutions per stage in encoder and decoder (a PlainConvUNet). The patch is padded up to a
multiple of ``2 ** (number of poolings)`` per axis.

Memory estimate of training one batch (documented, deliberately simple): for every stage with
``V`` voxels and ``F`` features the network keeps, per sample, ``2`` tensors per encoder
convolution (convolution and normalisation outputs; the non-linearity is in place) and, in the
decoder, the transposed-convolution output, the skip concatenation (``2F``) and ``2`` tensors per
convolution. Elements are fp16 (mixed precision, 2 bytes). Backward-pass temporaries and cuDNN
workspaces are covered by ``BACKWARD_FACTOR`` and the CUDA context, parameters and optimizer state
by a fixed ``OVERHEAD_GB``. Calibrated so that an isotropic 128^3 patch with batch 2 needs about
7.4 GB, which is what nnU-Net plans for an 8 GB GPU.

Patch size (nnU-Net's rule): start with an aspect ratio of ``1 / spacing`` and 256^3 (3D) or
2048^2 (2D) voxels, clip to the median image shape, then shrink the axis with the largest
patch / median-shape ratio until a batch of the reference size (2 in 3D, 12 in 2D) fits the budget.
The batch size is then as large as the budget allows, at least 2, and one batch holds at most 5 %
of the dataset's voxels.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autosam.experiment_planning.plans import NetworkTopology

logger = logging.getLogger(__name__)

MIN_FEATURE_MAP = 4
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MAX_STAGES = 8
CONVS_PER_STAGE = 2
BYTES_PER_ELEMENT = 2
BACKWARD_FACTOR = 1.75
OVERHEAD_GB = 0.5
REFERENCE_BATCH = {2: 12, 3: 2}
START_VOXELS = {2: 2048**2, 3: 256**3}
MIN_BATCH = 2
MAX_DATASET_FRACTION_PER_BATCH = 0.05


def compute_topology(spacing: Sequence[float], patch_size: Sequence[int]) -> tuple[NetworkTopology, list[int]]:
    """The UNet topology for a patch at a spacing, and the patch padded to fit its poolings."""
    dim = len(spacing)
    if len(patch_size) != dim:
        raise ValueError(f"compute_topology: spacing {list(spacing)} and patch {list(patch_size)} differ in length")
    cur_sp = [float(s) for s in spacing]
    cur_sz = [int(s) for s in patch_size]
    strides = [[1] * dim]
    has3 = [False] * dim

    def kernel() -> list[int]:
        finest = min(cur_sp)
        for i in range(dim):
            if cur_sp[i] / finest < 2:
                has3[i] = True
        return [3 if h else 1 for h in has3]

    kernels = [kernel()]
    while len(strides) < MAX_STAGES:
        candidates = [i for i in range(dim) if cur_sz[i] >= 2 * MIN_FEATURE_MAP]
        if not candidates:
            break
        finest = min(cur_sp[i] for i in candidates)
        pool = [i for i in candidates if cur_sp[i] / finest < 2]
        stride = [2 if i in pool else 1 for i in range(dim)]
        for i in pool:
            cur_sp[i] *= 2
            cur_sz[i] = math.ceil(cur_sz[i] / 2)
        strides.append(stride)
        kernels.append(kernel())
    n = len(strides)
    features = [min(BASE_FEATURES * 2**s, MAX_FEATURES[dim]) for s in range(n)]
    topo = NetworkTopology(
        n_stages=n,
        features_per_stage=features,
        kernel_sizes=kernels,
        strides=strides,
        n_conv_per_stage_encoder=[CONVS_PER_STAGE] * n,
        n_conv_per_stage_decoder=[CONVS_PER_STAGE] * (n - 1),
    )
    div = divisibility(topo)
    padded = [int(math.ceil(p / d) * d) for p, d in zip(patch_size, div)]
    return topo, padded


def divisibility(topo: NetworkTopology) -> list[int]:
    """What each patch axis must be divisible by (product of the strides)."""
    return [int(v) for v in np.prod(np.asarray(topo.strides), axis=0)]


def estimate_vram_gb(topo: NetworkTopology, patch_size: Sequence[int], batch_size: int,
                     num_input_channels: int = 1, num_classes: int = 2) -> float:
    """Estimated GPU memory (GB) to train ``topo`` on ``batch_size`` patches (see module doc)."""
    per_sample = 0.0
    factor = np.ones(len(patch_size))
    voxels0 = float(np.prod(patch_size))
    for s in range(topo.n_stages):
        factor = factor * np.asarray(topo.strides[s])
        voxels = float(np.prod(np.asarray(patch_size) / factor))
        f = topo.features_per_stage[s]
        tensors = 2 * topo.n_conv_per_stage_encoder[s]
        if s < topo.n_stages - 1:
            tensors += 1 + 2 + 2 * topo.n_conv_per_stage_decoder[s]
        per_sample += voxels * f * tensors
    # input (fp32) and full-resolution logits (fp32, plus 1/3 for deep-supervision outputs)
    per_sample_bytes = per_sample * BYTES_PER_ELEMENT * BACKWARD_FACTOR + voxels0 * 4 * (num_input_channels + 4 / 3 * num_classes)
    return OVERHEAD_GB + batch_size * per_sample_bytes / 1e9


@dataclass
class PatchPlan:
    patch_size: list[int]
    batch_size: int
    topology: NetworkTopology
    estimated_vram_gb: float


def plan_patch_and_batch(
    spacing: Sequence[float],
    median_shape: Sequence[int],
    gpu_memory_gb: float,
    num_cases: int,
    num_input_channels: int = 1,
    num_classes: int = 2,
) -> PatchPlan:
    """Patch size, batch size and topology for one configuration (see module doc)."""
    dim = len(spacing)
    if dim not in (2, 3) or len(median_shape) != dim:
        raise ValueError(f"plan_patch_and_batch: spacing {list(spacing)} / median shape {list(median_shape)} must be 2D or 3D")
    if gpu_memory_gb <= OVERHEAD_GB:
        raise ValueError(f"gpu_memory_gb={gpu_memory_gb}: must exceed the fixed overhead of {OVERHEAD_GB} GB")
    median = np.maximum(np.asarray(median_shape, dtype=float), 1)
    shape = 1.0 / np.asarray(spacing, dtype=float)
    shape = shape * (START_VOXELS[dim] / np.prod(shape)) ** (1.0 / dim)
    patch = [max(1, int(round(v))) for v in np.minimum(shape, median)]
    ref_bs = REFERENCE_BATCH[dim]
    est = lambda t, p, b: estimate_vram_gb(t, p, b, num_input_channels, num_classes)  # noqa: E731

    topo, padded = compute_topology(spacing, patch)
    while est(topo, padded, ref_bs) > gpu_memory_gb:
        div = divisibility(topo)
        ratios = np.asarray(padded, dtype=float) / median
        order = np.argsort(-ratios, kind="stable")
        for axis in order:
            if padded[axis] - div[axis] >= MIN_FEATURE_MAP:
                break
        else:
            logger.warning("patch %s still exceeds the %.1f GB budget at its minimum size", padded, gpu_memory_gb)
            break
        patch = list(padded)
        patch[axis] -= div[axis]
        topo, padded = compute_topology(spacing, patch)

    per_sample = est(topo, padded, 1) - OVERHEAD_GB
    bs = int((gpu_memory_gb - OVERHEAD_GB) // per_sample)
    dataset_voxels = float(np.prod(median)) * max(num_cases, 1)
    cap = int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels // float(np.prod(padded)))
    bs = max(MIN_BATCH, min(bs, cap))
    return PatchPlan(list(padded), bs, topo, est(topo, padded, bs))
