"""The assertions of ``benchmarks/gpu/gpu_check.sh`` (see documentation/benchmarks.md, "GPU check"):
each section proves one GPU path and fails the run when it does not hold.

Sections (``Acceptance.section``) run under a time limit (SIGALRM; subprocesses get their own
timeout); a failed assertion or an exception marks the section failed and the script exits 1. On
the CPU (CI) every section that can run does, with tiny settings; the GPU-only ones are recorded as
skipped with the reason.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

DATASET_ID = 999


class SectionTimeout(Exception):
    pass


class Acceptance:
    """Named results ``{"status": ok|failed|skipped, "detail": ..., "seconds": ...}``."""

    def __init__(self):
        self.results: dict[str, dict] = {}

    @property
    def failed(self) -> list[str]:
        return [name for name, r in self.results.items() if r["status"] == "failed"]

    def skip(self, name: str, reason: str) -> None:
        self.results[name] = {"status": "skipped", "detail": reason, "seconds": 0.0}

    @contextmanager
    def section(self, name: str, timeout_s: int):
        """Run the block with a time limit; ``yield`` a dict for details (figures) of the section."""
        detail: dict = {}
        start = time.perf_counter()

        def expire(signum, frame):
            raise SectionTimeout(f"section {name!r} exceeded its {timeout_s} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.alarm(int(timeout_s))
        try:
            yield detail
            status = "ok"
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the run fails
            status = "failed"
            detail["error"] = f"{type(exc).__name__}: {exc}"
            detail["traceback"] = traceback.format_exc()[-3000:]
            print(f"ACCEPTANCE FAILED: {name}: {detail['error']}", file=sys.stderr, flush=True)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        self.results[name] = {"status": status, "detail": detail, "seconds": round(time.perf_counter() - start, 2)}

    def print_table(self) -> None:
        print("\nacceptance:")
        for name, r in self.results.items():
            extra = r["detail"].get("error") if isinstance(r["detail"], dict) else r["detail"]
            print(f"  {r['status']:>7}  {name} ({r['seconds']} s){': ' + str(extra) if extra else ''}")


# ----------------------------------------------------------------------------------- helpers
def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autosam.cli.train", str(DATASET_ID), "3d", *args]


def run(cmd: list[str], timeout_s: int, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.setdefault("AUTOSAM_DDP_TIMEOUT_MINUTES", "5")  # a stuck collective fails the section, not the night
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"{' '.join(cmd[2:])} exited {proc.returncode}: {proc.stderr[-1500:]}"
    return proc


def fold_folder(results: Path, method: str, fold: str) -> Path:
    return next(results.glob(f"Dataset{DATASET_ID:03d}_*")) / f"{method}__autosamPlans__3d" / f"fold_{fold}"


def training_logs(fold_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(fold_dir.glob("training_log_*.txt")))


def load_checkpoint(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


class StepProbe:
    """Records, inside ``method.train_step``, whether autocast is on and in which dtype (``seen``),
    and counts the trainer's non-finite-loss warnings (``non_finite``)."""

    def __init__(self, method_name: str, device_type: str):
        from autosam.plugins import get_method

        self.method, self.device_type = get_method(method_name), device_type
        self.seen: set = set()
        self.non_finite = 0

    def __enter__(self):
        import torch

        original = self.method.train_step

        def train_step(*args, **kwargs):
            enabled = torch.is_autocast_enabled(self.device_type)
            self.seen.add(str(torch.get_autocast_dtype(self.device_type)) if enabled else "fp32 (no autocast)")
            return original(*args, **kwargs)

        self.method.train_step = train_step
        probe = self

        class Count(logging.Handler):
            def emit(self, record):
                if "non-finite loss" in record.getMessage():
                    probe.non_finite += 1

        self.handler = Count(level=logging.WARNING)
        logging.getLogger("autosam.training.trainer").addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.method.__dict__.pop("train_step", None)
        logging.getLogger("autosam.training.trainer").removeHandler(self.handler)


def expected_amp(device) -> str:
    from autosam.utils.precision import amp_dtype

    dtype = amp_dtype(device)
    return "fp32 (no autocast)" if dtype is None else str(dtype)


