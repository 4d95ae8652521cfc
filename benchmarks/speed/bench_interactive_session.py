"""Seconds per prompt of the interactive API (``autosam.interactive.session.InteractiveSession``) on
the CPU, per method, on one shared hippocampus MR case (about 35 x 50 x 35 voxels at 1 mm).

Networks are built with their real backbones and untrained heads (the time of a prompt does not
depend on the weights): ``medlsam`` and ``sautomed`` with LiteMedSAM (shipped weights; sautomed at
its planned input size for these slices), ``msam`` with SAM-Med3D's architecture at its 128^3
cube (random weights: the checkpoint is not shipped). For each method: the one-off encoding when
the session opens, then a box (or a click for msam) and ``--clicks`` further prompts (boxes for the
box-only methods: a 2D box, then 3D boxes of the other label and shifted ones), each answered with
the mask on the input grid. Prints seconds per prompt and the ratio to the encoding.

    OMP_NUM_THREADS=1 python benchmarks/speed/bench_interactive_session.py [--methods medlsam sautomed msam] [--clicks 5]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

CASE = Path("/work/shared/data/msd_hippocampus/Task04_Hippocampus")
OPTIONS = {
    "medlsam": {"backbone": "litemedsam", "patch": 16, "base_width": 8, "num_pool": 2, "feature_dim": 8},
    "sautomed": {"backbone": "litemedsam"},
    "msam": {"backbone": "sam_med3d", "allow_random_init": True},
}


def hippocampus_plans(shape):
    from autosam.experiment_planning.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, Plans

    cfg = ConfigurationPlan(name="3d", data_identifier="autosamPlans_3d", spacing=[1.0, 1.0, 1.0], patch_size=[40, 56, 40],
                            batch_size=2, median_image_size_in_voxels=list(shape),
                            normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[False])
    return Plans(schema_version=PLANS_SCHEMA_VERSION, dataset_name="Dataset004_Hippocampus", plans_name="autosamPlans",
                 planner="default", gpu_memory_target_gb=8, original_median_spacing=[1.0, 1.0, 1.0],
                 original_median_shape=list(shape), num_channels=1, channel_names={"0": "MRI"},
                 labels={"background": 0, "anterior": 1, "posterior": 2}, foreground_intensity_properties_per_channel={},
                 configurations={"3d": cfg}, default_method="unet", default_method_rationale="benchmark")


def build_model(name: str, plans):
    from autosam.inference.predictor import FoldModel, TrainedModel
    from autosam.method import MethodContext
    from autosam.plugins import get_method

    method = get_method(name)
    cfg = plans.configuration("3d")
    options = method.make_options({}, OPTIONS[name])
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={"labels": plans.labels}, options=options,
                        device=torch.device("cpu"), num_input_channels=1, num_classes=3)
    network = method.build_network(ctx).eval()
    return TrainedModel(method, ctx, [FoldModel("all", network)], plans, cfg, {"labels": plans.labels}, Path("."))


def prompts_for(name: str, seg: np.ndarray, clicks: int):
    """(method name, args) of the prompts of one session: a box (a click for msam), then ``clicks`` more."""
    from autosam.prompts import box2d_from_mask
    from autosam.sam.box_segment import boxes_from_label_map

    boxes = boxes_from_label_map(seg, [1, 2])
    if name == "msam":
        fg = np.argwhere(seg == 1)
        rng = np.random.default_rng(0)
        picks = fg[rng.choice(len(fg), clicks + 1, replace=False)]
        return [("add_point", (*map(int, p), i % 3 != 2)) for i, p in enumerate(picks)]
    out = [("add_box", boxes[1])]
    b2 = box2d_from_mask(seg == 1)
    out.append(("add_box2d", (b2.z, b2.y0, b2.x0, b2.y1, b2.x1, b2.z_lo, b2.z_hi)))
    z0, y0, x0, z1, y1, x1 = boxes[1]
    for i in range(clicks - 1):  # shifted boxes: the next edits of the same structure
        d = i % 2
        out.append(("add_box", (z0, max(0, y0 - d), max(0, x0 - d), z1, y1 + d, x1 + d)))
    return out[: clicks + 1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["medlsam", "sautomed", "msam"])
    p.add_argument("--case", default="hippocampus_001")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)
    from autosam.interactive.session import InteractiveSession
    from autosam.io.image import read_image

    image, geometry = read_image(CASE / "imagesTr" / f"{args.case}.nii.gz")
    seg, _ = read_image(CASE / "labelsTr" / f"{args.case}.nii.gz")
    seg = np.rint(seg).astype(np.int16)
    plans = hippocampus_plans(image.shape)
    results = {}
    print(f"{args.case} {image.shape}, {torch.get_num_threads()} torch thread(s)")
    for name in args.methods:
        torch.manual_seed(0)
        model = build_model(name, plans)
        start = time.perf_counter()
        session = InteractiveSession(model, image.astype(np.float32), geometry.spacing)
        opened = time.perf_counter() - start
        seconds = []
        for action, values in prompts_for(name, seg, args.clicks):
            getattr(session, action)(*values)
            seconds.append(session.last_seconds)
        results[name] = {"open_seconds": opened, "encode_seconds": session.encode_seconds, "first_prompt": seconds[0],
                         "later_prompts_mean": float(np.mean(seconds[1:])), "prompts": seconds}
        r = results[name]
        print(f"{name:<9} open {r['open_seconds']:6.2f} s (encoding {r['encode_seconds']:6.2f} s)  first prompt "
              f"{r['first_prompt']:6.2f} s  later prompts {r['later_prompts_mean']:6.2f} s  "
              f"({r['later_prompts_mean'] / max(r['encode_seconds'], 1e-9):.2f} x the encoding)", flush=True)
    if args.out_json:
        args.out_json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
