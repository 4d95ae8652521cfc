"""Fingerprint extraction: autosam vs nnU-Net v2 on the same dataset, same ``-np``, one run.

Builds a BraTS-like dataset (6 two-channel int16 MR cases of 155 x 240 x 240 voxels, zero
background outside a head ellipsoid, two nested labels) in a temporary folder, then runs
``autosam_extract_fingerprint``'s library call and ``nnUNetv2_extract_fingerprint`` each in a fresh
process under ``/usr/bin/time -v`` and prints wall time, peak memory (largest process) and the
foreground intensity statistics of both.

    python benchmarks/speed/bench_fingerprint.py [-np 2] [--cases 6] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from raw_dataset_builder import write_raw_dataset  # noqa: E402


def make_dataset(raw: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    shape = (155, 240, 240)
    z, y, x = np.ogrid[:155, :240, :240]
    head = ((z - 77) / 70.0) ** 2 + ((y - 120) / 100.0) ** 2 + ((x - 120) / 85.0) ** 2 <= 1
    cases = {}
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[((z - 70 - i) / 15.0) ** 2 + ((y - 100) / 20.0) ** 2 + ((x - 110) / 20.0) ** 2 <= 1] = 1
        lab[((z - 70 - i) / 6.0) ** 2 + ((y - 100) / 8.0) ** 2 + ((x - 110) / 8.0) ** 2 <= 1] = 2
        chans = [np.where(head, rng.normal(500 * (c + 1), 50, shape), 0).astype(np.int16) for c in range(2)]
        cases[f"b{i}"] = (chans, lab)
    write_raw_dataset(raw, "Dataset501_BenchMR", cases, channel_names={"0": "T1", "1": "T2"},
                      labels={"background": 0, "edema": 1, "core": 2}, spacing=(1, 1, 1))


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{out.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    h, m, s = (float(g) if g else 0.0 for g in wall.groups())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return h * 3600 + m * 60 + s, rss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-np", type=int, default=2)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_fp_"))
    try:
        raw = work / "raw"
        if not (raw / "Dataset501_BenchMR").is_dir():
            make_dataset(raw, args.cases)
        env = dict(os.environ, AUTOSAM_RAW=str(raw), AUTOSAM_PREPROCESSED=str(work / "pre"),
                   nnUNet_raw=str(raw), nnUNet_preprocessed=str(work / "nnpre"), nnUNet_results=str(work / "nnres"))
        code = (f"from autosam.experiment_planning.fingerprint import extract_fingerprint; "
                f"extract_fingerprint(501, num_processes={args.np}, overwrite=True)")
        t_a, m_a = timed([sys.executable, "-c", code], env)
        nn = shutil.which("nnUNetv2_extract_fingerprint") or str(Path(sys.executable).parent / "nnUNetv2_extract_fingerprint")
        t_n, m_n = timed([nn, "-d", "501", "-np", str(args.np), "--clean"], env)
        print(f"autosam : {t_a:7.1f} s  peak {m_a:5.2f} GB")
        print(f"nnU-Net : {t_n:7.1f} s  peak {m_n:5.2f} GB   (autosam/nnU-Net: time {t_a / t_n:.2f}x, memory {m_a / m_n:.2f}x)")
        a = json.loads((work / "pre/Dataset501_BenchMR/dataset_fingerprint.json").read_text())
        b = json.loads((work / "nnpre/Dataset501_BenchMR/dataset_fingerprint.json").read_text())
        for c, st in a["foreground_intensity_properties_per_channel"].items():
            other = b["foreground_intensity_properties_per_channel"][c]
            print(f"channel {c}: " + ", ".join(f"{k} {st[k]:.1f}/{other[k]:.1f}" for k in other))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
