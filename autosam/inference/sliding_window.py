"""Sliding-window prediction of a whole volume with Gaussian importance weighting and mirroring.

The volume (C x Z x Y x X) is covered by overlapping patches (``step_size`` 0.5 of the patch by
default, nnU-Net's rule for the step positions). Each patch's logits (averaged over all mirrorings
of its spatial axes when ``use_mirroring``) are weighted with a Gaussian (sigma = patch / 8,
maximum 1) and accumulated; the weighted average of the logits is turned into probabilities with a
softmax over the classes (or, for region-based outputs, a sigmoid per channel). A 2D patch size (``len(patch_size) == 2``) predicts slice by slice along
the first spatial axis (z), the network then receiving B x C x Y x X patches.

Memory: the accumulators (K + 1 floats per voxel) and the input live on the prediction device when
they fit there and on the CPU otherwise (with a warning); the division and the softmax run in place, in chunks of slices, so
the peak is about one copy of the K x Z x Y x X float32 result.
"""
from __future__ import annotations

import itertools
import logging
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autosam.utils import precision

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Start positions of the patches along each axis.

    The patches overlap by at least ``1 - step_size`` of their size and the last one ends exactly at
    the image border; the positions are spread evenly between 0 and ``image - patch``.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    steps = []
    for size, patch in zip(image_size, patch_size):
        if size < patch:
            raise ValueError(f"image size {tuple(image_size)} is smaller than the patch {tuple(patch_size)}; pad first")
        n = int(math.ceil((size - patch) / (patch * step_size))) + 1
        if n == 1:
            steps.append([0])
            continue
        stride = (size - patch) / (n - 1)
        steps.append([int(round(stride * i)) for i in range(n)])
    return steps


@lru_cache(maxsize=8)
def _gaussian_cpu(patch_size: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    weights = None
    for size in patch_size:
        sigma = max(size * sigma_scale, 1e-6)
        coords = np.arange(size, dtype=np.float64) - size // 2
        g = np.exp(-0.5 * (coords / sigma) ** 2)
        weights = g if weights is None else np.multiply.outer(weights, g)
    weights = np.asarray(weights, dtype=np.float64)
    weights /= weights.max()
    # Never exactly zero (a voxel covered only by patch borders must not divide by 0).
    weights = np.maximum(weights, max(float(weights[weights > 0].min()), 1e-8))
    return torch.from_numpy(weights.astype(np.float32))


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8,
                            device: torch.device | str = "cpu") -> torch.Tensor:
    """Gaussian weights of one patch: centred, sigma = ``patch * sigma_scale`` per axis, maximum 1,
    strictly positive everywhere."""
    return _gaussian_cpu(tuple(int(p) for p in patch_size), float(sigma_scale)).to(device)


def mirror_combinations(n_spatial: int) -> list[tuple[int, ...]]:
    """All non-empty subsets of the spatial axes of a B x C x *spatial tensor (dims 2..)."""
    axes = list(range(2, 2 + n_spatial))
    return [c for r in range(1, n_spatial + 1) for c in itertools.combinations(axes, r)]