# ----------------------------------------------------------------------------------- sections
def check_train_cli(acc: Acceptance, gpu: bool, results: Path, timeout_s: int) -> None:
    """``autosam_train 999 3d unet 0`` with NO --device, then ``--c``, the final validation on."""
    with acc.section("train without --device, then --c, validation on", timeout_s) as d:
        epochs, iters = (3, 25) if gpu else (1, 1)
        # on the CPU (CI) a cheap validation: one window position per axis where the patch allows
        extra = ["--iters-per-epoch", str(iters), "--quiet"] + ([] if gpu else ["--num-workers", "0", "-step_size", "1"])
        run(train_command("unet", "0", "--epochs", str(epochs), *extra), timeout_s)
        run(train_command("unet", "0", "--epochs", str(epochs + 1), "--c", *extra), timeout_s)
        fold = fold_folder(results, "unet", "0")
        meta = json.loads((fold / "metadata.json").read_text())
        assert meta["device"] == ("cuda:0" if gpu else "cpu"), f"trained on {meta['device']}"
        ck = load_checkpoint(fold / "checkpoint_final.pth")
        assert int(ck["epoch"]) == epochs + 1, f"final checkpoint of epoch {ck['epoch']}, not {epochs + 1}"
        summary = json.loads((fold / "validation" / "summary.json").read_text())
        splits = json.loads((next(Path(os.environ["AUTOSAM_PREPROCESSED"]).glob(f"Dataset{DATASET_ID:03d}_*"))
                             / "splits_final.json").read_text())
        assert len(summary["metric_per_case"]) == len(splits[0]["val"]), "the summary misses validation cases"
        logs = training_logs(fold)
        assert "non-finite loss" not in logs, "non-finite losses (steps skipped) in the training log"
        losses = [x for x in ck["logger"]["train_loss"] if x is not None and math.isfinite(x)]
        d["train_losses"] = [round(x, 4) for x in losses]
        d["foreground_dice"] = summary["foreground_mean"].get("Dice")
        if gpu:
            assert len(losses) == epochs + 1 and losses[-1] < losses[0], f"unet's training loss does not fall: {losses}"


def check_step_precision(acc: Acceptance, name: str, probe: StepProbe, device, scaled: bool) -> None:
    """The dtype autocast had inside ``train_step`` of a run (and its GradScaler) is the device's rule."""
    with acc.section(f"{name}: autocast dtype inside train_step", 30) as d:
        want = expected_amp(device)
        d["observed"], d["expected"], d["grad_scaler"] = sorted(probe.seen), want, scaled
        assert probe.seen == {want}, f"autocast inside train_step was {sorted(probe.seen)}, expected {want}"
        assert scaled == (want == "torch.float16"), f"GradScaler {'used' if scaled else 'not used'} with {want}"
        assert probe.non_finite == 0, f"{probe.non_finite} non-finite loss warning(s)"


def check_compiled(acc: Acceptance, network, gpu: bool) -> None:
    with acc.section("unet: really compiled (no eager fallback)", 30) as d:
        if not gpu:
            d["note"] = "no compile on the CPU"
            assert type(network).__name__ != "OptimizedModule"
            return
        import torch._dynamo.utils as dynamo_utils

        from autosam.training.run_support import COMPILE_FALLBACKS

        graphs = int(dynamo_utils.counters["stats"]["unique_graphs"])
        d["unique_graphs"], d["fallbacks"] = graphs, list(COMPILE_FALLBACKS)
        assert type(network).__name__ == "OptimizedModule", "unet was not compiled on CUDA"
        assert not COMPILE_FALLBACKS, f"torch.compile fell back to eager: {COMPILE_FALLBACKS}"
        assert graphs >= 1, "dynamo compiled no graph"


def check_predictions_agree(acc: Acceptance, model_folder: Path, device, timeout_s: int) -> None:
    """One checkpoint on the CPU (fp32) and on the GPU: labels (GPU in its training precision) agree on
    >= 99 % of the voxels; GPU fp32 (no TF32) and CPU fp32 probabilities agree to 1e-3."""
    name = "GPU and CPU predictions of one checkpoint agree"
    if device.type != "cuda":
        acc.skip(name, "no GPU")
        return
    with acc.section(name, timeout_s) as d:
        import torch

        from autosam.inference.predictor import load_trained_model, predict_preprocessed_case
        from autosam.training.dataloading import PreprocessedDataset
        from autosam.utils import precision

        from autosam.experiment_planning.plans import Plans

        pre = next(Path(os.environ["AUTOSAM_PREPROCESSED"]).glob(f"Dataset{DATASET_ID:03d}_*"))
        dataset = PreprocessedDataset(pre / Plans.load(pre / "autosamPlans.json").configuration("3d").data_identifier)
        data, _, props = dataset.load(dataset.keys[0])

        def probs(dev, fp32: bool):
            # eager: the numbers, not the compiler, are the point here (and compiling twice costs minutes)
            model = load_trained_model(model_folder, ["all"], "final", dev, method_overrides={"compile": "false"})
            amp = precision.amp_dtype
            if fp32:
                precision.amp_dtype = lambda device: None
            try:
                with torch.no_grad():
                    return predict_preprocessed_case(model.method, model.folds, data, props, model.ctx,
                                                     use_mirroring=False).float().cpu()
            finally:
                precision.amp_dtype = amp

        cpu = probs("cpu", True)
        gpu = probs(str(device), False)
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            gpu32 = probs(str(device), True)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        agree = float((gpu.argmax(0) == cpu.argmax(0)).float().mean())
        diff = float((gpu32 - cpu).abs().max())
        d["label_agreement"], d["fp32_max_probability_difference"] = round(agree, 5), diff
        assert agree >= 0.99, f"GPU labels agree with the CPU's on {agree:.2%} of the voxels (< 99 %)"
        assert diff <= 1e-3, f"GPU fp32 and CPU fp32 probabilities differ by up to {diff:.2e} (> 1e-3)"


