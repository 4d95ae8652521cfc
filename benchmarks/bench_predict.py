"""Benchmark: ``autosam_predict`` (unet) vs ``nnUNetv2_predict_from_modelfolder`` on the same CT volumes.

Both tools get the same PlainConvUNet topology, patch size, target spacing, CT normalisation and
the *same weights* (random He initialisation from the unet method, copied into an nnU-Net
checkpoint): one results folder is written for each tool by this script (no training). Each tool
runs once as a subprocess on the CPU with its default settings (mirroring on, step 0.5); the
script reports wall time, peak RSS of the whole process tree (polled from /proc every 200 ms) and
the voxel agreement of the two label maps. ``--repeats N`` runs both tools N times, alternating
which goes first, and reports every ratio and their median.

    python benchmarks/bench_predict.py                # two real CT volumes from shared/data
    python benchmarks/bench_predict.py --disable_tta  # without mirroring (both tools)

Needs nnunetv2 (``pip install -e .[bench]``) and the unet method plugin.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator"
DATASET = "Dataset997_PredictBench"
LABELS = {"background": 0, **{f"organ{i}": i for i in range(1, 14)}}  # 14 classes
INTENSITY = {"max": 3000.0, "mean": 60.0, "median": 50.0, "min": -1024.0, "percentile_00_5": -1000.0,
             "percentile_99_5": 1500.0, "std": 250.0}


# ----------------------------------------------------------------------------- process tree memory
def _tree_rss_bytes(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as f:
                rss[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, str, float]:
    """Wall time, peak RSS of the process tree, output, and CPU time (user + system) of the tree."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_bytes(proc.pid))
        time.sleep(0.2)  # one poll costs ~4 ms of CPU; every 50 ms that was ~4 % of this 2-core machine
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children and their reaped workers
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return wall, peak, out, cpu


# ----------------------------------------------------------------------------- inputs
def make_inputs(folder: Path, cases: tuple[str, ...] = ("ctsm", "ctmid")) -> list[str]:
    """CT volumes: ``ctsm`` = example_ct_sm (30 slices), ``ctmid`` = slices 40-80 of example_ct."""
    folder.mkdir(parents=True, exist_ok=True)
    if "ctsm" in cases:
        shutil.copy(DATA / "example_ct_sm.nii.gz", folder / "ctsm_0000.nii.gz")
    if "ctmid" in cases:
        big = sitk.ReadImage(str(DATA / "example_ct.nii.gz"))
        sub = big[:, :, 40:80]  # SimpleITK slicing keeps the physical geometry (origin shifts)
        sitk.WriteImage(sitk.Cast(sub, sitk.sitkInt16), str(folder / "ctmid_0000.nii.gz"))
    return list(cases)


# ----------------------------------------------------------------------------- models
def build_autosam_model(results: Path, spacing: list[float], patch: list[int]):
    """Plans + a fold_0 checkpoint of the unet method (random weights); returns (plans, state_dict)."""
    import torch

    from autosam.experiment_planning.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, NetworkTopology, Plans
    from autosam.plugins import get_plugin_system
    from autosam.training.checkpoint import save_checkpoint
    from autosam.training.method import MethodContext
    from autosam.utils.files import write_json

    n_stages = 5
    topology = NetworkTopology(
        n_stages=n_stages, features_per_stage=[32, 64, 128, 256, 320][:n_stages], kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], n_conv_per_stage_encoder=[2] * n_stages,
        n_conv_per_stage_decoder=[2] * (n_stages - 1))
    cfg = ConfigurationPlan(name="3d", data_identifier="autosamPlans_3d", spacing=spacing, patch_size=patch, batch_size=2,
                            median_image_size_in_voxels=[40, 101, 122], normalization_schemes=["CTNormalization"],
                            use_mask_for_norm=[False], network=topology)
    plans = Plans(schema_version=PLANS_SCHEMA_VERSION, dataset_name=DATASET, plans_name="autosamPlans", planner="bench",
                  gpu_memory_target_gb=8, original_median_spacing=[3.0, 3.0, 3.0], original_median_shape=[40, 101, 122],
                  num_channels=1, channel_names={"0": "CT"}, labels=LABELS,
                  foreground_intensity_properties_per_channel={"0": INTENSITY}, configurations={"3d": cfg},
                  default_method="unet", default_method_rationale="benchmark")
    entry = get_plugin_system().methods.entry("unet")
    method = entry.obj
    options = method.make_options(cfg.methods.get("unet", {}), {})
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=options, device=torch.device("cpu"),
                        num_input_channels=1, num_classes=plans.num_classes)
    torch.manual_seed(0)
    network = method.build_network(ctx)
    folder = results / DATASET / "unet__autosamPlans__3d"
    dataset_json = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz"}
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", dataset_json)
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", method_entry=entry, options=options, network=network,
                    epoch=1, num_epochs=1, configuration="3d", plans_name="autosamPlans", fold=0)
    return plans, network.state_dict(), dataset_json


