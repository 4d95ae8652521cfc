"""Benchmark: ``autosam_predict`` (unet) vs ``nnUNetv2_predict_from_modelfolder`` on the same CT volumes.

Both tools get the same PlainConvUNet topology, patch size, target spacing, CT normalisation and
the *same weights* (random He initialisation from the unet method, copied into an nnU-Net
checkpoint): one results folder is written for each tool by this script (no training). Each tool
runs once as a subprocess on the CPU with its default settings (mirroring on, step 0.5); the
script reports wall time, peak RSS of the whole process tree (polled from /proc every 200 ms) and
the voxel agreement of the two label maps. ``--repeats N`` runs both tools N times, alternating
which goes first, and reports every ratio and their median.

    python benchmarks/speed/bench_predict.py                # two real CT volumes from shared/data
    python benchmarks/speed/bench_predict.py --disable_tta  # without mirroring (both tools)

With ``--model`` a *trained* autosam unet model folder is used instead (its plans become an
equivalent nnU-Net plans file, its fold-0 weights the nnU-Net checkpoint), on the images of
``--images``; with ``--reference`` (label files named like the cases) each run's mean foreground
Dice is reported too. ``--variants`` picks the runs: ``autosam`` and ``nnunet`` (default settings,
mirroring on), ``autosam_fast`` (``--fast``: no mirroring, step 0.75, bf16 where the CPU has it
natively), ``autosam_fast_fp32`` (``--fast --no-bf16``), ``autosam_bf16`` (the defaults with ``--bf16``)
and ``nnunet_notta`` (``--disable_tta``) - the fast CPU path's runtime table:

    python benchmarks/speed/bench_predict.py --model RESULTS/Dataset004_Hippocampus/unet__autosamPlans__3d \
        --images VAL/imagesTr --reference VAL/labelsTr --variants autosam autosam_fast nnunet nnunet_notta

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

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "totalsegmentator"
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
    from autosam.experiment_planning.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, NetworkTopology, Plans

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
    dataset_json = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 0, "file_ending": ".nii.gz"}
    state = save_random_unet(results / DATASET / "unet__autosamPlans__3d", plans, dataset_json)
    return plans, state, dataset_json


def save_random_unet(folder: Path, plans, dataset_json: dict, configuration: str = "3d") -> dict:
    """A fold_0 checkpoint of the unet method with seeded random weights in ``folder``; returns the weights."""
    import torch

    from autosam.plugins import get_plugin_system
    from autosam.training.checkpoint import save_checkpoint
    from autosam.training.method import MethodContext
    from autosam.utils.files import write_json

    cfg = plans.configurations[configuration]
    entry = get_plugin_system().methods.entry("unet")
    method = entry.obj
    options = method.make_options(cfg.methods.get("unet", {}), {})
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json=dataset_json, options=options,
                        device=torch.device("cpu"), num_input_channels=plans.num_channels, num_classes=plans.num_classes)
    torch.manual_seed(0)
    network = method.build_network(ctx)
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", dataset_json)
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", method_entry=entry, options=options, network=network,
                    epoch=1, num_epochs=1, configuration=configuration, plans_name=plans.plans_name, fold=0)
    return network.state_dict()


def brats_sized_model(work: Path, cases: int, env: dict) -> tuple[Path, Path, Path]:
    """Synthetic BraTS-sized cases (2 channels, 155 x 240 x 240; benchmarks/speed/bench_plan_and_preprocess.py),
    autosam's CPU plans for them and a random-weight unet: (model folder, images, labels)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_plan_and_preprocess import DATASET_ID, make_dataset

    from autosam.experiment_planning.plans import Plans
    from autosam.utils.files import read_json

    raw = make_dataset(work / "raw", cases)
    subprocess.run([str(Path(sys.executable).parent / "autosam_plan_and_preprocess"), "-d", str(DATASET_ID), "--no_pp",
                    "--target", "cpu", "-c", "3d"], env=env, check=True, capture_output=True)
    plans = Plans.load(work / "preprocessed" / raw.name / "autosamPlans.json")
    model = work / "results" / raw.name / "unet__autosamPlans__3d"
    save_random_unet(model, plans, read_json(raw / "dataset.json"))
    return model, raw / "imagesTr", raw / "labelsTr"


