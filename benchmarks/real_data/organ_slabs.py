"""A real large-organ CT dataset from the TotalSegmentator example scan, for equal-time comparisons.

The only real large-organ data shipped offline is one abdominal CT (``example_ct.nii.gz``, 122 x 101 x
112 voxels of 3 mm, int HU; its label map is TotalSegmentator's own output). This script keeps four
large organs (liver, spleen, right and left kidney), cuts the scan's organ region (z 64-111, where
all four lie) into disjoint ``--slab``-slice slabs along z (6 of 8 slices by default: each organ spans
up to 8 slices of a slab, a "large organs" dataset for the planner) and writes them as an nnU-Net raw
dataset; then plans and preprocesses it (``3d``) and writes a ``splits_final.json`` whose fold 0
trains on every other slab (z 64-71, 80-87, 96-103) and validates on the three between them (z 72-79,
88-95, 104-111); fold 1 swaps them.

What it can show: which method learns the organs of one real scan faster, per iteration and per CPU
second, from 24 of its organ slices (a few-shot, large-organ regime). What it cannot: generalisation
across patients (training and validation slabs come from one person, 8 slices apart). Figures:
``documentation/benchmarks.md``, "Large organs at equal CPU time".

usage: python benchmarks/real_data/organ_slabs.py [--id 5] [--slab 8] [--first 64]
       (AUTOSAM_RAW / AUTOSAM_PREPROCESSED / AUTOSAM_RESULTS set), then
       OMP_NUM_THREADS=1 python benchmarks/sam_probes/curves.py -d 5 -m METHOD --val-cases 2 ...
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autosam.paths import preprocessed_dir, raw_dir
from autosam.utils.files import write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_common
from bench_common import bin_of  # noqa: E402

_BESIDE = Path(__file__).resolve().parents[3] / "shared"  # the shared data beside the checkout
DATA = Path(os.environ.get("AUTOSAM_SHARED_DATA") or (_BESIDE if _BESIDE.is_dir() else "/work/shared")) / "data" / "totalsegmentator"
#: TotalSegmentator ``total`` class id -> (name, new value)
ORGANS = {5: ("liver", 1), 1: ("spleen", 2), 2: ("kidney_right", 3), 3: ("kidney_left", 4)}


def build_raw(raw_root: Path, dataset_id: int, slab: int, first: int,
              data: Path = DATA) -> tuple[Path, list[str], list[str]]:
    """Write ``Dataset<ID>_OrganSlabsCT`` (imagesTr, labelsTr, dataset.json) under ``raw_root``; return
    its folder, the case ids (one per slab, in z order) and those of the slabs that hold an organ."""
    image = sitk.ReadImage(str(data / "example_ct.nii.gz"))
    label = sitk.ReadImage(str(data / "example_seg_fast_force_split.nii.gz"))
    if image.GetSize() != label.GetSize():
        raise SystemExit(f"{data}: image and label sizes differ")
    img, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
    new = np.zeros_like(lab, dtype=np.uint8)
    for old, (_name, value) in ORGANS.items():
        new[lab == old] = value
    folder = raw_root / f"Dataset{dataset_id:03d}_OrganSlabsCT"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    ids, with_organs = [], []
    for k in range((img.shape[0] - first) // slab):
        z0 = first + k * slab
        case = f"slab_{k}"
        for arr, sub, dtype in ((img[z0:z0 + slab], "imagesTr", np.int16), (new[z0:z0 + slab], "labelsTr", np.uint8)):
            out = sitk.GetImageFromArray(arr.astype(dtype))
            out.SetSpacing(image.GetSpacing())
            out.SetDirection(image.GetDirection())
            out.SetOrigin(image.TransformIndexToPhysicalPoint((0, 0, z0)))
            name = f"{case}_0000.nii.gz" if sub == "imagesTr" else f"{case}.nii.gz"
            sitk.WriteImage(out, str(folder / sub / name), useCompression=True)
        ids.append(case)
        if new[z0:z0 + slab].any():
            with_organs.append(case)
    labels = {"background": 0, **{name: value for name, value in ORGANS.values()}}
    write_json(folder / "dataset.json", {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(ids),
                                         "file_ending": ".nii.gz",
                                         "description": f"{slab}-slice slabs of TotalSegmentator's example CT from z {first}"})
    return folder, ids, with_organs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--id", type=int, default=5, help="dataset id (default 5)")
    p.add_argument("--slab", type=int, default=8, help="slices per slab (default 8)")
    p.add_argument("--first", type=int, default=64, help="first slice of the organ region (default 64)")
    p.add_argument("-np", type=int, default=2, help="preprocessing processes")
    args = p.parse_args(argv)
    folder, ids, with_organs = build_raw(Path(raw_dir()), args.id, args.slab, args.first)
    print(f"wrote {len(ids)} slabs to {folder}")
    subprocess.run([bin_of("autosam_plan_and_preprocess"), "-d", str(args.id), "-c", "3d", "-np", str(args.np)], check=True)
    if len(with_organs) < 4:
        raise SystemExit(f"only {len(with_organs)} slabs hold an organ: {with_organs}")
    folds = [with_organs[1::2], with_organs[0::2]]  # fold 0 validates on the 2nd, 4th, ... slab
    splits = [{"train": [c for c in ids if c not in val], "val": val} for val in folds]
    target = Path(preprocessed_dir()) / folder.name / "splits_final.json"
    write_json(target, splits)
    print(f"wrote {target}: fold 0 validates on {folds[0]}, fold 1 on {folds[1]}")


if __name__ == "__main__":
    sys.exit(main())
