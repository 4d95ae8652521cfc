"""Benchmark: a prediction sharing the cores with a training (two autosam processes on one node).

The same prediction (``autosam_predict_from_modelfolder`` on a folder of images) is timed

- ``alone``: nothing else runs;
- ``beside_default``: while an ``autosam_train`` runs, both with autosam's default thread counts
  (``autosam/utils/threads.py``: the training takes the cores, the prediction started beside it takes
  the cores left, at least 1);
- ``beside_oversubscribed``: while the same training runs, both forced to one thread per core
  (``OMP_NUM_THREADS=<cores>``, what torch does by default), so the two sets of OpenMP threads compete.

The training (``--train-args``, an ``autosam_train`` command line of a preprocessed dataset) is
started first, the prediction ``--warmup`` seconds later (default 40: the training is past its
start-up and iterating); the training is stopped after each measurement. Prints the wall time per
case of each mode and its slowdown against ``alone``.

    python benchmarks/speed/bench_shared_cores.py --model RESULTS/Dataset004_Hippocampus/unet__autosamPlans__3d \\
        --images VAL/images --train-args "4 3d unet 1 --device cpu --epochs 1000 --iters-per-epoch 1000"

Run it on an otherwise idle machine: every figure is about contention.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autosam.utils.threads import affinity_cores

MODES = ("alone", "beside_default", "beside_oversubscribed")


def _env(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "AUTOSAM_NUM_THREADS", "MKL_NUM_THREADS")}
    if mode == "beside_oversubscribed":
        env["OMP_NUM_THREADS"] = str(affinity_cores())
    return env


def start_training(train_args: list[str], env: dict, log: Path, warmup: float) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "autosam_train"), *train_args]
    handle = log.open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(warmup)  # start-up: plans, data loader, the first iterations
    if proc.poll() is not None:
        raise RuntimeError(f"autosam_train ended early ({proc.returncode}); see {log}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def predict(model: Path, images: Path, out: Path, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "autosam_predict_from_modelfolder"), "-m", str(model), "-i", str(images),
           "-o", str(out), "-f", "0", "--device", "cpu", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"prediction failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a trained model folder (<method>__<plans>__<config>)")
    p.add_argument("--images", type=Path, required=True, help="folder of images to predict")
    p.add_argument("--train-args", required=True, help="the autosam_train arguments of the competing training")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--warmup", type=float, default=40.0, help="seconds between starting the training and the prediction")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_shared_cores_"))
    work.mkdir(parents=True, exist_ok=True)
    n_cases = len(list(args.images.glob("*_0000.nii.gz")))
    results: dict = {"cores": affinity_cores(), "cases": n_cases, "train_args": args.train_args}
    for mode in args.modes:
        env = _env(mode)
        training = None
        if mode != "alone":
            training = start_training(shlex.split(args.train_args), env, work / f"train_{mode}.log", args.warmup)
        try:
            wall = predict(args.model, args.images, work / f"pred_{mode}", env)
        finally:
            if training is not None:
                stop(training)
        results[mode] = {"wall_s": round(wall, 1), "seconds_per_case": round(wall / max(1, n_cases), 2),
                         "loadavg_1min_after": round(os.getloadavg()[0], 2)}
        print(f"{mode:22s} {wall:7.1f} s  ({wall / max(1, n_cases):.2f} s per case)", flush=True)
    if "alone" in results:
        for mode in MODES[1:]:
            if mode in results:
                results[mode]["slowdown_vs_alone"] = round(results[mode]["wall_s"] / results["alone"]["wall_s"], 2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
