"""Does `medlsam` learn? Train the MedLAM localiser on the `organs` example dataset, then report

- localisation: 3D IoU of the localised (un-extended) box vs the true box, per validation class;
- Dice with localised boxes (the automatic MedLSAM result: no label is read at prediction);
- Dice with boxes taken FROM THE LABEL (upper bound, the paper's "manual box" columns; uses the label).

Dice is computed on the preprocessed grid (3d configuration), per class, averaged over the
validation cases; the fold's `validation/summary.json` (original geometry) is written by
`autosam_train` instead. Example (2 shared CPU cores: ~15 min training, ~1-2 min per case for SAM):

    OMP_NUM_THREADS=1 python benchmarks/learn_medlsam.py --work /tmp/medlsam_bench --epochs 30 --max-val 2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    denom = pred.sum() + ref.sum()
    return float(2 * (pred & ref).sum() / denom) if denom > 0 else float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for raw/preprocessed/results (created)")
    p.add_argument("--cases", type=int, default=8, help="example cases (default 8)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--iters-per-epoch", type=int, default=None, help="default: the trainer's rule")
    p.add_argument("--max-val", type=int, default=2, help="validation cases segmented with SAM (slow on CPU)")
    p.add_argument("--no-sam", action="store_true", help="only the localisation IoU (no SAM segmentation)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="medlsam option overrides, e.g. lr=3e-4")
    p.add_argument("--skip-train", action="store_true", help="reuse the fold's checkpoint_final.pth from an earlier run")
    p.add_argument("--out-json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)

    work = args.work.resolve()
    for name, sub in (("AUTOSAM_RAW", "raw"), ("AUTOSAM_PREPROCESSED", "pre"), ("AUTOSAM_RESULTS", "res")):
        os.environ[name] = str(work / sub)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    from autosam.data.example import make_example_dataset
    from autosam.experiment_planning.splits import get_or_create_splits
    from autosam.inference.predictor import load_trained_model
    from autosam.pipeline import plan_and_preprocess
    from autosam.training.dataloading import PreprocessedDataset
    from autosam.training.trainer import run_training
    from autosam_plugins.medlsam.localize import box_from_extremes, extend_box, extreme_points

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    t0 = time.time()
    if not (work / "pre" / "Dataset999_Example" / "autosamPlans.json").is_file():
        make_example_dataset(work / "raw", 999, args.cases, "organs")
        plan_and_preprocess(999, num_processes=1, configurations=("3d",))
    overrides = dict(kv.split("=", 1) for kv in args.set)
    t1 = time.time()
    fold_dir = work / "res" / "Dataset999_Example" / "medlsam__autosamPlans__3d" / f"fold_{args.fold}"
    if not (args.skip_train and (fold_dir / "checkpoint_final.pth").is_file()):
        fold_dir = run_training(999, "3d", "medlsam", args.fold, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
                                device="cpu", method_overrides=overrides, num_workers=0, validate=False)
    t_train = time.time() - t1
    model = load_trained_model(fold_dir.parent, folds=(args.fold,), device="cpu", method_overrides=overrides)
    method, ctx, net = model.method, model.ctx, model.folds[0].network
    pre = work / "pre" / "Dataset999_Example"
    data_folder = pre / ctx.configuration.data_identifier
    keys = PreprocessedDataset(data_folder).keys
    val_keys = sorted(get_or_create_splits(pre, keys)[args.fold]["val"])
    dataset = PreprocessedDataset(data_folder, val_keys)
    report = method.validation_report(net, ctx, dataset, val_keys)
    result = {"train_seconds": round(t_train, 1), "epochs": args.epochs, "options": overrides, "val_cases": val_keys,
              **report}
    print("localisation IoU per class:", report["localization_iou"], "mean", round(report["localization_iou_mean"], 3))

    if not args.no_sam:
        per_mode: dict[str, dict[int, list[float]]] = {"localised_boxes": {}, "label_boxes_UPPER_BOUND_uses_label": {}}
        for key in val_keys[: args.max_val]:
            data, seg, _ = dataset.load(key)
            seg = np.asarray(seg[0])
            x = torch.from_numpy(np.asarray(data))
            label_boxes = {}
            for k in range(1, ctx.num_classes):
                pts = extreme_points(seg == k)
                if pts is not None:
                    label_boxes[k] = extend_box(box_from_extremes(pts), ctx.options.box_margin, seg.shape)
            for mode, boxes in (("localised_boxes", None), ("label_boxes_UPPER_BOUND_uses_label", label_boxes)):
                pred = method.predict_volume(net, x, ctx, boxes=boxes).argmax(0).numpy()
                for k in range(1, ctx.num_classes):
                    per_mode[mode].setdefault(k, []).append(dice(pred == k, seg == k))
            print(key, {m: {k: round(v[-1], 3) for k, v in d.items()} for m, d in per_mode.items()}, flush=True)
        for mode, d in per_mode.items():
            per_class = {str(k): float(np.nanmean(v)) for k, v in sorted(d.items())}
            result[f"dice_{mode}"] = per_class
            result[f"dice_{mode}_foreground_mean"] = float(np.nanmean(list(per_class.values())))
            print(mode, per_class, "foreground mean", round(result[f"dice_{mode}_foreground_mean"], 3))
    result["total_seconds"] = round(time.time() - t0, 1)
    if args.out_json:
        args.out_json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
