"""nnU-Net-style patch loading from the preprocessed storage, with batchgenerators augmentation.

A batch is a dict with ``data`` (B x C x *patch float32 tensor), ``target`` (B x 1 x *patch int64
tensor, or a list of them, full resolution first, when the method asks for deep supervision) and
``keys`` (the case of each sample). Patches are sampled at random; the last third of every batch
(``round(B * oversample_foreground)`` samples, at least one when B >= 2) is centred on a
foreground voxel taken from ``properties["class_locations"]`` (class chosen uniformly among the
classes present in that case). 3D loaders first cut a larger patch so that rotation and scaling do
not pull in empty borders, then :class:`~batchgenerators.transforms.spatial_transforms.SpatialTransform`
cuts the final patch from its centre. 2D configurations sample one axial slice per sample.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from autosam.preprocessing.storage import case_paths, list_cases, load_case
from autosam.utils.processes import exit_with_parent
from autosam.utils.threads import affinity_cores

logger = logging.getLogger(__name__)


class PreprocessedDataset:
    """The preprocessed cases of one configuration (memory-mapped; properties cached)."""

    def __init__(self, folder: Path, keys: list[str] | None = None):
        self.folder = Path(folder)
        available = list_cases(self.folder)
        if keys is None:
            keys = available
        missing = sorted(set(keys) - set(available))
        if missing:
            raise FileNotFoundError(
                f"{self.folder}: preprocessed cases missing or incomplete: {', '.join(missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}; re-run autosam_preprocess"
            )
        self.keys = list(keys)
        self._properties: dict[str, dict] = {}

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """Memory-mapped image and segmentation, and the (cached) properties of one case."""
        if key in self._properties:
            img_p, seg_p, _ = case_paths(self.folder, key)
            return np.load(img_p, mmap_mode="r"), np.load(seg_p, mmap_mode="r"), self._properties[key]
        data, seg, props = load_case(self.folder, key, mmap=True)
        if seg is None:
            raise FileNotFoundError(f"{self.folder / (key + '_seg.npy')}: case {key!r} has no segmentation")
        self._properties[key] = props
        return data, seg, props

    def properties(self, key: str) -> dict:
        if key not in self._properties:
            self.load(key)
        return self._properties[key]

    def subset(self, keys: list[str]) -> "PreprocessedDataset":
        return PreprocessedDataset(self.folder, keys)

    def __len__(self) -> int:
        return len(self.keys)


# ----------------------------------------------------------------------------------- sampling
def _rotation(angles) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def rotation_padded_size(patch_size, rot_range: float, scale_max: float = 1.0, in_plane_only: bool = False) -> list[int]:
    """Size of the sample to cut so that the patch rotated by up to ``rot_range`` radians (about
    every axis in 3D, in-plane for 2D or ``in_plane_only``) and zoomed out by ``scale_max`` (capped
    at 1.2, as the zoom is applied to only 20% of the samples) stays inside real data: the extent of
    the patch corners rotated about each axis in turn (as nnU-Net sizes its initial patch)."""
    p = np.asarray(patch_size, dtype=float)
    p3 = np.concatenate([[1.0], p]) if len(p) == 2 else p
    corners = np.array([[sz, sy, sx] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)]) * p3 / 2
    steps = (-rot_range, 0.0, rot_range)
    combos = [(a, 0.0, 0.0) for a in steps] if (len(p) == 2 or in_plane_only) else [
        (a, b, c) for a in steps for b in steps for c in steps if (a != 0) + (b != 0) + (c != 0) <= 1]
    extent = p3.copy()
    for angles in combos:
        rotated = corners @ _rotation(angles).T  # rotation about z (the first axis) is angles[0]
        extent = np.maximum(extent, 2 * np.abs(rotated).max(0))
    extent = extent * min(max(scale_max, 1.0), 1.2)
    out = extent[1:] if len(p) == 2 else extent
    if len(p) == 3 and in_plane_only:
        out[0] = p[0]
    return [int(np.ceil(v - 1e-6)) for v in np.maximum(out, p)]


class PatchSampler(SlimDataLoaderBase):
    """Cuts (larger-than-patch) random patches from preprocessed cases; foreground oversampling.

    Randomness comes from numpy's global generator, which batchgenerators seeds per worker. In a
    background worker it ends the worker when the training process ends
    (:func:`autosam.utils.processes.exit_with_parent`), so that a killed run leaves no workers.
    """

    def __init__(self, dataset: PreprocessedDataset, batch_size: int, patch_size, sample_size=None,
                 oversample_foreground: float = 0.33, ignore_label: int | None = None):
        super().__init__(dataset, batch_size)
        self.BATCH_SIZE = batch_size
        self.dataset = dataset
        self.patch_size = [int(v) for v in patch_size]
        self.is_2d = len(self.patch_size) == 2
        size = [int(v) for v in (sample_size or self.patch_size)]
        self.sample_size = [1, *size] if self.is_2d else size  # z, y, x cut from the volume
        self.oversample_foreground = oversample_foreground
        # voxels of the ignore label are not foreground: never centre a forced patch on them
        self.excluded_classes = {str(int(ignore_label))} if ignore_label is not None else set()
        if not dataset.keys:
            raise ValueError(f"{dataset.folder}: no training cases to sample from")
        self.parent_pid = os.getpid()  # the process that starts the workers

    def set_thread_id(self, thread_id):
        # batchgenerators calls this first thing in every background worker
        if os.getpid() != self.parent_pid:
            exit_with_parent(self.parent_pid)
        super().set_thread_id(thread_id)

    def force_foreground(self, index: int) -> bool:
        return index >= round(self.BATCH_SIZE * (1 - self.oversample_foreground))

    def generate_train_batch(self) -> dict:
        keys = [self.dataset.keys[i] for i in np.random.randint(0, len(self.dataset.keys), self.BATCH_SIZE)]
        data, seg = [], []
        for i, key in enumerate(keys):
            d, s = self.sample_patch(key, self.force_foreground(i))
            data.append(d)
            seg.append(s)
        data_arr, seg_arr = np.stack(data), np.stack(seg)
        if self.is_2d:
            data_arr, seg_arr = data_arr[:, :, 0], seg_arr[:, :, 0]
        return {"data": data_arr, "seg": seg_arr, "keys": keys}

    def sample_patch(self, key: str, force_fg: bool) -> tuple[np.ndarray, np.ndarray]:
        """Choose where the *final* patch goes (inside the volume where possible, centred on a
        foreground voxel when forced), then cut the larger sample around it, padding with zeros."""
        image, seg, props = self.dataset.load(key)
        shape = np.array(image.shape[1:])
        size = np.array(self.sample_size)
        patch = np.array([1, *self.patch_size] if self.is_2d else self.patch_size)
        need = np.maximum(patch - shape, 0)
        lb = -(need // 2)
        ub = shape + need // 2 + need % 2 - patch
        locations = {k: v for k, v in (props.get("class_locations") or {}).items()
                     if len(v) > 0 and k not in self.excluded_classes}
        if force_fg and locations:
            cls = list(locations)[np.random.randint(len(locations))]
            centre = np.asarray(locations[cls][np.random.randint(len(locations[cls]))])[-3:]
            start = np.clip(centre - patch // 2, lb, ub)
        else:
            start = np.array([np.random.randint(a, b + 1) for a, b in zip(lb, ub)])
        start = start - (size - patch) // 2  # the larger sample shares the final patch's centre
        return crop_and_pad(image, start, size, 0.0), crop_and_pad(seg, start, size, 0)


def crop_and_pad(array: np.ndarray, start, size, fill) -> np.ndarray:
    """Cut ``array[:, start:start+size]`` (per spatial axis), padding with ``fill`` outside."""
    start, size = np.asarray(start), np.asarray(size)
    shape = np.array(array.shape[1:])
    lo, hi = np.maximum(start, 0), np.minimum(start + size, shape)
    valid = np.asarray(array[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))])
    pad = [(0, 0)] + [(int(a - s), int(s + n - b)) for a, b, s, n in zip(lo, hi, start, size)]
    if any(p != (0, 0) for p in pad):
        valid = np.pad(valid, pad, mode="constant", constant_values=fill)
    return valid


# ----------------------------------------------------------------------------------- transforms
class DownsampleTargets(AbstractTransform):
    """Nearest-neighbour copies of ``seg`` at every deep-supervision scale -> ``target`` list."""

    def __init__(self, scales: list[list[float]] | None):
        self.scales = scales

    def __call__(self, **batch):
        seg = batch.pop("seg")
        if self.scales is None:
            batch["target"] = seg
            return batch
        targets = []
        for scale in self.scales:
            if all(s == 1 for s in scale):
                targets.append(seg)
                continue
            index = [slice(None), slice(None)]
            for n, s in zip(seg.shape[2:], scale):
                m = max(1, int(round(n * s)))
                index.append(np.minimum(((np.arange(m) + 0.5) / s).astype(int), n - 1))
            targets.append(seg[np.ix_(*[np.arange(seg.shape[0]), np.arange(seg.shape[1]), *index[2:]])])
        batch["target"] = targets
        return batch


class ToTensors(AbstractTransform):
    """data -> float32 tensor; target(s) -> int64 tensor(s)."""

    def __call__(self, **batch):
        batch["data"] = torch.from_numpy(np.ascontiguousarray(batch["data"], dtype=np.float32))
        t = batch["target"]
        conv = lambda a: torch.from_numpy(np.ascontiguousarray(np.rint(a), dtype=np.int64))  # noqa: E731
        batch["target"] = [conv(a) for a in t] if isinstance(t, list) else conv(t)
        return batch


@dataclass
class AugmentationParams:
    """nnU-Net's default augmentation strengths (rotation in radians)."""

    rotation: float = np.pi / 6
    scale: tuple[float, float] = (0.7, 1.4)
    p_rotation: float = 0.2
    p_scale: float = 0.2
    mirror_axes: tuple[int, ...] | None = None  # None: all spatial axes


