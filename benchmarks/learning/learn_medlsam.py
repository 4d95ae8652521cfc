"""Does `medlsam` meet issue 8's acceptance? On the `organs` example dataset (8 cases, fold 0:
6 training / 2 validation cases) this script runs what `autosam_train 999 3d medlsam 0` runs
(self-supervised MedLAM training, support prototypes, full validation with LiteMedSAM zero-shot)
and reports

- localisation: 3D IoU of the localised (un-extended) box vs the true box, per class
  (`validation/summary.json` -> `method_report`, written by the trainer next to Dice);
- Dice with localised boxes (the automatic MedLSAM result; no label is read at prediction; SAM's
  decoder zero-shot, or fine-tuned on the training cases with ``--set finetune_sam=true``):
  `validation/summary.json` (original geometry, nnU-Net layout);
- Dice with boxes taken FROM THE LABEL (upper bound, the paper's "manual box" columns; it uses the
  label): the same pipeline with the label's boxes (one per connected part, extended by the same
  margin), exported and evaluated the same way into
  `validation_label_boxes_UPPER_BOUND_uses_label/summary.json`;
- times: wall and process CPU seconds of training and of each SAM pass, with the load average.

Example (one core, `OMP_NUM_THREADS=1`):

    OMP_NUM_THREADS=1 python benchmarks/learning/learn_medlsam.py --work /tmp/medlsam_bench --epochs 30 --iters-per-epoch 25
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

_BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_BENCH)]  # bench_common.py
from bench_common import ensure_example_dataset, finish, use_work_folder  # noqa: E402


def _clock() -> dict:
    return {"wall": time.time(), "cpu": time.process_time(), "load": os.getloadavg()[0]}


def _since(t0: dict) -> dict:
    t1 = _clock()
    return {"wall_s": round(t1["wall"] - t0["wall"], 1), "cpu_s": round(t1["cpu"] - t0["cpu"], 1),
            "load_avg_1min_start_end": [round(t0["load"], 2), round(t1["load"], 2)]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for raw/preprocessed/results (created)")
    p.add_argument("--cases", type=int, default=8, help="example cases (default 8)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--iters-per-epoch", type=int, default=25)
    p.add_argument("--no-sam", action="store_true", help="only the localisation IoU (no SAM segmentation, no Dice)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="medlsam option overrides, e.g. lr=3e-4")
    p.add_argument("--skip-train", action="store_true", help="reuse the fold's checkpoint_final.pth from an earlier run")
    p.add_argument("--out-json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)

    work = use_work_folder(args.work)

    import torch

    from autosam.evaluation.evaluate import evaluate_folder
    from autosam.experiment_planning.splits import get_or_create_splits
    from autosam.inference.export import export_prediction
    from autosam.inference.predictor import load_trained_model
    from autosam.training.dataloading import PreprocessedDataset
    from autosam.training.trainer import run_training
    from autosam.training.validation import reference_folder
    from autosam_plugins.medlsam.localize import label_boxes
    from autosam_plugins.medlsam.options import box_margin_voxels

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    result: dict = {"options": dict(kv.split("=", 1) for kv in args.set), "epochs": args.epochs,
                    "iters_per_epoch": args.iters_per_epoch, "torch_threads": torch.get_num_threads()}
    t_all = _clock()
    pre = ensure_example_dataset(args.cases)
    fold_dir = work / "res" / "Dataset999_Example" / "medlsam__autosamPlans__3d" / f"fold_{args.fold}"
    common = dict(epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, device="cpu",
                  method_overrides=result["options"], num_workers=0)
    if not (args.skip_train and (fold_dir / "checkpoint_final.pth").is_file()):
        t = _clock()
        fold_dir = run_training(999, "3d", "medlsam", args.fold, validate=False, **common)
        result["train_time"] = _since(t)
        result["train_time"]["cpu_s_per_iteration"] = round(result["train_time"]["cpu_s"] / (args.epochs * args.iters_per_epoch), 3)
    if not args.no_sam:
        # what autosam_train does after training: validation with localised boxes, LiteMedSAM
        # zero-shot, and the localisation IoU report, into validation/summary.json
        t = _clock()
        run_training(999, "3d", "medlsam", args.fold, validation_only=True, **common)
        result["validation_time"] = _since(t)
    model = load_trained_model(fold_dir.parent, folds=(args.fold,), device="cpu", method_overrides=result["options"])
    method, ctx, net = model.method, model.ctx, model.folds[0].network
    data_folder = pre / ctx.configuration.data_identifier
    val_keys = sorted(get_or_create_splits(pre, PreprocessedDataset(data_folder).keys)[args.fold]["val"])
    dataset = PreprocessedDataset(data_folder, val_keys)
    result["val_cases"] = val_keys
    result["sam_decoder"] = "fine-tuned (--finetune-sam)" if ctx.options.finetune_sam else "zero-shot"

    summary_path = fold_dir / "validation" / "summary.json"
    if not args.no_sam and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        report = summary["method_report"]
        result["dice_localised_boxes"] = {k: v["Dice"] for k, v in summary["mean"].items()}
        result["dice_localised_boxes_foreground_mean"] = summary["foreground_mean"]["Dice"]
    else:
        t = _clock()
        report = method.validation_report(net, ctx, dataset, val_keys)
        result["localisation_time"] = _since(t)
    result["localization_iou"] = report["localization_iou"]
    result["localization_iou_mean"] = report["localization_iou_mean"]
    print("localisation IoU per class:", report["localization_iou"], "mean", round(report["localization_iou_mean"], 3))

    if not args.no_sam:
        # upper bound: the label's boxes (THIS MODE READS THE LABEL), same pipeline, same evaluation
        out = fold_dir / "validation_label_boxes_UPPER_BOUND_uses_label"
        out.mkdir(parents=True, exist_ok=True)
        ending = ctx.dataset_json["file_ending"]
        t = _clock()
        for key in val_keys:
            data, seg, props = dataset.load(key)
            seg = np.asarray(seg[0])
            boxes = label_boxes(seg, range(1, ctx.num_classes), box_margin_voxels(ctx.options, ctx.configuration.spacing, seg.shape),
                                split=ctx.options.split_components)
            ctx.extra["case_properties"] = props
            probs = method.predict_volume(net, torch.from_numpy(np.array(data, dtype=np.float32)), ctx, boxes=boxes)
            export_prediction(probs, props, ctx.configuration, out / f"{key}{ending}")
        ub = evaluate_folder(reference_folder(pre), out, pre / "dataset.json", output_file=out / "summary.json")
        result["label_box_sam_time"] = _since(t)
        result["dice_label_boxes_UPPER_BOUND_uses_label"] = {k: v["Dice"] for k, v in ub["mean"].items()}
        result["dice_label_boxes_UPPER_BOUND_uses_label_foreground_mean"] = ub["foreground_mean"]["Dice"]
        for mode in ("dice_localised_boxes", "dice_label_boxes_UPPER_BOUND_uses_label"):
            if mode in result:
                print(mode, result[mode], "foreground mean", round(result[f"{mode}_foreground_mean"], 3))
    result["total_time"] = _since(t_all)
    return finish(result, args.out_json)


if __name__ == "__main__":
    main()
