"""LiteMedSAM Dice with boxes taken FROM THE LABEL (uses the label) at several box margins, on one
preprocessed case: how much the box extension costs the zero-shot segmentation stage of medlsam.

    OMP_NUM_THREADS=1 python benchmarks/medlsam_box_margin.py \
        --data /tmp/s3/ml/pre/Dataset999_Example/autosamPlans_2d_3d --case case_007 \
        --margins 0,0,0 1,4,4 2,10,10

Prints, per margin (voxels z, y, x), the Dice of each label on the preprocessed grid and their mean.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="preprocessed configuration folder (cases + plans beside it)")
    p.add_argument("--case", required=True)
    p.add_argument("--margins", nargs="+", default=["0,0,0", "1,4,4", "2,10,10"], help="z,y,x voxel margins")
    p.add_argument("--backbone", default="litemedsam")
    args = p.parse_args(argv)

    from autosam.sam.backbones import build_backbone
    from autosam.training.dataloading import PreprocessedDataset
    from autosam_plugins.medlsam.localize import box_from_extremes, extend_box, extreme_points, split_components
    from autosam_plugins.medlsam.segment import segment_boxes

    plans = json.loads((args.data.parent / "autosamPlans.json").read_text())
    cfg = next(c for c in plans["configurations"].values() if c["data_identifier"] == args.data.name)
    labels = sorted(int(v) for v in plans["labels"].values() if int(v) > 0)
    backbone = build_backbone(args.backbone)
    data, seg, _ = PreprocessedDataset(args.data).load(args.case)
    seg = np.asarray(seg[0])
    image = torch.from_numpy(np.array(data, dtype=np.float32))
    for text in args.margins:
        margin = [int(v) for v in text.split(",")]
        t = time.time()
        boxes = {k: [extend_box(box_from_extremes(extreme_points(part)), margin, seg.shape) for part in split_components(seg == k)]
                 for k in labels if (seg == k).any()}
        pred = segment_boxes(backbone, image, boxes, max(labels) + 1, spacing=cfg["spacing"]).argmax(0).numpy()
        dice = [2 * ((pred == k) & (seg == k)).sum() / max(1, (pred == k).sum() + (seg == k).sum()) for k in labels]
        print(args.case, "margin", margin, "Dice", [round(float(d), 3) for d in dice], "mean", round(float(np.mean(dice)), 3),
              f"{time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
