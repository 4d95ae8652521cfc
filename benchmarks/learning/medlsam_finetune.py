"""What does medlsam's optional ``--finetune-sam`` (MedSAM-style decoder fine-tuning on the fold's
labelled training cases, 0-20 px box perturbation) do to the SAM stage? On the `organs` example
(8 cases, fold 0: 6 training / 2 validation cases) this script fine-tunes copies of LiteMedSAM's
mask decoder with each learning rate of ``--lrs`` (the same encoded training slices for all), and
segments the validation cases with boxes taken FROM THE LABEL (one per connected part, extended by
the method's default margin: the SAM stage alone, without the localiser's error; this reads the
validation labels, so it is an upper-bound protocol, never a prediction mode). Dice per label on the
preprocessed grid, for the zero-shot decoder and for each fine-tuned one, with the times.

    OMP_NUM_THREADS=2 python benchmarks/learning/medlsam_finetune.py --work /tmp/mlft --lrs 1e-5 1e-4 --steps 200
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

_BENCH = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_BENCH)]  # bench_common.py
from bench_common import ensure_example_dataset, finish, use_work_folder  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for raw/preprocessed data (created)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 1e-4])
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the method's)")
    p.add_argument("--slices", type=int, default=None, help="fine-tuning slices (default: the method's)")
    p.add_argument("--backbone", default="litemedsam")
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)

    use_work_folder(args.work)

    import torch

    from autosam.experiment_planning.plans import Plans
    from autosam.experiment_planning.splits import get_or_create_splits
    from autosam.plugins import get_method
    from autosam.training.dataloading import PreprocessedDataset
    from autosam.training.method import MethodContext
    from autosam_plugins.medlsam.localize import label_boxes
    from autosam_plugins.medlsam.options import box_margin_voxels
    from autosam_plugins.medlsam.segment import finetune_decoder, finetune_samples, segment_boxes

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    pre = ensure_example_dataset(args.cases)
    plans = Plans.load(pre / "autosamPlans.json")
    cfg = plans.configurations["3d"]
    folder = pre / cfg.data_identifier
    split = get_or_create_splits(pre, PreprocessedDataset(folder).keys)[args.fold]
    train_keys, val_keys = sorted(split["train"]), sorted(split["val"])
    method = get_method("medlsam")
    overrides = {"backbone": args.backbone}
    if args.steps is not None:
        overrides["finetune-steps"] = str(args.steps)
    if args.slices is not None:
        overrides["finetune-slices"] = str(args.slices)
    num_classes = max(plans.labels.values()) + 1
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=method.make_options(cfg.methods.get("medlsam", {}), overrides),
                        device=torch.device("cpu"), num_input_channels=1, num_classes=num_classes)
    backbone = method._backbone(ctx)
    train = PreprocessedDataset(folder, train_keys)
    val = PreprocessedDataset(folder, val_keys)
    result: dict = {"train_cases": train_keys, "val_cases": val_keys, "backbone": args.backbone,
                    "steps": ctx.options.finetune_steps, "torch_threads": torch.get_num_threads(), "runs": {}}

    t = time.time()
    samples = finetune_samples(backbone, train, train_keys, ctx, np.random.default_rng(ctx.options.seed))
    result["encode_training_slices_s"] = round(time.time() - t, 1)
    result["slices"] = len(samples)

    cases = {}
    for key in val_keys:
        data, seg, _ = val.load(key)
        seg = np.asarray(seg[0])
        boxes = label_boxes(seg, range(1, num_classes), box_margin_voxels(ctx.options, cfg.spacing, seg.shape),
                            split=ctx.options.split_components)
        cases[key] = (torch.from_numpy(np.array(data, dtype=np.float32)), seg, boxes)

    def evaluate(decoder) -> dict:
        t0 = time.time()
        dice = []
        for image, seg, boxes in cases.values():
            pred = segment_boxes(backbone, image, boxes, num_classes, spacing=cfg.spacing, mask_decoder=decoder).argmax(0).numpy()
            dice.append([2 * ((pred == k) & (seg == k)).sum() / max(1, (pred == k).sum() + (seg == k).sum())
                         for k in range(1, num_classes)])
        per_class = np.mean(dice, 0)
        return {"dice_per_label": [round(float(d), 3) for d in per_class], "dice_mean": round(float(per_class.mean()), 3),
                "eval_s": round(time.time() - t0, 1)}

    result["runs"]["zero-shot"] = evaluate(None)
    print("zero-shot:", result["runs"]["zero-shot"], flush=True)
    for lr in args.lrs:
        ctx.options.finetune_lr = lr
        decoder = copy.deepcopy(backbone.mask_decoder)
        t = time.time()
        report = finetune_decoder(backbone, decoder, train, train_keys, ctx, samples=samples)
        run = {"finetune_s": round(time.time() - t, 1), **{k: round(v, 4) for k, v in report.items() if isinstance(v, float)}}
        run.update(evaluate(decoder))
        result["runs"][f"lr {lr:g}"] = run
        print(f"fine-tuned, lr {lr:g}:", run, flush=True)
    return finish(result, args.out_json)


if __name__ == "__main__":
    main()
