"""LiteMedSAM Dice at several box margins: how much the box extension costs medlsam's zero-shot
segmentation stage, with boxes taken FROM THE LABEL (uses the label: the upper bound) and, with
``--model``, with the boxes a trained medlsam fold localises (no label read).

    python benchmarks/medlsam_box_margin.py --data WORK/pre/Dataset999_Example/autosamPlans_3d \\
        --cases case_003 case_007 --margins default 1,5,5 1,3,3 1,2,2 0,2,2 1,1,1 0,0,0 \\
        --model WORK/res/Dataset999_Example/medlsam__autosamPlans__3d --fold 0

``default`` is the method's own extension (``box_margin_voxels`` of the default options, per case);
``z,y,x`` are voxel margins. Prints, per box source and margin, the Dice of each label on the
preprocessed grid (mean over the cases) and their mean.
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
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--margins", nargs="+", default=["default", "0,0,0", "1,4,4", "2,10,10"],
                   help="'default' or z,y,x voxel margins")
    p.add_argument("--model", type=Path, default=None, help="trained medlsam results folder: also use its localised boxes")
    p.add_argument("--fold", default="0")
    p.add_argument("--backbone", default="litemedsam")
    args = p.parse_args(argv)

    from autosam.sam.backbones import build_backbone
    from autosam.training.dataloading import PreprocessedDataset
    from autosam.plugins import get_method
    from autosam_plugins.medlsam.localize import extend_box, label_boxes
    from autosam_plugins.medlsam.options import box_margin_voxels
    from autosam_plugins.medlsam.segment import segment_boxes

    plans = json.loads((args.data.parent / "autosamPlans.json").read_text())
    cfg = next(c for c in plans["configurations"].values() if c["data_identifier"] == args.data.name)
    labels = sorted(int(v) for v in plans["labels"].values() if int(v) > 0)
    defaults = get_method("medlsam").make_options({}, {})
    backbone = build_backbone(args.backbone)
    dataset = PreprocessedDataset(args.data, args.cases)
    model = None
    if args.model is not None:
        from autosam.inference.predictor import load_trained_model

        fold = int(args.fold) if args.fold.isdigit() else args.fold
        model = load_trained_model(args.model, folds=(fold,), device="cpu")

    # unextended boxes per source and case: label -> list of (z0, y0, x0, z1, y1, x1)
    cases, sources = {}, {"label boxes (UPPER BOUND, uses the label)": {}}
    for key in args.cases:
        data, seg, props = dataset.load(key)
        seg = np.asarray(seg[0])
        cases[key] = (torch.from_numpy(np.array(data, dtype=np.float32)), seg)
        sources["label boxes (UPPER BOUND, uses the label)"][key] = label_boxes(seg, labels)
        if model is not None:
            ctx = model.ctx
            ctx.extra["case_properties"] = props
            sources.setdefault("localised boxes (no label)", {})[key] = model.method.localize_components(
                model.folds[0].network, cases[key][0], ctx, properties=props, margin_mm=[0, 0, 0])
    for source, per_case in sources.items():
        for text in args.margins:
            t = time.time()
            dice = []
            for key, (image, seg) in cases.items():
                margin = box_margin_voxels(defaults, cfg["spacing"], seg.shape) if text == "default" else [int(v) for v in text.split(",")]
                boxes = {k: [extend_box(np.asarray(b, float), margin, seg.shape).astype(int) for b in bl] for k, bl in per_case[key].items()}
                pred = segment_boxes(backbone, image, boxes, max(labels) + 1, spacing=cfg["spacing"]).argmax(0).numpy()
                dice.append([2 * ((pred == k) & (seg == k)).sum() / max(1, (pred == k).sum() + (seg == k).sum()) for k in labels])
                if text == "default":
                    print(f"  {key}: default margin {margin} voxels")
            per_class = np.mean(dice, 0)
            print(f"{source}: margin {text}: Dice per label {[round(float(d), 3) for d in per_class]} "
                  f"mean {float(per_class.mean()):.3f} ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
