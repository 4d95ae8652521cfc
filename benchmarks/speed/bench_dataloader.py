"""Data-loader throughput: autosam's training loader vs nnU-Net v2's (nnUNetDataLoader + its
training transforms), same preprocessed cases, patch size, batch size and deep-supervision scales,
in-process (no worker processes), so the figure is CPU cost per augmented batch.

Usage (after ``autosam_plan_and_preprocess -d 999``)::

    python benchmarks/speed/bench_dataloader.py -d 999 -c 3d --batches 20

Needs ``nnunetv2`` (``pip install -e .[bench]``). Prints batches/s for both and writes nothing
except a temporary copy of the cases in nnU-Net's numpy layout.
"""
from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np


def autosam_loader(folder, keys, patch, batch, scales):
    from autosam.training.dataloading import PreprocessedDataset, make_loader

    return make_loader(PreprocessedDataset(folder, keys), batch, patch, scales, train=True, num_workers=0, seed=0)


def nnunet_loader(folder, keys, patch, batch, scales, labels, tmp: Path):
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from autosam.preprocessing.storage import load_case

    for key in keys:  # nnU-Net's numpy layout: <case>.npy, <case>_seg.npy, <case>.pkl (+ .npz for listing)
        data, seg, props = load_case(folder, key, mmap=False)
        np.save(tmp / f"{key}.npy", data)
        np.save(tmp / f"{key}_seg.npy", seg)
        np.savez(tmp / f"{key}.npz", seg=seg[:, :1, :1, :1])
        locs = {int(k): np.array([[0, *v] for v in vals], dtype=np.int64).reshape(-1, 4)
                for k, vals in props["class_locations"].items()}
        with open(tmp / f"{key}.pkl", "wb") as f:
            pickle.dump({"class_locations": locs}, f)
    rot = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    initial = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))
    transforms = nnUNetTrainer.get_training_transforms(patch, rot, scales, (0, 1, 2), False)
    lm = LabelManager(labels, None)
    ds = nnUNetDatasetNumpy(str(tmp), list(keys))
    return nnUNetDataLoader(ds, batch, initial, patch, lm, oversample_foreground_percent=0.33, transforms=transforms)


def rate(loader, n: int) -> tuple[float, float]:
    """Batches per second of wall time and per second of this process's CPU time."""
    next(loader)  # warm-up (imports, first file access)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(loader)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", default="999")
    p.add_argument("-c", default="3d")
    p.add_argument("--plans", default="autosamPlans")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: each loader worker process uses one; nnU-Net's transforms use torch)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from autosam import paths
    from autosam.experiment_planning.plans import Plans
    from autosam.io.dataset import dataset_name_from_id
    from autosam.preprocessing.storage import list_cases

    name = dataset_name_from_id(args.d)
    pre = paths.preprocessed_dir() / name
    plans = Plans.load(pre / f"{args.plans}.json")
    cfg = plans.configuration(args.c)
    folder = pre / cfg.data_identifier
    keys = list_cases(folder)
    strides = np.array(cfg.network.strides, dtype=float)
    scales = [list(map(float, s)) for s in (1 / np.cumprod(strides, axis=0))[:-1]]
    print(f"{name} {args.c}: {len(keys)} cases, patch {cfg.patch_size}, batch {cfg.batch_size}, {len(scales)} DS scales")
    ours = rate(autosam_loader(folder, keys, cfg.patch_size, cfg.batch_size, scales), args.batches)
    print(f"autosam loader: {ours[0]:.3f} batches/s wall, {ours[1]:.3f} batches per CPU-second")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = rate(nnunet_loader(folder, keys, cfg.patch_size, cfg.batch_size, scales, plans.labels, Path(tmp)),
                      args.batches)
    print(f"nnU-Net loader: {theirs[0]:.3f} batches/s wall, {theirs[1]:.3f} batches per CPU-second")
    print(f"ratio autosam/nnU-Net: {ours[0] / theirs[0]:.2f} (wall), {ours[1] / theirs[1]:.2f} (CPU time)")


if __name__ == "__main__":
    main()
