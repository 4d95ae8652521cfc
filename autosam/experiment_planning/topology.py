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

Compute target ``cpu`` (autosam's addition; nnU-Net plans for a GPU only): training on a CPU is
bound by arithmetic, not memory, so the network starts at ``CPU_BASE_FEATURES`` (16) features
instead of 32 (a quarter of the FLOPs at the same depth), the patch is also shrunk (same rule as
for memory) until one training iteration of the reference batch costs at most
``CPU_TRAIN_GFLOP_BUDGET`` (50) GFLOP (forward + backward, :func:`estimate_train_gflop`; about 1 s on a
2-core desktop CPU that sustains ~50 GFLOP/s in 3D convolutions), and the batch stays at the
reference size (2 in 3D, 12 in 2D; a larger batch costs proportionally more time on a CPU).
The iterations-per-epoch rule then gives more iterations for the smaller patch.
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
COMPUTE_TARGETS = ("gpu", "cpu")
CPU_BASE_FEATURES = 16
CPU_TRAIN_GFLOP_BUDGET = 50.0


def compute_topology(spacing: Sequence[float], patch_size: Sequence[int],
                     base_features: int = BASE_FEATURES) -> tuple[NetworkTopology, list[int]]:
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
    features = [min(base_features * 2**s, MAX_FEATURES[dim]) for s in range(n)]
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


def estimate_train_gflop(topo: NetworkTopology, patch_size: Sequence[int], batch_size: int,
                         num_input_channels: int = 1, num_classes: int = 2) -> float:
    """GFLOP of one training iteration (forward + backward = 3 x forward) of a PlainConvUNet.

    Counts the convolutions (2 FLOP per multiply-add): every encoder convolution, and per decoder
    stage the transposed convolution, the first convolution on the skip concatenation (``2F`` in)
    and the others, plus the 1x1 segmentation head. Norms and non-linearities are left out.
    """
    v, factor = [], np.ones(len(patch_size))
    for s in range(topo.n_stages):
        factor = factor * np.asarray(topo.strides[s])
        v.append(float(np.prod(np.asarray(patch_size) / factor)))
    f = topo.features_per_stage
    total = 0.0
    for s in range(topo.n_stages):
        k = float(np.prod(topo.kernel_sizes[s]))
        f_in = num_input_channels if s == 0 else f[s - 1]
        total += 2 * k * v[s] * (f_in * f[s] + f[s] * f[s] * (topo.n_conv_per_stage_encoder[s] - 1))
        if s < topo.n_stages - 1:
            total += 2 * v[s] * f[s + 1] * f[s]  # transposed convolution (kernel = stride)
            total += 2 * k * v[s] * (2 * f[s] * f[s] + f[s] * f[s] * (topo.n_conv_per_stage_decoder[s] - 1))
    total += 2 * v[0] * f[0] * num_classes
    return 3 * batch_size * total / 1e9


@dataclass
class PatchPlan:
    patch_size: list[int]
    batch_size: int
    topology: NetworkTopology
    estimated_vram_gb: float
    estimated_train_gflop: float = 0.0


def plan_patch_and_batch(
    spacing: Sequence[float],
    median_shape: Sequence[int],
    gpu_memory_gb: float,
    num_cases: int,
    num_input_channels: int = 1,
    num_classes: int = 2,
    target: str = "gpu",
) -> PatchPlan:
    """Patch size, batch size and topology for one configuration (see module doc).

    ``target`` is ``"gpu"`` (nnU-Net's rules for a ``gpu_memory_gb`` budget) or ``"cpu"`` (the
    same rules plus a compute budget, see the module doc).
    """
    if target not in COMPUTE_TARGETS:
        raise ValueError(f"plan_patch_and_batch: target {target!r}; expected one of {list(COMPUTE_TARGETS)}")
    cpu = target == "cpu"
    base = CPU_BASE_FEATURES if cpu else BASE_FEATURES
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
    flops = lambda t, p, b: estimate_train_gflop(t, p, b, num_input_channels, num_classes)  # noqa: E731

    def too_big(t, p) -> bool:
        return est(t, p, ref_bs) > gpu_memory_gb or (cpu and flops(t, p, ref_bs) > CPU_TRAIN_GFLOP_BUDGET)

    topo, padded = compute_topology(spacing, patch, base)
    while too_big(topo, padded):
        div = divisibility(topo)
        ratios = np.asarray(padded, dtype=float) / median
        order = np.argsort(-ratios, kind="stable")
        for axis in order:
            if padded[axis] - div[axis] >= MIN_FEATURE_MAP:
                break
        else:
            logger.warning("patch %s still exceeds the budget (%.1f GB%s) at its minimum size", padded, gpu_memory_gb,
                           f", {CPU_TRAIN_GFLOP_BUDGET:g} GFLOP per iteration" if cpu else "")
            break
        patch = list(padded)
        patch[axis] -= div[axis]
        topo, padded = compute_topology(spacing, patch, base)

    per_sample = est(topo, padded, 1) - OVERHEAD_GB
    bs = int((gpu_memory_gb - OVERHEAD_GB) // per_sample)
    dataset_voxels = float(np.prod(median)) * max(num_cases, 1)
    cap = int(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels // float(np.prod(padded)))
    bs = max(MIN_BATCH, min(ref_bs if cpu else bs, cap))
    return PatchPlan(list(padded), bs, topo, est(topo, padded, bs), flops(topo, padded, bs))