def build_nnunet_model(folder: Path, plans, state_dict, dataset_json) -> None:
    import torch

    cfg = plans.configurations["3d"]
    t = cfg.network
    resampling = lambda is_seg, order: {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}  # noqa: E731
    nn_plans = {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [3.0, 3.0, 3.0],
        "original_median_shape_after_transp": [40, 101, 122], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": INTENSITY},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": cfg.patch_size, "median_image_size_in_voxels": [40, 101, 122],
            "spacing": cfg.spacing, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling(False, 3),
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": resampling(True, 1),
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": resampling(False, 1),
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": t.n_stages, "features_per_stage": t.features_per_stage,
                    "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": t.kernel_sizes, "strides": t.strides,
                    "n_conv_per_stage": t.n_conv_per_stage_encoder, "n_conv_per_stage_decoder": t.n_conv_per_stage_decoder,
                    "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(nn_plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "fold_0").mkdir(exist_ok=True)
    torch.save({"network_weights": state_dict, "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")


def agreement(a_dir: Path, b_dir: Path, cases: list[str]) -> float:
    same = total = 0
    for c in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(a_dir / f"{c}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(b_dir / f"{c}.nii.gz")))
        if a.shape != b.shape:
            raise RuntimeError(f"{c}: autosam shape {a.shape} vs nnU-Net {b.shape}")
        same += int(np.count_nonzero(a == b))
        total += a.size
    return same / total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary folder)")
    p.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--spacing", type=float, nargs=3, default=[3.0, 2.5, 2.5], help="target spacing z y x (mm)")
    p.add_argument("--disable_tta", action="store_true")
    p.add_argument("--only", choices=("autosam", "nnunet"), default=None)
    p.add_argument("--cases", nargs="+", choices=("ctsm", "ctmid"), default=["ctsm", "ctmid"])
    p.add_argument("--repeats", type=int, default=1, help="run both tools this many times (alternating order)")
    args = p.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for k in ("raw", "preprocessed", "results"):
        (work / k).mkdir(exist_ok=True)
        env[f"AUTOSAM_{k.upper()}"] = str(work / k)
        env[f"nnUNet_{k}"] = str(work / f"nnunet_{k}")
    os.environ.update({k: v for k, v in env.items() if k.startswith("AUTOSAM_")})
    cases = make_inputs(work / "imagesTs", tuple(args.cases))
    plans, state, dj = build_autosam_model(work / "results", args.spacing, args.patch)
    build_nnunet_model(work / "nnunet_model", plans, state, dj)
    bindir = Path(sys.executable).parent
    tta = ["--disable_tta"] if args.disable_tta else []
    commands = {
        "autosam": [str(bindir / "autosam_predict"), "-i", str(work / "imagesTs"), "-o", str(work / "pred_autosam"),
                    "-d", DATASET, "-c", "3d", "-m", "unet", "-f", "0", "--device", "cpu", "--quiet", *tta],
        "nnunet": [str(bindir / "nnUNetv2_predict_from_modelfolder"), "-i", str(work / "imagesTs"), "-o",
                   str(work / "pred_nnunet"), "-m", str(work / "nnunet_model"), "-f", "0", "-device", "cpu",
                   *(["--disable_tta"] if args.disable_tta else [])],
    }
    runs: dict[str, list[dict]] = {}
    for r in range(max(1, args.repeats)):
        names = [n for n in commands if not args.only or n == args.only]
        for name in (names if r % 2 == 0 else names[::-1]):
            shutil.rmtree(work / f"pred_{name}", ignore_errors=True)
            wall, peak, _, cpu = run_measured(commands[name], env)
            runs.setdefault(name, []).append({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(peak / 2**20),
                                              "loadavg_1min_after": round(os.getloadavg()[0], 2)})
            print(f"run {r + 1}: {name:8s} wall {wall:7.1f} s   CPU {cpu:7.1f} s   peak RSS (process tree) {peak / 2**20:7.0f} MiB",
                  flush=True)
    results: dict = {name: (v[0] if len(v) == 1 else v) for name, v in runs.items()}
    if len(runs) == 2:
        ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs["autosam"], runs["nnunet"])]
        cpu_ratios = [a["cpu_s"] / b["cpu_s"] for a, b in zip(runs["autosam"], runs["nnunet"])]
        mem = max(a["peak_rss_mib"] for a in runs["autosam"]) / max(b["peak_rss_mib"] for b in runs["nnunet"])
        agree = agreement(work / "pred_autosam", work / "pred_nnunet", cases)
        ratio, cpu_ratio = float(np.median(ratios)), float(np.median(cpu_ratios))
        print(f"autosam / nnU-Net: wall time {ratio:.2f}x (runs: {', '.join(f'{x:.3f}' for x in ratios)}), "
              f"CPU time {cpu_ratio:.2f}x, peak memory {mem:.2f}x; label agreement {agree * 100:.2f}% of voxels")
        results.update(ratio_wall=round(ratio, 3), ratio_cpu=round(cpu_ratio, 3), ratio_memory=round(mem, 3),
                       label_agreement=round(agree, 5))
        if len(ratios) > 1:
            results.update(ratio_wall_runs=[round(x, 3) for x in ratios], ratio_cpu_runs=[round(x, 3) for x in cpu_ratios])
    print(json.dumps({"cases": cases, "patch": args.patch, "spacing": args.spacing, "tta": not args.disable_tta,
                      "cpu_count": os.cpu_count(), "loadavg_at_end": os.getloadavg(), **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
