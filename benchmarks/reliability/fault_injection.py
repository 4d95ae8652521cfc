"""Fault injection: ``kill -9`` preprocessing, training and prediction at random moments, rerun,
and check that nothing is corrupt and the results equal an uninterrupted run's.

    python benchmarks/reliability/fault_injection.py                  # 20 kills per stage (the full matrix)
    python benchmarks/reliability/fault_injection.py --kills 2 --stages predict   # a quick look

Every stage runs the real command in a subprocess (``python -m autosam.cli...``) on a tiny
synthetic dataset (``autosam.data.example``, 5 cases), first once uninterrupted (the reference),
then in *chains*: a fresh start, a run killed with SIGKILL after a random time, reruns of the
same command (each rerun killed again with probability 0.35), until a run finishes. A kill falls at a uniform random time between shortly
before the reference run wrote its first file (the imports before are of no interest) and the
end of the reference run; for training, 3 kills in 4 fall before ``checkpoint_final.pth`` was
written (the epochs, not the final validation). After every kill:

- every file the stage wrote loads (JSON, ``.npy``/``.npz``, images, checkpoints, PNGs); files
  whose name starts with ``.`` are the temporary files of atomic writes and the folder lock,
  which no reader trusts, and are only counted (the next run removes them when it takes the
  folder over; a finished chain must have none left);
- the killed process's children (pool workers) are gone within 10 s (``orphans``).

When a chain's run finishes, its results are compared with the reference:

- preprocess (``autosam_plan_and_preprocess -np 2``): every file identical (arrays, JSON, label
  copies) to the reference's;
- train (``autosam_train --c``, 4 epochs of 2 iterations, ``--num-workers 0``): each rerun
  resumes from the epoch of the ``checkpoint_latest.pth`` the kill left (``resuming from epoch
  E`` in its log, or from scratch when there is none), the final checkpoint holds all epochs once
  (the history of the epochs before a kill is kept unchanged), and the validation summary exists.
  Weights are not compared with the reference: a resumed run draws other augmentations by design
  (the loader seed depends on the start epoch);
- predict (``autosam_predict_from_modelfolder`` with the reference training's checkpoint): every
  label map bit-identical to the reference's, and the JSON files equal.

A kill counts as recovered when its chain ends with results equal to the reference. The last
line printed is ``N faults injected, N recovered, 0 corrupt``; the JSON summary before it has
the details per stage. Exit status 1 when a kill was not recovered, a file was corrupt or a
worker outlived its parent.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autosam.utils.locks import PARTIAL_FILE
from autosam.utils.processes import process_running

DATASET_ID = 998
NAME = "Dataset998_Example"
CASES = 5
EPOCHS = 4
ITERS = 2
CHAIN_P = 0.35  # probability that a rerun is killed too
FOCUS_P = 0.75  # probability that a kill falls before the stage's marker file appears
ORPHAN_WAIT_S = 10.0


# ------------------------------------------------------------------------------ processes
def _ppid_map() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(pid: int) -> list[int]:
    if not Path("/proc").is_dir():
        return []
    parents = _ppid_map()
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def run(cmd: list[str], env: dict, log: Path, kill_after: float | None = None, timeout: float = 1800,
        watch: Path | None = None, marker: str | None = None) -> dict:
    """Run ``cmd``; with ``kill_after``, SIGKILL it after that many seconds if it still runs.
    ``watch``: record when the first file appears under that folder (``first_output_s``) and when
    the file ``marker`` appears there (``marker_s``)."""
    start = time.monotonic()
    first = marked = None
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            elapsed = time.monotonic() - start
            if kill_after is not None and elapsed >= kill_after:
                break
            if elapsed > timeout:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{' '.join(cmd)} did not finish within {timeout} s; see {log}")
            if watch is not None and first is None and watch.exists() and any(p.is_file() for p in watch.rglob("*")):
                first = elapsed
            if marker is not None and marked is None and (watch / marker).is_file():
                marked = elapsed
            time.sleep(0.02)
        if proc.poll() is not None:
            return {"killed": False, "rc": proc.returncode, "seconds": time.monotonic() - start, "orphans": [],
                    "first_output_s": first, "marker_s": marked}
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while time.monotonic() < deadline and any(process_running(c) for c in children):
        time.sleep(0.1)
    orphans = [c for c in children if process_running(c)]
    for c in orphans:  # do not leave them behind, but report them
        try:
            os.kill(c, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return {"killed": True, "rc": None, "seconds": time.monotonic() - start, "orphans": orphans}


# ------------------------------------------------------------------------------ files
def load_file(path: Path) -> None:
    """Read ``path`` completely the way autosam would; raise when it is not intact."""
    name = path.name
    if name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".npy"):
        np.load(path)
    elif name.endswith(".npz"):
        with np.load(path) as z:
            for k in z.files:
                z[k]
    elif name.endswith((".nii.gz", ".nii", ".mha", ".nrrd")):
        from autosam.io.image import read_image

        read_image(path)
    elif name.endswith(".pth"):
        from autosam.training.checkpoint import load_checkpoint

        load_checkpoint(path, map_location="cpu")
    elif name.endswith(".png"):
        import matplotlib.image

        matplotlib.image.imread(path)
    else:
        path.read_bytes()


def check_folder(folder: Path) -> tuple[list[str], int]:
    """(files that do not load, hidden temporary/lock files present)."""
    bad, hidden = [], 0
    if not folder.exists():
        return bad, hidden
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            hidden += 1
            continue
        try:
            load_file(path)
        except Exception as exc:  # noqa: BLE001 - any failure to load is corruption
            bad.append(f"{path}: {type(exc).__name__}: {exc}")
    return bad, hidden


def visible_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def compare_folders(ref: Path, got: Path, skip=()) -> list[str]:
    """Differences between two output folders: missing/extra files, different contents."""
    a, b = visible_files(ref), visible_files(got)
    a = {k: v for k, v in a.items() if not any(re.search(s, k) for s in skip)}
    b = {k: v for k, v in b.items() if not any(re.search(s, k) for s in skip)}
    out = [f"missing {k}" for k in sorted(set(a) - set(b))] + [f"extra {k}" for k in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        pa, pb = a[key], b[key]
        if key.endswith(".npy"):
            x, y = np.load(pa), np.load(pb)
            same = x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
        elif key.endswith(".json"):
            same = json.loads(pa.read_text()) == json.loads(pb.read_text())
        elif key.endswith((".nii.gz", ".nii")):
            from autosam.io.image import read_image

            (x, gx), (y, gy) = read_image(pa), read_image(pb)
            same = x.dtype == y.dtype and np.array_equal(x, y) and gx == gy
        else:
            same = pa.read_bytes() == pb.read_bytes()
        if not same:
            out.append(f"differs {key}")
    return out


# ------------------------------------------------------------------------------ stages
class Stage:
    name = ""
    marker: str | None = None  # see run_stage

    def __init__(self, work: Path, base_env: dict):
        self.work, self.base_env = work, base_env

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self, pre: Path, results: Path) -> dict:
        return dict(self.base_env, AUTOSAM_RAW=str(self.work / "raw"), AUTOSAM_PREPROCESSED=str(pre),
                    AUTOSAM_RESULTS=str(results))

    def reset(self) -> None:  # a fresh chain
        pass

    def before_run(self) -> None:
        pass

    def after_run(self, log: Path, killed: bool) -> list[str]:
        return []

    def output(self) -> Path:
        raise NotImplementedError

    def ref_output(self) -> Path:
        raise NotImplementedError

    def compare(self) -> list[str]:
        raise NotImplementedError


class Preprocess(Stage):
    name = "preprocess"

    def command(self):
        return [sys.executable, "-m", "autosam.cli.plan_and_preprocess", "-d", str(DATASET_ID), "-np", "2",
                "--target", "cpu", "-c", "3d", "--no_pbar"]

    def ref_env(self):
        return self.env(self.work / "ref_pre", self.work / "ref_results")

    def chain_env(self):
        return self.env(self.work / "chain_pre", self.work / "chain_results")

    def reset(self):
        shutil.rmtree(self.work / "chain_pre", ignore_errors=True)

    def output(self):
        return self.work / "chain_pre" / NAME

    def ref_output(self):
        return self.work / "ref_pre" / NAME

    def compare(self):
        return compare_folders(self.work / "ref_pre" / NAME, self.output())


class Train(Stage):
    name = "train"
    marker = "checkpoint_final.pth"  # written when the epochs are done, before the final validation
    fold_rel = Path(NAME) / "unet__autosamPlans__3d" / "fold_0"

    def command(self):
        return [sys.executable, "-m", "autosam.cli.train", str(DATASET_ID), "3d", "unet", "0", "--c", "--epochs",
                str(EPOCHS), "--iters-per-epoch", str(ITERS), "--device", "cpu", "--num-workers", "0", "--quiet"]

    def ref_env(self):
        return self.env(self.work / "ref_pre", self.work / "ref_results")

    def chain_env(self):
        return self.env(self.work / "ref_pre", self.work / "chain_results")

    def output(self):
        return self.work / "chain_results" / self.fold_rel

    def ref_output(self):
        return self.work / "ref_results" / self.fold_rel

    def reset(self):
        shutil.rmtree(self.output(), ignore_errors=True)
        self.kept_history: list | None = None  # history of the last checkpoint a kill left

    def _latest(self):
        from autosam.training.checkpoint import load_checkpoint

        for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
            path = self.output() / name
            if path.is_file():
                try:
                    ck = load_checkpoint(path, map_location="cpu")
                except ValueError:  # reported by check_folder as corrupt
                    return None, None
                return int(ck["epoch"]), list((ck.get("logger") or {}).get("train_loss", []))[:int(ck["epoch"])]
        return None, None

    def before_run(self):
        self.logs_before = set(self.output().glob("training_log_*.txt")) if self.output().exists() else set()
        self.resume_epoch, history = self._latest()
        if history is not None:
            self.kept_history = history

    def after_run(self, log, killed):
        problems = []
        new = sorted(set(self.output().glob("training_log_*.txt")) - self.logs_before) if self.output().exists() else []
        if len(new) > 1:
            problems.append(f"one run wrote {len(new)} log files")
        text = new[0].read_text() if new else ""
        found = re.search(r"resuming from epoch (\d+)", text)
        trained = re.search(r"epoch \d+/\d+:", text)
        if self.resume_epoch is None:
            if found:
                problems.append(f"resumed from epoch {found.group(1)} without a checkpoint")
        elif found and int(found.group(1)) != self.resume_epoch:
            problems.append(f"resumed from epoch {found.group(1)}, the last completed epoch was {self.resume_epoch}")
        elif not found and trained:
            problems.append(f"trained without resuming from epoch {self.resume_epoch}")
        if not killed and not new:
            problems.append("a finished run wrote no log")
        return problems

    def compare(self):
        from autosam.training.checkpoint import load_checkpoint

        problems = []
        final = self.output() / "checkpoint_final.pth"
        if not final.is_file():
            return ["no checkpoint_final.pth"]
        ck = load_checkpoint(final, map_location="cpu")
        losses = list((ck.get("logger") or {}).get("train_loss", []))
        if int(ck["epoch"]) != EPOCHS or len(losses) != EPOCHS:
            problems.append(f"final checkpoint: epoch {ck['epoch']}, {len(losses)} epochs in its history, not {EPOCHS}")
        kept = self.kept_history or []
        if losses[:len(kept)] != kept:
            problems.append("the history of the epochs before a kill changed")
        if (self.output() / "checkpoint_latest.pth").exists():
            problems.append("checkpoint_latest.pth left after the final checkpoint")
        if not (self.output() / "validation" / "summary.json").is_file():
            problems.append("no validation/summary.json")
        ref = visible_files(self.work / "ref_results" / self.fold_rel)
        got = visible_files(self.output())
        strip = lambda names: {re.sub(r"training_log_.*\.txt", "training_log", n) for n in names}  # noqa: E731
        if strip(ref) != strip(got):
            problems.append(f"files differ from the reference's: {sorted(strip(ref) ^ strip(got))}")
        return problems


class Predict(Stage):
    name = "predict"

    def command(self):
        return [sys.executable, "-m", "autosam.cli.predict_modelfolder", "-i", str(self.work / "raw" / NAME / "imagesTs"),
                "-o", str(self.out), "-m", str(self.work / "ref_results" / NAME / "unet__autosamPlans__3d"), "-f", "0",
                "--disable_tta", "-device", "cpu", "-npp", "1", "--quiet"]

    def ref_env(self):
        self.out = self.work / "ref_predictions"
        return self.env(self.work / "ref_pre", self.work / "ref_results")

    def chain_env(self):
        self.out = self.work / "chain_predictions"
        return self.env(self.work / "ref_pre", self.work / "ref_results")

    def output(self):
        return self.work / "chain_predictions"

    def ref_output(self):
        return self.work / "ref_predictions"

    def reset(self):
        shutil.rmtree(self.output(), ignore_errors=True)

    def compare(self):
        return compare_folders(self.work / "ref_predictions", self.output())


# ------------------------------------------------------------------------------ the matrix
def run_stage(stage: Stage, kills: int, rng: random.Random, logs: Path) -> dict:
    start = time.monotonic()
    env = stage.ref_env()
    ref = run(stage.command(), env, logs / f"{stage.name}_reference.txt", watch=stage.ref_output(),
              marker=stage.marker)
    if ref["rc"] != 0:
        raise RuntimeError(f"{stage.name}: the uninterrupted run failed (status {ref['rc']}); see "
                           f"{logs / f'{stage.name}_reference.txt'}")
    ref_s = ref["seconds"]
    # kills fall between shortly before the first file is written (the imports before are of no
    # interest) and the end of an uninterrupted run
    window = (max(0.5, 0.8 * (ref["first_output_s"] or 0.0)), ref_s)
    # a stage whose last part is long and of less interest (training's final validation) gets most
    # kills before its marker file appears
    focus = (window[0], min(ref_s, ref["marker_s"] + 1.0)) if ref.get("marker_s") else window
    env = stage.chain_env()
    summary = {"reference_s": round(ref_s, 1), "kill_window_s": [round(w, 2) for w in window],
               "focus_window_s": [round(w, 2) for w in focus], "kills": 0, "recovered": 0, "corrupt": [], "not_recovered": [],
               "orphans": [], "runs": 0, "chains": 0, "kill_times_s": [], "temporary_files_seen": 0}
    n = 0
    while summary["kills"] < kills:
        stage.reset()
        summary["chains"] += 1
        chain_kills, chain_problems = 0, []
        while True:
            kill = chain_kills == 0 or rng.random() < CHAIN_P
            after = rng.uniform(*(focus if rng.random() < FOCUS_P else window)) if kill else None
            stage.before_run()
            n += 1
            log = logs / f"{stage.name}_{n:03d}.txt"
            result = run(stage.command(), env, log, kill_after=after, timeout=max(600, 20 * ref_s))
            summary["runs"] += 1
            chain_problems += stage.after_run(log, result["killed"])
            if result["killed"]:
                chain_kills += 1
                summary["kill_times_s"].append(round(after, 2))
                bad, hidden = check_folder(stage.output())
                summary["corrupt"] += bad
                summary["temporary_files_seen"] += hidden
                summary["orphans"] += result["orphans"]
                continue
            if result["rc"] != 0:
                chain_problems.append(f"run {n} ended with status {result['rc']} (see {log})")
            break
        bad, _ = check_folder(stage.output())
        summary["corrupt"] += bad
        chain_problems += stage.compare()
        left = [str(p) for p in stage.output().rglob(".*") if p.name == ".autosam.lock" or PARTIAL_FILE.match(p.name)]
        if left:
            chain_problems.append(f"lock or unfinished temporary files left after the finished run: {left}")
        summary["kills"] += chain_kills
        if chain_problems:
            summary["not_recovered"].append({"chain": summary["chains"], "kills": chain_kills, "problems": chain_problems})
        else:
            summary["recovered"] += chain_kills
        print(f"{stage.name}: chain {summary['chains']}: {chain_kills} kill(s), "
              f"{'recovered' if not chain_problems else 'NOT recovered: ' + '; '.join(chain_problems)}", flush=True)
    summary["wall_s"] = round(time.monotonic() - start, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per stage (default 20)")
    p.add_argument("--stages", nargs="+", choices=("preprocess", "train", "predict"),
                   default=["preprocess", "train", "predict"], help="stages to inject faults into (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    p.add_argument("--workdir", type=Path, default=None, help="working folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON summary to this file")
    a = p.parse_args(argv)
    if not Path("/proc").is_dir():
        p.error("needs Linux (/proc) to follow worker processes")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="autosam_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    rng = random.Random(a.seed)
    base_env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    start = time.monotonic()
    from autosam.data.example import make_example_dataset

    make_example_dataset(work / "raw", DATASET_ID, CASES)
    stages = {"preprocess": Preprocess(work, base_env), "train": Train(work, base_env),
              "predict": Predict(work, base_env)}
    results = {}
    # a stage not asked for still runs once, uninterrupted, when a later stage needs its output
    needed = {"preprocess": bool({"train", "predict"} & set(a.stages)), "train": "predict" in a.stages}
    try:
        for name in ("preprocess", "train", "predict"):
            stage = stages[name]
            if name in a.stages:
                results[name] = run_stage(stage, a.kills, rng, logs)
            elif needed.get(name):
                ref = run(stage.command(), stage.ref_env(), logs / f"{name}_reference.txt")
                if ref["rc"] != 0:
                    raise RuntimeError(f"{name}: the uninterrupted run failed; see {logs / f'{name}_reference.txt'}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    injected = sum(r["kills"] for r in results.values())
    recovered = sum(r["recovered"] for r in results.values())
    corrupt = sum(len(r["corrupt"]) for r in results.values())
    orphans = sum(len(r["orphans"]) for r in results.values())
    summary = {"kills_per_stage": a.kills, "seed": a.seed, "stages": results, "faults_injected": injected,
               "recovered": recovered, "corrupt": corrupt, "orphans": orphans,
               "wall_s": round(time.monotonic() - start, 1), "workdir": str(work) if a.keep else None}
    text = json.dumps(summary, indent=2)
    print(text)
    if a.json is not None:
        a.json.write_text(text + "\n")
    print(f"{injected} faults injected, {recovered} recovered, {corrupt} corrupt")
    return 0 if recovered == injected and corrupt == 0 and orphans == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
