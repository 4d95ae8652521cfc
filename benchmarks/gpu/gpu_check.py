"""GPU check: the acceptance test of the GPU paths, and speed, memory and precision of every method.

The first command to run on a GPU machine. It fails (exit 1) unless every assertion of
:mod:`gpu_check_acceptance` holds (documentation/benchmarks.md, "GPU check", says what each proves):
``autosam_train`` without ``--device`` then ``--c`` with the final validation; no non-finite loss and a
falling unet loss; the autocast dtype seen inside every method's ``train_step`` (bf16 without a
GradScaler on a card with native bf16) ; unet really compiled; GPU and CPU predictions of one
checkpoint agreeing; 10 steps forced to fp16; DDP with one process equal to the plain run, and
``--num-gpus 2`` with two GPUs. Each section has a time limit; the whole run is meant to take at
most 10 minutes on one H100.

On a CUDA machine ``unet`` trains from GPU plans, ``sautomed`` with the real ViT-B at its planned
input size (random weights, ``--allow-random-init``), the other SAM methods with small backbones
(LiteMedSAM, tiny3d), then each predicts the example dataset's test cases. Without CUDA the same
steps run on the CPU with the tiny test backbones (CPU plans), so that CI checks the script end to
end; the GPU-only assertions are reported as skipped there, and ``--ddp-cpu`` adds the two-process
DDP runs as CPU processes (gloo), a check of the path, not of speed.

Figures per method: iterations/s of training (after warm-up, data loading included), peak GPU
memory of training and of prediction, FLOPs of one training iteration (forward + backward, counted
by ``torch.utils.flop_counter.FlopCounterMode`` on the first iteration, eager), the achieved
TFLOP/s and their share of the card's dense bf16/fp16 peak, seconds per predicted case, and the
autocast precision that ran (bf16, fp16 or fp32).

Usage: ``bash benchmarks/gpu/gpu_check.sh [--work DIR] [--json FILE] [--methods unet msam ...]
[--iters N] [--cpu] [--ddp-cpu] [--peak-tflops X]``. The JSON summary goes to ``--json`` (default
``WORK/gpu_check.json``); the exit status is 1 when a method failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[1]
# gpu_check_acceptance.py beside this file; bench_common.py in benchmarks/
sys.path[:0] = [str(Path(__file__).resolve().parent), str(_BENCH)]

from bench_common import use_work_folder  # noqa: E402

DATASET_ID = 999
METHODS = ("unet", "sautomed", "masksam", "msam", "medlsam")
#: GPU mode: unet from GPU plans, one SAM method with the real ViT-B (random weights, planned input
#: size), the others with small backbones (the run must fit into 10 minutes on one H100)
GPU_OPTIONS = {
    "unet": {},
    "sautomed": {"backbone": "sam_vit_b", "allow_random_init": "true"},
    "masksam": {"backbone": "litemedsam", "allow_random_init": "true"},
    "msam": {"backbone": "tiny3d", "allow_random_init": "true"},
    "medlsam": {"backbone": "litemedsam", "allow_random_init": "true", "num_support": "2"},
}
#: time limits of the sections in seconds (GPU mode; the CPU mode of CI gets three times as much)
TIMEOUTS = {"method": 150, "train_cli": 180, "predict_agree": 90, "fp16": 90, "ddp_one": 150, "throughput": 120,
            "ddp_two": 240}
#: tiny random backbones and small settings (CPU mode)
CPU_OPTIONS = {
    "unet": {},
    "sautomed": {"backbone": "tiny", "allow_random_init": "true", "input_size": "64", "attention_heads": "2",
                 "history_tokens": "4"},
    "masksam": {"backbone": "tiny", "allow_random_init": "true", "input_size": "64", "num_queries": "4",
                "generator_width": "8"},
    "msam": {"backbone": "tiny3d", "train_iterations": "2"},
    "medlsam": {"patch": "16", "base_width": "8", "num_pool": "2", "feature_dim": "8", "backbone": "tiny",
                "num_support": "2"},
}
#: dense (no sparsity) bf16/fp16 tensor-core peak in TFLOP/s by device name; the first match wins
PEAK_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
               ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10", 125.0), ("A6000", 155.0),
               ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="JSON summary (default WORK/gpu_check.json)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--iters", type=int, default=None, help="training iterations per method (default 20 GPU, 2 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="iterations left out of the timing (default 5 GPU, 0 CPU)")
    p.add_argument("--cases", type=int, default=None, help="example training cases (default 8 GPU, 4 CPU)")
    p.add_argument("--cpu", action="store_true", help="CPU mode with tiny backbones even when CUDA is available")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's peak TFLOP/s (default: from its name)")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-GPU DDP runs")
    p.add_argument("--no-acceptance", action="store_true",
                   help="skip the acceptance sections that train again (train CLI + --c, fp16 steps, --ddp)")
    p.add_argument("--ddp-cpu", action="store_true",
                   help="CPU mode: also train every method under DDP with 2 CPU processes (gloo)")
    return p.parse_args(argv)


def card_peak_tflops(name: str) -> float | None:
    for key, value in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


class TrainProbe:
    """Wraps the trainer's ``train_iteration``: counts the FLOPs of the first iteration and times
    the iterations after ``warmup`` (a host sync only at the start and the end of the timed span)."""

    def __init__(self, device, warmup: int):
        import torch

        self.torch, self.device, self.warmup = torch, device, warmup
        self.calls, self.flops, self.t0, self.t1, self.timed = 0, None, None, None, 0

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def __enter__(self):
        from autosam.training import trainer

        self.trainer, self.original = trainer, trainer._Loop.train_iteration
        probe = self

        def wrapped(loop, batch):
            probe.calls += 1
            probe.network = loop.network
            total = loop.ctx.num_epochs * loop.ctx.iterations_per_epoch
            if probe.calls == 1:
                return probe.count_flops(loop, batch)
            if probe.calls == probe.warmup + 2 or (probe.t0 is None and probe.calls >= 2):
                probe._sync()
                probe.t0, probe.timed = time.perf_counter(), 0
            out = probe.original(loop, batch)
            probe.timed += 1
            if probe.calls == total:
                probe._sync()
                probe.t1 = time.perf_counter()
            return out

        trainer._Loop.train_iteration = wrapped
        return self

    def __exit__(self, *exc):
        self.trainer._Loop.train_iteration = self.original

    def count_flops(self, loop, batch):
        from torch.utils.flop_counter import FlopCounterMode

        set_stance = getattr(self.torch.compiler, "set_stance", None)
        stance = set_stance("force_eager") if set_stance is not None else nullcontext()  # count the eager graph
        with stance, FlopCounterMode(display=False) as counter:
            out = self.original(loop, batch)
        self.flops = int(counter.get_total_flops())
        return out

    @property
    def iterations_per_s(self) -> float | None:
        if self.t0 is None or self.t1 is None or self.timed == 0 or self.t1 <= self.t0:
            return None
        return self.timed / (self.t1 - self.t0)


def prepare(work: Path, cases: int, target: str) -> tuple[Path, Path]:
    """The example dataset planned for ``target`` and preprocessed (3d); returns (test images folder, raw folder)."""
    from autosam.data.example import make_example_dataset
    from autosam.pipeline import plan_and_preprocess

    raw = make_example_dataset(Path(os.environ["AUTOSAM_RAW"]), DATASET_ID, cases, "organs")
    plan_and_preprocess(DATASET_ID, num_processes=2, configurations=("3d",), target=target)
    return raw / "imagesTs", raw


def planned_options(method: str, options: dict) -> dict:
    """``options`` plus the encoder input size the planner gives their backbone, when the plans'
    section of ``method`` was sized for another backbone (e.g. LiteMedSAM's stride 4 vs ViT-B's 16)."""
    from autosam.experiment_planning.plans import Plans
    from autosam.plugins import get_backbone
    from autosam.sam.sizing import encoder_input_size

    pre = next(Path(os.environ["AUTOSAM_PREPROCESSED"]).glob(f"Dataset{DATASET_ID:03d}_*"))
    section = Plans.load(pre / "autosamPlans.json").configuration("3d").methods.get(method) or {}
    if "backbone" not in options or "input_size" not in section or "input_size" in options:
        return options
    slice_size = section.get("slice_size") or section["patch_size"][-2:]
    return dict(options, input_size=str(encoder_input_size(list(slice_size)[-2:], get_backbone(options["backbone"]))))


def gb(n_bytes) -> float:
    return round(n_bytes / 1e9, 3)


def check_method(method: str, options: dict, device, args, test_images: Path, work: Path, peak: float | None) -> dict:
    import torch

    from autosam.inference.predictor import predict_folder
    from autosam.training.trainer import run_training

    cuda = device.type == "cuda"
    row: dict = {"method": method, "options": options}
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with TrainProbe(device, args.warmup) as probe:
        fold_dir = run_training(DATASET_ID, "3d", method, "all", epochs=1, iters_per_epoch=args.iters, device=str(device),
                                method_overrides=options, validate=False, num_workers=None if cuda else 0)
    row["train_seconds"] = round(time.perf_counter() - start, 2)
    row["iterations"] = args.iters
    row["iterations_per_s"] = probe.iterations_per_s and round(probe.iterations_per_s, 3)
    row["flops_per_iteration"] = probe.flops
    if probe.flops and probe.iterations_per_s:
        achieved = probe.flops * probe.iterations_per_s / 1e12
        row["tflops_per_s"] = round(achieved, 3)
        row["peak_tflops"] = peak
        row["fraction_of_peak"] = round(achieved / peak, 4) if peak else None
    if cuda:
        row["train_peak_memory_gb"] = gb(torch.cuda.max_memory_allocated(device))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    row["network_type"] = type(probe.network).__name__
    row["_network"] = probe.network  # for the compile assertion (not written to the JSON)
    ck = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    row["grad_scaler"] = ck.get("grad_scaler") is not None
    row["epoch_seconds"] = round(float(ck["logger"]["epoch_time"][-1]), 2) if ck.get("logger", {}).get("epoch_time") else None
    plans = json.loads((fold_dir.parent / "plans.json").read_text())
    cfg = plans["configurations"]["3d"]
    row["patch_size"], row["batch_size"] = cfg["patch_size"], cfg["batch_size"]
    out = work / "predictions" / method
    start = time.perf_counter()
    written = predict_folder(test_images, out, DATASET_ID, "3d", method, folds=["all"], device=str(device),
                             use_mirroring=cuda, num_processes=1)
    row["predict_seconds_per_case"] = round((time.perf_counter() - start) / max(1, len(written)), 2)
    row["predicted_cases"] = len(written)
    if cuda:
        row["predict_peak_memory_gb"] = gb(torch.cuda.max_memory_allocated(device))
    row["status"] = "ok"
    return row


def check_ddp(method: str, options: dict, args, work: Path, cpu: bool = False) -> dict:
    """``autosam_train 999 3d METHOD all --num-gpus 2`` in a subprocess (DDP over 2 GPUs, or with
    ``cpu`` over 2 CPU processes)."""
    import torch

    env = dict(os.environ)
    folder = Path(env["AUTOSAM_RESULTS"]) / "ddp"
    env["AUTOSAM_RESULTS"] = str(folder)
    cmd = [sys.executable, "-m", "autosam.cli.train", str(DATASET_ID), "3d", method, "all", "--epochs", "1",
           "--iters-per-epoch", str(args.iters), "--num-gpus", "2", "--quiet"]
    if cpu:
        cmd += ["--device", "cpu", "--num-workers", "0"]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", *str(value).split()]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    row = {"method": method, "command": " ".join(cmd[1:]), "returncode": proc.returncode,
           "wall_seconds": round(time.perf_counter() - start, 2)}
    if proc.returncode != 0:
        row["status"], row["error"] = "error", proc.stderr[-2000:]
        return row
    ck_path = next((p for p in folder.rglob("checkpoint_final.pth") if p.parent.parent.name.startswith(f"{method}__")),
                   None)
    if ck_path is not None:
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        times = (ck.get("logger") or {}).get("epoch_time") or []
        if times:
            row["epoch_seconds"] = round(float(times[-1]), 2)
            row["iterations_per_s"] = round(args.iters / float(times[-1]), 3)  # the epoch includes the patch validation
    row["status"] = "ok"
    return row


def print_table(summary: dict) -> None:
    print(f"\nGPU check ({summary['mode']} mode) on {summary['device_name']}: precision {summary['precision']}, "
          f"torch {summary['torch']}, peak {summary['peak_tflops']} TFLOP/s")
    head = ("method", "it/s", "TFLOP/s", "of peak", "train GB", "predict GB", "s/case", "status")
    print("  ".join(f"{h:>10}" for h in head))
    for m, r in summary["methods"].items():
        cells = (m, r.get("iterations_per_s"), r.get("tflops_per_s"), r.get("fraction_of_peak"),
                 r.get("train_peak_memory_gb"), r.get("predict_peak_memory_gb"), r.get("predict_seconds_per_case"),
                 r.get("status"))
        print("  ".join(f"{'-' if c is None else c!s:>10}" for c in cells))
    ddp = summary["ddp"]
    what = "2 CPU processes" if ddp.get("backend") == "gloo" else "2 GPUs"
    if ddp.get("status") == "skipped":
        print(f"DDP (2 GPUs): skipped: {ddp['reason']}")
    else:
        for m, r in ddp.get("methods", {}).items():
            print(f"DDP ({what}) {m}: {r.get('status')}, {r.get('iterations_per_s')} it/s (epoch incl. validation "
                  f"patches), wall {r.get('wall_seconds')} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from autosam.utils.precision import amp_dtype, precision_name
    from gpu_check_acceptance import (
        Acceptance,
        StepProbe,
        check_compiled,
        check_ddp_one_process,
        check_fp16_steps,
        check_predictions_agree,
        check_step_precision,
        check_train_cli,
        measure_throughput,
    )

    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    args.iters = args.iters or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 0)
    args.warmup = min(args.warmup, max(0, args.iters - 2))
    timeouts = {k: v if gpu else 3 * v for k, v in TIMEOUTS.items()}
    os.environ.setdefault("AUTOSAM_DDP_TIMEOUT_MINUTES", "5")  # a stuck collective fails a section quickly
    work = use_work_folder(args.work or Path(tempfile.mkdtemp(prefix="autosam_gpu_check_")))
    json_path = args.json or work / "gpu_check.json"
    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    peak = args.peak_tflops or (card_peak_tflops(name) if gpu else None)
    summary = {
        "mode": "gpu" if gpu else "cpu", "device": str(device), "device_name": name,
        "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "precision": precision_name(amp_dtype(device)), "torch": torch.__version__, "cuda": torch.version.cuda,
        "peak_tflops": peak, "iterations": args.iters, "warmup_iterations": args.warmup, "work": str(work),
        "methods": {}, "ddp": {}, "acceptance": {},
    }
    if gpu:
        summary["gpu_memory_gb"] = gb(torch.cuda.get_device_properties(device).total_memory)
    acc = Acceptance()

    def save():
        summary["acceptance"] = acc.results
        json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")  # partial results survive a crash

    start = time.perf_counter()
    test_images, _ = prepare(work, args.cases or (8 if gpu else 4), "gpu" if gpu else "cpu")
    if not gpu:  # one test case is enough on the CPU
        for extra in sorted(test_images.glob("*.nii.gz"))[1:]:
            extra.unlink()
    summary["prepare_seconds"] = round(time.perf_counter() - start, 2)
    options = GPU_OPTIONS if gpu else CPU_OPTIONS
    unet_network = None
    for method in args.methods:
        print(f"--- {method}", flush=True)
        row = {"method": method, "status": "error"}
        with acc.section(f"{method}: trains and predicts", timeouts["method"]) as detail:
            with StepProbe(method, device.type) as step:
                row = check_method(method, planned_options(method, options[method]), device, args, test_images,
                                   work, peak)
        if "error" in detail:
            row = {"method": method, "status": "error", "error": detail["error"], "traceback": detail["traceback"]}
        else:
            if method == "unet":
                unet_network = row.get("_network")
            row.pop("_network", None)
            check_step_precision(acc, method, step, device, row["grad_scaler"])
            row["autocast_in_train_step"] = sorted(step.seen)
        summary["methods"][method] = row
        save()
    if "unet" in args.methods and summary["methods"]["unet"].get("status") == "ok":
        check_compiled(acc, unet_network, gpu)
        results = next(Path(os.environ["AUTOSAM_RESULTS"]).glob(f"Dataset{DATASET_ID:03d}_*"))
        check_predictions_agree(acc, results / "unet__autosamPlans__3d", device, timeouts["predict_agree"])
        summary["throughput"] = measure_throughput(acc, TrainProbe, device, args.iters, args.warmup,
                                                   summary["methods"]["unet"].get("iterations_per_s"),
                                                   timeouts["throughput"])
        save()
    if not args.no_acceptance:
        check_train_cli(acc, gpu, Path(os.environ["AUTOSAM_RESULTS"]), timeouts["train_cli"])
        save()
        check_fp16_steps(acc, device, 10 if gpu else 1, timeouts["fp16"])  # fp16 is emulated (slow) on the CPU
        save()
        check_ddp_one_process(acc, gpu, work, timeouts["ddp_one"])
        save()
    del unet_network
    if args.no_ddp or (not gpu and not args.ddp_cpu):
        summary["ddp"] = {"status": "skipped", "reason": "--no-ddp" if args.no_ddp else "no CUDA (CPU mode; --ddp-cpu "
                                                                                         "runs 2 CPU processes)"}
    elif gpu and torch.cuda.device_count() < 2:
        summary["ddp"] = {"status": "skipped", "reason": f"{torch.cuda.device_count()} GPU visible, DDP needs 2"}
    else:
        summary["ddp"] = {"status": "ran", "backend": "nccl" if gpu else "gloo", "methods": {}}
        for method in args.methods:
            with acc.section(f"{method}: --num-gpus 2 (DDP)", timeouts["ddp_two"]):
                row = check_ddp(method, planned_options(method, options[method]), args, work, cpu=not gpu)
                summary["ddp"]["methods"][method] = row
                assert row["status"] == "ok", row.get("error", "")[-500:]
    summary["total_seconds"] = round(time.perf_counter() - start, 2)
    save()
    print_table(summary)
    acc.print_table()
    print(f"JSON summary: {json_path}")
    if acc.failed:
        print(f"GPU check FAILED: {len(acc.failed)} assertion(s): {', '.join(acc.failed)}", file=sys.stderr)
    return 1 if acc.failed else 0


if __name__ == "__main__":
    sys.exit(main())