def _pad_to_patch(data: torch.Tensor, patch3: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad (centred) every spatial axis shorter than the patch; return the crop that undoes it."""
    spatial = data.shape[1:]
    target = [max(s, p) for s, p in zip(spatial, patch3)]
    if list(spatial) == target:
        return data, tuple(slice(0, s) for s in spatial)
    before = [(t - s) // 2 for s, t in zip(spatial, target)]
    after = [t - s - b for s, t, b in zip(spatial, target, before)]
    pad = []
    for b, a in zip(reversed(before), reversed(after)):
        pad += [b, a]
    padded = F.pad(data, pad, mode="constant", value=0.0)
    return padded, tuple(slice(b, b + s) for b, s in zip(before, spatial))


def _accumulators(num_classes: int, padded: torch.Tensor, device: torch.device):
    """``(logits_sum, weight_sum, source, acc_device)``: the float32 accumulators and the padded
    input on ``device`` when they all fit there, else all three on the CPU (with a warning): the
    patches then travel to ``device`` one batch at a time and their logits back."""
    spatial = tuple(padded.shape[1:])
    if device.type != "cpu":
        try:
            logits_sum = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=device)
            weight_sum = torch.zeros(spatial, dtype=torch.float32, device=device)
            return logits_sum, weight_sum, padded.to(device), device
        except torch.OutOfMemoryError:
            logits_sum = weight_sum = None  # noqa: F841 - free what was allocated before the fallback
            logger.warning("the sliding-window accumulators of a %s volume with %d classes (%.1f GB) do not fit on %s; "
                           "accumulating on the CPU (slower)", "x".join(map(str, spatial)), num_classes,
                           (num_classes + 1 + padded.shape[0]) * int(np.prod(spatial)) * 4 / 1e9, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    cpu = torch.device("cpu")
    return (torch.zeros((num_classes, *spatial), dtype=torch.float32, device=cpu),
            torch.zeros(spatial, dtype=torch.float32, device=cpu), padded, cpu)


def _as_tensor(data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        t = data.detach()
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(data)))
    if t.ndim != 4:
        raise ValueError(f"sliding_window_predict expects data of shape C x Z x Y x X, got {tuple(t.shape)}")
    return t.to(dtype=torch.float32, device="cpu")


@torch.inference_mode()
def sliding_window_predict(
    logits_fn: LogitsFn,
    data,
    patch_size: Sequence[int],
    num_classes: int,
    device: torch.device | str = "cpu",
    use_mirroring: bool = True,
    progress: bool | ProgressFn = False,
    step_size: float = 0.5,
    batch_size: int = 1,
    mirror_axes: Sequence[int] | None = None,
    use_gaussian: bool = True,
    mirror_batch: int | None = None,
    activation: str = "softmax",
) -> torch.Tensor:
    """Class probabilities (K x Z x Y x X, float32, CPU) of a whole volume.

    :param logits_fn: maps a batch of patches (B x C x *patch, on ``device``) to logits
        (B x K x *patch); called in inference mode, on CUDA under autocast in the training
        precision (:func:`autosam.utils.precision.amp_dtype`: bf16 where native, else fp16).
    :param data: C x Z x Y x X tensor or array (a memory map is fine).
    :param patch_size: 3 values (3D patches) or 2 values (2D patches on the z slices).
    :param num_classes: K, including background.
    :param use_mirroring: average the logits over all mirrorings of the patch's spatial axes.
    :param progress: ``True`` shows a progress bar (:func:`autosam.utils.progress.progress_bar`); a callable receives ``(done, total)`` patches.
    :param step_size: patch step as a fraction of the patch size (0.5 = nnU-Net's default).
    :param batch_size: patches per call of ``logits_fn``.
    :param mirror_axes: spatial axes (0-based, in the patch) to mirror; default all.
    :param mirror_batch: mirrored copies per call of ``logits_fn`` (default: all of them on the CPU,
        where batching is faster; 1 on other devices, where large patches could run out of memory).
    :param activation: ``"softmax"`` over the classes, or ``"sigmoid"`` per channel (one output per
        region of a region-based dataset).
    """
    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    device = torch.device(device)
    if mirror_batch is None:
        mirror_batch = 8 if device.type == "cpu" else 1
    tensor = _as_tensor(data)
    patch_size = [int(p) for p in patch_size]
    if len(patch_size) not in (2, 3):
        raise ValueError(f"patch_size must have 2 or 3 entries, got {patch_size}")
    is_2d = len(patch_size) == 2
    patch3 = [1, *patch_size] if is_2d else patch_size
    n_spatial = len(patch_size)

    padded, unpad = _pad_to_patch(tensor, patch3)
    spatial = tuple(padded.shape[1:])
    if is_2d:  # every slice once, the in-plane axes with overlap
        steps = [list(range(spatial[0])), *compute_steps(spatial[1:], patch_size, step_size)]
    else:
        steps = compute_steps(spatial, patch3, step_size)
    tiles = [tuple(slice(s, s + p) for s, p in zip(start, patch3)) for start in itertools.product(*steps)]

    if use_mirroring:
        combos = mirror_combinations(n_spatial)
        if mirror_axes is not None:
            allowed = {a + 2 for a in mirror_axes}
            combos = [c for c in combos if set(c) <= allowed]
    else:
        combos = []

    logits_sum, weight_sum, source, acc_device = _accumulators(num_classes, padded, device)
    gaussian = gaussian_importance_map(patch3, device=acc_device) if use_gaussian else torch.ones(patch3, device=acc_device)
    # a device -> CPU copy must be blocking: the CPU accumulation right after it would otherwise
    # read the buffer before the copy has landed (non_blocking only pays off device -> device)
    to_acc_non_blocking = acc_device.type != "cpu"
    amp_dtype = precision.amp_dtype(device)  # decided once, not per batch

    callback = _progress_callback(progress, len(tiles))
    logger.debug("sliding window: %d patches of %s on %s, mirrorings %d", len(tiles), patch3, tuple(spatial), len(combos))
    done = 0
    for first in range(0, len(tiles), max(1, int(batch_size))):
        batch_tiles = tiles[first: first + max(1, int(batch_size))]
        patches = torch.stack([source[(slice(None), *t)] for t in batch_tiles]).to(device, non_blocking=True)
        if is_2d:
            patches = patches[:, :, 0]
        with precision.autocast(device, amp_dtype):
            logits = _predict_mirrored(logits_fn, patches, combos, num_classes, mirror_batch)
        if is_2d:
            logits = logits.unsqueeze(2)
        logits = logits.to(acc_device, non_blocking=to_acc_non_blocking)
        for b, tile in enumerate(batch_tiles):
            logits_sum[(slice(None), *tile)].addcmul_(logits[b], gaussian)
            weight_sum[tile] += gaussian
        done += len(batch_tiles)
        if callback:
            callback(done, len(tiles))

    del source
    result = _normalise_and_softmax(logits_sum, weight_sum, activation=activation)
    result = result[(slice(None), *unpad)]
    return result.to("cpu").contiguous()


def _predict_mirrored(logits_fn: LogitsFn, x: torch.Tensor, combos: list[tuple[int, ...]], num_classes: int,
                      mirror_batch: int = 1) -> torch.Tensor:
    """Mean logits over the identity and the mirrorings ``combos`` of ``x`` (B x C x *patch).

    ``mirror_batch`` mirrored copies go through ``logits_fn`` in one call (on the CPU one call of
    8 x B patches costs about 25-30% less CPU time than 8 calls of B: oneDNN parallelises better
    over a batch, and PyTorch picks its faster convolution path for batches > 1).
    """
    variants: list[tuple[int, ...]] = [(), *combos]
    n = x.shape[0]
    group = max(1, int(mirror_batch))
    out: torch.Tensor | None = None
    for first in range(0, len(variants), group):
        chosen = variants[first: first + group]
        inputs = torch.cat([torch.flip(x, axes) if axes else x for axes in chosen]) if len(chosen) > 1 else (
            torch.flip(x, chosen[0]) if chosen[0] else x)
        logits = logits_fn(inputs).float()
        expected = (inputs.shape[0], num_classes, *x.shape[2:])
        if tuple(logits.shape) != expected:
            raise ValueError(f"logits_fn returned shape {tuple(logits.shape)} for patches {tuple(inputs.shape)}; expected {expected}")
        for i, axes in enumerate(chosen):
            part = logits[i * n: (i + 1) * n]
            if axes:
                part = torch.flip(part, axes)
            if out is None:
                out = part.clone()  # the network may return a view of a buffer it reuses
            else:
                out += part
    assert out is not None
    if len(variants) > 1:
        out /= len(variants)
    return out


def _normalise_and_softmax(logits_sum: torch.Tensor, weight_sum: torch.Tensor, chunk_voxels: int = 1 << 22,
                           activation: str = "softmax") -> torch.Tensor:
    """In place: divide by the weights and apply the softmax over classes (or a sigmoid per
    channel), a few slices at a time."""
    n_slices = logits_sum.shape[1]
    per_slice = max(1, int(np.prod(logits_sum.shape[2:])) * logits_sum.shape[0])
    step = max(1, chunk_voxels // per_slice)
    for z0 in range(0, n_slices, step):
        block = logits_sum[:, z0: z0 + step]
        block /= weight_sum[z0: z0 + step]
        if activation == "sigmoid":
            block.sigmoid_()
        else:
            block.copy_(torch.softmax(block, dim=0))
    return logits_sum


def _progress_callback(progress, total: int) -> ProgressFn | None:
    if callable(progress):
        return progress
    if not progress:
        return None
    from autosam.utils.progress import progress_bar

    bar = progress_bar(total=total, desc="patches", leave=False, unit="patch")

    def update(done: int, total_: int) -> None:
        bar.update(done - bar.n)
        if done >= total_:
            bar.close()

    return update