def training_transforms(patch_size, ds_scales, params: AugmentationParams | None = None) -> Compose:
    params = params or AugmentationParams()
    dim = len(patch_size)
    anisotropic = dim == 3 and max(patch_size) / min(patch_size) > 3
    rot = (-params.rotation, params.rotation)
    # with a flat (anisotropic) patch, rotate only in-plane (about the z axis, batchgenerators' angle_x)
    off = (0.0, 0.0) if anisotropic else rot
    mirror_axes = params.mirror_axes if params.mirror_axes is not None else tuple(range(dim))
    return Compose([
        SpatialTransform(
            list(patch_size), patch_center_dist_from_border=None, do_elastic_deform=False,
            do_rotation=True, angle_x=rot, angle_y=off, angle_z=off, p_rot_per_axis=1,
            do_scale=True, scale=params.scale, border_mode_data="constant", border_cval_data=0, order_data=1,
            border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
            p_el_per_sample=0, p_scale_per_sample=params.p_scale, p_rot_per_sample=params.p_rotation,
        ),
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5, order_downsample=0,
                                       order_upsample=3, p_per_sample=0.25, ignore_axes=(0,) if anisotropic else None),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
        MirrorTransform(mirror_axes) if mirror_axes else Compose([]),
        DownsampleTargets(ds_scales),
        ToTensors(),
    ])