def check_fp16_steps(acc: Acceptance, device, steps: int, timeout_s: int) -> None:
    """Training forced to fp16: the GradScaler path for ``steps`` steps, finite losses, no skipped step."""
    with acc.section(f"{steps} step(s) forced to fp16 (GradScaler)", timeout_s) as d:
        import torch

        from autosam.training import trainer
        from autosam.utils import precision

        amp = precision.amp_dtype
        precision.amp_dtype = lambda device: torch.float16
        try:
            with StepProbe("unet", device.type) as probe:
                fold = trainer.run_training(DATASET_ID, "3d", "unet", "all", epochs=1, iters_per_epoch=steps,
                                            device=str(device), validate=False, num_workers=0,
                                            method_overrides={"compile": "false"})
        finally:
            precision.amp_dtype = amp
        ck = load_checkpoint(fold / "checkpoint_final.pth")
        d["train_loss"], d["scale"] = ck["logger"]["train_loss"], (ck["grad_scaler"] or {}).get("scale")
        assert probe.seen == {"torch.float16"}, f"autocast inside train_step was {sorted(probe.seen)}"
        assert ck["grad_scaler"] is not None, "no GradScaler state in the checkpoint"
        assert probe.non_finite == 0, f"{probe.non_finite} step(s) skipped with a non-finite loss"
        assert all(math.isfinite(x) for x in ck["logger"]["train_loss"]), "non-finite training loss"


def check_ddp_one_process(acc: Acceptance, gpu: bool, work: Path, timeout_s: int) -> None:
    """``autosam_train ... --ddp`` (torchrun with one process, the process group started) against the
    plain run: the same weights (up to GPU nondeterminism: relative L2 distance < 1e-3)."""
    with acc.section("DDP with one process (--ddp) equals the plain run", timeout_s) as d:
        import torch

        # fold 0: its final validation (always on) predicts a few cases, not all of them
        args = ["unet", "0", "--epochs", "1", "--iters-per-epoch", "3" if gpu else "2", "--compile", "false", "--quiet",
                "--disable_checkpointing", "-step_size", "1"] + ([] if gpu else ["--device", "cpu", "--num-workers", "0"])
        weights = {}
        for kind in ("plain", "ddp"):
            env = dict(os.environ, AUTOSAM_RESULTS=str(work / f"res_{kind}"))
            run(train_command(*args, *(["--ddp"] if kind == "ddp" else []), "--seed", "7"), timeout_s, env)
            fold = fold_folder(work / f"res_{kind}", "unet", "0")
            weights[kind] = load_checkpoint(fold / "checkpoint_final.pth")["network"]
            if kind == "ddp":
                assert "DDP over 1 ranks" in training_logs(fold), "the --ddp run did not train through DDP"
        num = sum(float((weights["ddp"][k].double() - weights["plain"][k].double()).norm() ** 2)
                  for k in weights["plain"] if weights["plain"][k].is_floating_point())
        den = sum(float(weights["plain"][k].double().norm() ** 2) for k in weights["plain"]
                  if weights["plain"][k].is_floating_point())
        d["relative_l2_distance"] = math.sqrt(num / den)
        assert d["relative_l2_distance"] < 1e-3, f"DDP weights differ from the plain run's by {d['relative_l2_distance']:.2e}"


def measure_throughput(acc: Acceptance, train_probe, device, iters: int, warmup: int, compiled_its: float | None,
                       timeout_s: int) -> dict:
    """unet's iterations/s eager vs compiled (bf16) and bf16 vs fp32 (eager); ``train_probe``:
    gpu_check's TrainProbe."""
    from autosam.training import trainer
    from autosam.utils import precision

    out = {"unet_compiled_amp": compiled_its}
    if device.type != "cuda":
        acc.skip("throughput: unet eager vs compiled, bf16 vs fp32", "no GPU")
        return out
    with acc.section("throughput: unet eager vs compiled, bf16 vs fp32", timeout_s) as d:
        for key, fp32 in (("unet_eager_amp", False), ("unet_eager_fp32", True)):
            amp = precision.amp_dtype
            if fp32:
                precision.amp_dtype = lambda device: None
            try:
                with train_probe(device, warmup) as probe:
                    trainer.run_training(DATASET_ID, "3d", "unet", "all", epochs=1, iters_per_epoch=iters,
                                         device=str(device), validate=False, method_overrides={"compile": "false"})
            finally:
                precision.amp_dtype = amp
            out[key] = probe.iterations_per_s and round(probe.iterations_per_s, 3)
        d.update(out)
        assert all(v for v in out.values()), f"a throughput was not measured: {out}"
    return out
