"""Learning curves at equal iterations: Dice of a few validation cases against training iterations.

Trains ``METHOD`` on fold 0 of a preprocessed dataset the way ``autosam_train`` does (the plans'
section of the method, its options, optimiser, schedule, loss, training step and data loader; one
process, no augmentation workers), and every ``--eval-every`` iterations (one "epoch") predicts the
first ``--val-cases`` validation cases of the fold through the method's own ``predict_volume``
*without mirroring*, scoring Dice per label on the preprocessed grid against the preprocessed
label map. The method's ``after_training`` (MedLSAM's support prototypes) runs before each
evaluation. ``--gt-boxes`` also scores prediction with the reference labels' tight 3D boxes as box
prompts (methods that take 3D boxes: MedLSAM's SAM stage, 3D-SAutoMed's box generator steered by the
boxes; an upper bound on what the automatic localisation or box generation loses).

Dice does not depend on machine load; the CPU seconds recorded (``process_time`` of training and of
evaluation) do, a little, through cache and memory contention: compare them only within one run.

usage: OMP_NUM_THREADS=1 python benchmarks/sam_probes/curves.py -d 4 -m sautomed --iters 200 --eval-every 100 \
           --val-cases 6 --set input_size=64 --tag in64 --out FILE.json
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dice_per_class, load_setup, write_json  # noqa: E402


def parse_sets(items: list[str]) -> dict:
    out = {}
    for kv in items:
        if "=" not in kv:
            raise SystemExit(f"--set {kv!r}: expected NAME=VALUE")
        k, v = kv.split("=", 1)
        out[k.replace("-", "_")] = v
    return out


def label_boxes(seg: np.ndarray, num_classes: int) -> dict[int, list[np.ndarray]]:
    boxes = {}
    for k in range(1, num_classes):
        idx = np.argwhere(seg == k)
        if len(idx):
            boxes[k] = [np.concatenate([idx.min(0), idx.max(0)])]
    return boxes


def evaluate(method, network, ctx, ds, keys, gt_boxes: bool) -> dict:
    from autosam.inference.predictor import predict_preprocessed_case

    network.eval()
    t_cpu, t_wall = time.process_time(), time.time()
    per_case, per_case_boxes = [], []
    with torch.no_grad():
        for key in keys:
            data, seg, props = ds.load(key)
            ref = np.asarray(seg[0])
            probs = predict_preprocessed_case(method, [network], data, props, ctx, use_mirroring=False)
            per_case.append(dice_per_class(probs.argmax(0).numpy(), ref, ctx.num_classes))
            if gt_boxes:
                boxes = label_boxes(ref, ctx.num_classes)
                if "box3d" in method.prompt_kinds:  # the method's prompt path (sautomed: boxes steer its generator)
                    from autosam.prompts import prompts_from_boxes

                    tensor = torch.from_numpy(np.array(data, dtype=np.float32))
                    probs = method.predict_with_prompts(network, tensor, prompts_from_boxes(boxes), ctx)
                else:
                    probs = predict_preprocessed_case(method, [network], data, props, ctx, use_mirroring=False,
                                                      boxes=boxes)
                per_case_boxes.append(dice_per_class(probs.argmax(0).numpy(), ref, ctx.num_classes))
    network.train()
    out = {"dice": np.nanmean(np.array(per_case), 0).round(4).tolist(), "eval_cpu_s": round(time.process_time() - t_cpu, 1),
           "eval_wall_s": round(time.time() - t_wall, 1)}
    out["fg_mean"] = round(float(np.nanmean(out["dice"])), 4)
    if gt_boxes:
        out["dice_gt_boxes"] = np.nanmean(np.array(per_case_boxes), 0).round(4).tolist()
        out["fg_mean_gt_boxes"] = round(float(np.nanmean(out["dice_gt_boxes"])), 4)
    return out


def main(argv=None) -> int:
    from autosam.training.dataloading import make_loader
    from autosam.training.trainer import OVERSAMPLE_FOREGROUND

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-m", "--method", required=True)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=100, help="iterations per epoch; Dice after each epoch")
    p.add_argument("--val-cases", type=int, default=6, help="first N validation cases of the fold")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="method options (as autosam_train flags)")
    p.add_argument("--gt-boxes", action="store_true", help="also score with the reference labels' boxes as prompts")
    p.add_argument("--random-init", action="store_true",
                   help="LiteMedSAM backbone from random weights (the ablation of its shipped weights)")
    p.add_argument("--eval-at-start", action="store_true", help="also score before training")
    p.add_argument("--tag", default="", help="name of this run in the output")
    p.add_argument("--out", default=None, help="JSON file (rewritten after every evaluation)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    if a.random_init:  # the builder loads the shipped weights unless told not to
        import autosam.sam.litemedsam as lite

        shipped = lite.build_litemedsam

        def random_litemedsam(spec, **kw):
            return shipped(spec, **{**kw, "checkpoint": None, "pretrained": False, "allow_random_init": True})

        lite.build_litemedsam = random_litemedsam
    epochs = max(1, math.ceil(a.iters / a.eval_every))
    method, ctx, ds, train, val = load_setup(a.dataset, a.method, parse_sets(a.set), fold=a.fold, epochs=epochs,
                                             iters_per_epoch=a.eval_every)
    ctx.seed = a.seed
    keys = val[: a.val_cases]
    network = method.build_network(ctx)
    loss_fn = method.build_loss(ctx)
    optimizer, scheduler = method.configure_optimizers(network, ctx)
    custom = method.make_train_loader(ctx, ds.subset(train), list(train))
    bs = ctx.rank_batch_size
    loader = iter(custom) if custom is not None else make_loader(
        ds.subset(train), bs, method.train_patch_size(ctx), method.deep_supervision_scales(ctx), train=True,
        num_workers=0, seed=a.seed, oversample_foreground=ctx.foreground_fraction(ctx.configuration.batch_size,
                                                                                  OVERSAMPLE_FOREGROUND))
    record = {"method": a.method, "tag": a.tag, "random_init": a.random_init, "iterations": a.iters, "dataset": str(a.dataset), "fold": a.fold, "val_cases": keys,
              "options": {k: (v if isinstance(v, (int, float, str, bool, type(None), list)) else str(v))
                          for k, v in vars(ctx.options).items()},
              "trainable_parameters": sum(p.numel() for p in network.parameters() if p.requires_grad),
              "curve": []}
    clip = getattr(ctx.options, "grad_clip", None)
    train_cpu = 0.0
    gt = a.gt_boxes and (method.accepts_boxes or "box3d" in method.prompt_kinds)

    def score(done: int) -> None:
        method.after_training(network, ctx, ds.subset(train), list(train))
        row = {"iterations": done, "train_cpu_s": round(train_cpu, 1), **evaluate(method, network, ctx, ds, keys, gt)}
        record["curve"].append(row)
        print(f"[{a.tag or a.method}] {row}", flush=True)
        if a.out:
            write_json(a.out, record)

    if a.eval_at_start:
        score(0)
    done = 0
    for epoch in range(epochs):
        ctx.epoch = epoch
        network.train()
        t = time.process_time()
        losses = []
        for _ in range(min(a.eval_every, a.iters - done)):
            batch = next(loader)
            optimizer.zero_grad(set_to_none=True)
            loss = method.train_step(network, batch, loss_fn, ctx).loss
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            done += 1
        if scheduler is not None:
            scheduler.step()
        train_cpu += time.process_time() - t
        print(f"[{a.tag or a.method}] {done} iterations, mean loss {np.mean(losses):.4f}", flush=True)
        score(done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