def build_nnunet_model(folder: Path, plans, state_dict, dataset_json, configuration: str = "3d") -> None:
    """An nnU-Net model folder (plans, dataset.json, fold_0) with autosam's plans and the same weights."""
    import torch

    cfg = plans.configurations[configuration]
    t = cfg.network
    resampling = lambda is_seg, order: {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}  # noqa: E731
    nn_plans = {
        "dataset_name": plans.dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(plans.original_median_spacing),
        "original_median_shape_after_transp": list(plans.original_median_shape), "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": plans.foreground_intensity_properties_per_channel,
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": cfg.patch_size, "median_image_size_in_voxels": cfg.median_image_size_in_voxels,
            "spacing": cfg.spacing, "normalization_schemes": list(cfg.normalization_schemes),
            "use_mask_for_norm": list(cfg.use_mask_for_norm),
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
            raise RuntimeError(f"{c}: {a_dir.name} shape {a.shape} vs {b_dir.name} {b.shape}")
        same += int(np.count_nonzero(a == b))
        total += a.size
    return same / total


def mean_dice(pred_dir: Path, ref_dir: Path, cases: list[str], labels: list[int]) -> float:
    """Mean over cases and foreground labels of Dice (1 where both are empty)."""
    scores = []
    for c in cases:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{c}.nii.gz")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_dir / f"{c}.nii.gz")))
        for label in labels:
            p, r = pred == label, ref == label
            denom = int(p.sum() + r.sum())
            scores.append(1.0 if denom == 0 else 2.0 * int(np.logical_and(p, r).sum()) / denom)
    return float(np.mean(scores))


def trained_model(model: Path, work: Path):
    """An autosam unet model folder's plans, fold-0 weights and dataset.json; the nnU-Net copy in work."""
    from autosam.experiment_planning.plans import Plans
    from autosam.training.checkpoint import load_checkpoint
    from autosam.utils.files import read_json

    plans = Plans.load(model / "plans.json")
    dataset_json = read_json(model / "dataset.json")
    state = load_checkpoint(model / "fold_0" / "checkpoint_final.pth", map_location="cpu")["network"]
    state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    configuration = model.name.split("__")[-1]
    build_nnunet_model(work / "nnunet_model", plans, state, dataset_json, configuration)
    return plans, dataset_json, configuration


VARIANTS = ("autosam", "nnunet", "autosam_fast", "nnunet_notta", "autosam_bf16", "autosam_fast_fp32")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary folder)")
    p.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--spacing", type=float, nargs=3, default=[3.0, 2.5, 2.5], help="target spacing z y x (mm)")
    p.add_argument("--disable_tta", action="store_true", help="both tools without mirroring (variants autosam, nnunet)")
    p.add_argument("--only", choices=("autosam", "nnunet"), default=None)
    p.add_argument("--cases", nargs="+", choices=("ctsm", "ctmid"), default=["ctsm", "ctmid"])
    p.add_argument("--model", type=Path, default=None,
                   help="a trained autosam unet model folder (<...>/unet__<plans>__3d with fold_0) instead of random weights")
    p.add_argument("--images", type=Path, default=None, help="with --model: the folder of images to predict")
    p.add_argument("--reference", type=Path, default=None, help="label files of the cases: report each run's Dice")
    p.add_argument("--brats-sized", type=int, default=None, metavar="N",
                   help="N synthetic BraTS-sized cases (2 channels, 155 x 240 x 240) with autosam's CPU plans and a "
                        "random-weight unet (timing and agreement; the Dice of random weights means nothing)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="runs to time (default: autosam nnunet, or --only's)")
    p.add_argument("--repeats", type=int, default=1, help="run every variant this many times (alternating order)")
    args = p.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for k in ("raw", "preprocessed", "results"):
        (work / k).mkdir(exist_ok=True)
        env[f"AUTOSAM_{k.upper()}"] = str(work / k)
        env[f"nnUNet_{k}"] = str(work / f"nnunet_{k}")
    os.environ.update({k: v for k, v in env.items() if k.startswith("AUTOSAM_")})
    bindir = Path(sys.executable).parent
    if args.brats_sized:
        args.model, args.images, _ = brats_sized_model(work, args.brats_sized, env)
    if args.model is not None:
        if args.images is None:
            p.error("--model needs --images")
        model = args.model.resolve()
        images = args.images.resolve()
        plans, dj, configuration = trained_model(model, work)
        cases = sorted({f.name[: -len("_0000.nii.gz")] for f in images.glob("*_0000.nii.gz")})
        labels = [int(v) for k, v in dj["labels"].items() if k != "background" and not isinstance(v, list)]
        autosam_cmd = [str(bindir / "autosam_predict_from_modelfolder"), "-m", str(model)]
    else:
        images = work / "imagesTs"
        cases = make_inputs(images, tuple(args.cases))
        labels = list(range(1, 14))
        plans, state, dj = build_autosam_model(work / "results", args.spacing, args.patch)
        configuration = "3d"
        build_nnunet_model(work / "nnunet_model", plans, state, dj)
        autosam_cmd = [str(bindir / "autosam_predict"), "-d", DATASET, "-c", "3d", "-m", "unet"]
    tta = ["--disable_tta"] if args.disable_tta else []
    nnunet_cmd = [str(bindir / "nnUNetv2_predict_from_modelfolder"), "-m", str(work / "nnunet_model"), "-f", "0",
                  "-device", "cpu", "-i", str(images)]
    autosam_run = autosam_cmd + ["-i", str(images), "-f", "0", "--device", "cpu", "--quiet"]
    commands = {
        "autosam": autosam_run + tta,
        "autosam_fast": autosam_run + ["--fast"],
        "autosam_fast_fp32": autosam_run + ["--fast", "--no-bf16"],
        "autosam_bf16": autosam_run + ["--bf16", *tta],
        "nnunet": nnunet_cmd + tta,
        "nnunet_notta": nnunet_cmd + ["--disable_tta"],
    }
    variants = args.variants or [n for n in ("autosam", "nnunet") if not args.only or n == args.only]
    runs: dict[str, list[dict]] = {}
    for r in range(max(1, args.repeats)):
        for name in (variants if r % 2 == 0 else variants[::-1]):
            out = work / f"pred_{name}"
            shutil.rmtree(out, ignore_errors=True)
            wall, peak, _, cpu = run_measured(commands[name] + ["-o", str(out)], env)
            runs.setdefault(name, []).append({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(peak / 2**20),
                                              "loadavg_1min_after": round(os.getloadavg()[0], 2)})
            print(f"run {r + 1}: {name:12s} wall {wall:7.1f} s ({wall / len(cases):.2f} s per case)   CPU {cpu:7.1f} s   "
                  f"peak RSS (process tree) {peak / 2**20:7.0f} MiB", flush=True)
    results: dict = {name: (v[0] if len(v) == 1 else v) for name, v in runs.items()}
    if args.reference is not None:
        results["dice"] = {name: round(mean_dice(work / f"pred_{name}", args.reference, cases, labels), 4) for name in runs}
        print("mean foreground Dice: " + ", ".join(f"{k} {v:.4f}" for k, v in results["dice"].items()))
    for a, b in (("autosam", "nnunet"), ("autosam_fast", "nnunet_notta"), ("autosam_bf16", "nnunet"),
                 ("autosam_fast_fp32", "nnunet_notta")):
        if a not in runs or b not in runs:
            continue
        ratios = [x["wall_s"] / y["wall_s"] for x, y in zip(runs[a], runs[b])]
        cpu_ratios = [x["cpu_s"] / y["cpu_s"] for x, y in zip(runs[a], runs[b])]
        mem = max(x["peak_rss_mib"] for x in runs[a]) / max(y["peak_rss_mib"] for y in runs[b])
        agree = agreement(work / f"pred_{a}", work / f"pred_{b}", cases)
        ratio, cpu_ratio = float(np.median(ratios)), float(np.median(cpu_ratios))
        print(f"{a} / {b}: wall time {ratio:.2f}x (runs: {', '.join(f'{x:.3f}' for x in ratios)}), "
              f"CPU time {cpu_ratio:.2f}x, peak memory {mem:.2f}x; label agreement {agree * 100:.2f}% of voxels")
        key = "" if a == "autosam" else a[len("autosam"):]
        results.update({f"ratio_wall{key}": round(ratio, 3), f"ratio_cpu{key}": round(cpu_ratio, 3),
                        f"ratio_memory{key}": round(mem, 3), f"label_agreement{key}": round(agree, 5)})
        if len(ratios) > 1:
            results[f"ratio_wall_runs{key}"] = [round(x, 3) for x in ratios]
    seconds_per_case = {name: round(float(np.median([x["wall_s"] for x in v])) / len(cases), 2) for name, v in runs.items()}
    print(json.dumps({"cases": len(cases), "model": str(args.model) if args.model else None,
                      "patch": list(plans.configurations[configuration].patch_size), "tta": not args.disable_tta,
                      "seconds_per_case": seconds_per_case, "cpu_count": os.cpu_count(),
                      "loadavg_at_end": os.getloadavg(), **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