def validation_transforms(ds_scales) -> Compose:
    return Compose([DownsampleTargets(ds_scales), ToTensors()])


# ----------------------------------------------------------------------------------- loaders
available_cores = affinity_cores  # the former name here


def default_num_workers() -> int:
    """Background augmentation workers: one per usable core minus one for the training loop, at most 8."""
    return max(0, min(8, available_cores() - 1))


def make_loader(dataset: PreprocessedDataset, batch_size: int, patch_size, ds_scales, *, train: bool,
                num_workers: int = 0, seed: int = 0, oversample_foreground: float = 0.33,
                augmentation: AugmentationParams | None = None, ignore_label: int | None = None,
                pin_memory: bool = False):
    """An endless iterator of batches; ``num_workers`` > 0 augments in background processes.
    ``ignore_label``: the dataset's ignore label, excluded from foreground oversampling.
    ``pin_memory`` (for CUDA) puts the worker batches in page-locked memory, so that their copy to
    the GPU runs asynchronously."""
    if train:
        params = augmentation or AugmentationParams()
        anisotropic = len(patch_size) == 3 and max(patch_size) / min(patch_size) > 3
        sample_size = rotation_padded_size(patch_size, params.rotation, params.scale[1], in_plane_only=anisotropic)
        transforms = training_transforms(patch_size, ds_scales, params)
    else:
        sample_size, transforms = patch_size, validation_transforms(ds_scales)
    sampler = PatchSampler(dataset, batch_size, patch_size, sample_size, oversample_foreground, ignore_label)
    if num_workers <= 0:
        np.random.seed(seed % 2**32)
        return SingleThreadedAugmenter(sampler, transforms)
    seeds = [(seed * 1000 + i) % 2**32 for i in range(num_workers)]
    return NonDetMultiThreadedAugmenter(sampler, transforms, num_processes=num_workers, num_cached=max(2, num_workers),
                                        seeds=seeds, pin_memory=pin_memory)


def shutdown_loader(loader) -> None:
    """Stop a loader's worker processes (no-op for in-process loaders)."""
    stop = getattr(loader, "_finish", None)
    if callable(stop):
        try:
            stop()
        except Exception as exc:  # never mask the training result because a worker would not stop
            logger.warning("stopping data loader workers failed: %s", exc)
