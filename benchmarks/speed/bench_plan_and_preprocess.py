"""Benchmark: ``autosam_plan_and_preprocess`` vs ``nnUNetv2_plan_and_preprocess`` on the same data.

Generates a synthetic BraTS-like dataset (default: 6 cases, 2 MR-like channels, 240 x 240 x 155
voxels at 1 mm, int16, zero outside an ellipsoidal head, 3 nested tumour labels), places it in
the raw folder of both tools (the formats are identical), runs both commands with the same
``-np`` (nnU-Net's fingerprint step gets the same number through ``-npfp``) in fresh temporary
output folders, and measures wall time and peak memory: the largest sum of RSS over the whole
process tree (parent and workers), sampled from ``/proc`` every 50 ms, and the same for PSS
(``/proc/<pid>/smaps_rollup``), which counts pages shared by forked workers only once.

    python benchmarks/speed/bench_plan_and_preprocess.py --np 2 --cases 6 --out benchmarks/results

Writes ``plan_and_preprocess.json`` and ``plan_and_preprocess.png`` into ``--out`` and prints a
table. Needs nnunetv2 (``pip install autosam[bench]``); ``--skip-nnunet`` runs autosam only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_common
from bench_common import bin_of  # noqa: E402

DATASET_ID = 900
DATASET_NAME = f"Dataset{DATASET_ID}_BenchMR"
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------- data
def make_dataset(raw: Path, cases: int, shape=(155, 240, 240), seed: int = 0) -> Path:
    import SimpleITK as sitk

    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(exist_ok=True)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for i in range(cases):
        rng = np.random.default_rng([seed, i])
        c = np.array(shape) / 2 + rng.uniform(-5, 5, 3)
        r = np.array([60, 85, 70]) + rng.uniform(-5, 5, 3)
        head = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 < 1
        t = c + rng.uniform(-20, 20, 3)
        d = ((z - t[0]) / 1.0) ** 2 + ((y - t[1]) / 1.2) ** 2 + ((x - t[2]) / 0.9) ** 2
        label = np.zeros(shape, np.uint8)
        label[(d < 25**2) & head] = 2  # oedema
        label[(d < 14**2) & head] = 3  # enhancing
        label[(d < 8**2) & head] = 1  # necrosis
        for ch, (base, contrast) in enumerate(((500.0, (0, -150, 250, 120)), (300.0, (0, 100, 450, 200)))):
            img = base + np.take(np.asarray(contrast, np.float32), label) + rng.normal(0, 25, shape).astype(np.float32)
            img = np.where(head, np.clip(img, 1, None), 0).astype(np.int16)
            itk = sitk.GetImageFromArray(img)
            itk.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(itk, str(folder / "imagesTr" / f"case_{i:03d}_{ch:04d}.nii.gz"), True)
        itk = sitk.GetImageFromArray(label)
        itk.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(itk, str(folder / "labelsTr" / f"case_{i:03d}.nii.gz"), True)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 3},
        "numTraining": cases, "file_ending": ".nii.gz", "name": "BenchMR"}, indent=2))
    return folder


# ---------------------------------------------------------------------------------------- measuring
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over ``root`` and all its descendants.

    RSS counts pages shared between forked workers once per process; PSS splits them.
    """
    tree = _children()
    rss = pss = 0
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
            pss += _pss(pid)
        except (OSError, IndexError, ValueError):
            pass
        stack.extend(tree.get(pid, []))
    return rss, pss


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[float, float, float, int]:
    """Run ``cmd``; return (wall seconds, peak tree RSS in GB, peak tree PSS in GB, return code)."""
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = [0, 0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                rss, pss = tree_memory(proc.pid)
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
                stop.wait(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        stop.set()
        t.join()
    return wall, peak[0] / 1e9, peak[1] / 1e9, rc


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=2, help="worker processes for both tools (default 2)")
    p.add_argument("--cases", type=int, default=6, help="number of cases (default 6)")
    p.add_argument("--shape", type=int, nargs=3, default=[155, 240, 240], help="z y x voxels (default 155 240 240)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON and PNG results")
    p.add_argument("--skip-nnunet", action="store_true", help="run autosam only")
    p.add_argument("--raw-dataset", type=Path, default=None, metavar="FOLDER",
                   help="an existing raw dataset folder (DatasetXXX_Name, nnU-Net format, e.g. the converted real "
                        "hippocampus of benchmarks/real_data/real_hippocampus.sh) instead of the synthetic BraTS-like one")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_pp_"))
    results = {}
    try:
        raw = work / "raw"
        dataset_id = DATASET_ID
        if args.raw_dataset is not None:
            source = args.raw_dataset.resolve()
            raw.mkdir()
            (raw / source.name).symlink_to(source, target_is_directory=True)
            dataset_id = int(source.name[len("Dataset"):len("Dataset") + 3])
            print(f"dataset: {source} ({len(list((source / 'labelsTr').glob('*')))} labelled cases)")
        else:
            t0 = time.perf_counter()
            make_dataset(raw, args.cases, tuple(args.shape))
            print(f"dataset: {args.cases} cases x 2 channels {args.shape} in {time.perf_counter() - t0:.1f} s ({raw})")
        base_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        runs = [("autosam", [bin_of("autosam_plan_and_preprocess"), "-d", str(dataset_id), "-np", str(args.np)],
                 {"AUTOSAM_RAW": str(raw), "AUTOSAM_PREPROCESSED": str(work / "a_pre"), "AUTOSAM_RESULTS": str(work / "a_res")})]
        if not args.skip_nnunet:
            runs.append(("nnU-Net", [bin_of("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-np", str(args.np),
                                     "-npfp", str(args.np)],
                         {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(work / "n_pre"), "nnUNet_results": str(work / "n_res")}))
        for name, cmd, extra in runs:
            wall, peak, peak_pss, rc = run_measured(cmd, {**base_env, **extra}, work / f"{name}.log")
            results[name] = {"wall_s": round(wall, 2), "peak_rss_gb": round(peak, 3), "peak_pss_gb": round(peak_pss, 3),
                             "returncode": rc, "command": " ".join(cmd)}
            print(f"{name}: {wall:.1f} s, peak RSS {peak:.2f} GB, peak PSS {peak_pss:.2f} GB, rc {rc}")
            if rc != 0:
                print((work / f"{name}.log").read_text()[-3000:])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = ({"dataset": str(args.raw_dataset)} if args.raw_dataset is not None else
            {"cases": args.cases, "shape_zyx": args.shape, "channels": 2})
    meta.update(np=args.np, cpu_count=os.cpu_count(), load_average_at_end=os.getloadavg())
    print("\n| tool | wall time (s) | peak RSS (GB) | peak PSS (GB) |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['peak_rss_gb']:.2f} | {r['peak_pss_gb']:.2f} |")
    if "nnU-Net" in results and "autosam" in results:
        a, n = results["autosam"], results["nnU-Net"]
        meta["ratio_wall"] = round(a["wall_s"] / n["wall_s"], 3)
        meta["ratio_peak_rss"] = round(a["peak_rss_gb"] / n["peak_rss_gb"], 3)
        meta["ratio_peak_pss"] = round(a["peak_pss_gb"] / n["peak_pss_gb"], 3)
        print(f"| autosam / nnU-Net | {meta['ratio_wall']:.2f}x | {meta['ratio_peak_rss']:.2f}x | {meta['ratio_peak_pss']:.2f}x |")
    (args.out / "plan_and_preprocess.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    _figure(results, args.out / "plan_and_preprocess.png", meta)
    return 0 if all(r["returncode"] == 0 for r in results.values()) else 1


def _figure(results: dict, path: Path, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, title in ((axes[0], "wall_s", "wall time (s)"), (axes[1], "peak_rss_gb", "peak RSS, process tree (GB)"),
                           (axes[2], "peak_pss_gb", "peak PSS, process tree (GB)")):
        vals = [results[n][key] for n in names]
        ax.bar(names, vals, color=["tab:blue", "tab:gray"][: len(names)])
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.1f}" if key == "wall_s" else f"{v:.2f}", ha="center", va="bottom")
        ax.set_title(title)
    what = (Path(meta["dataset"]).name if "dataset" in meta else f"{meta['cases']} cases x 2 ch {meta['shape_zyx']}")
    fig.suptitle(f"plan_and_preprocess: {what}, -np {meta['np']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
