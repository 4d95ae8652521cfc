"""Benchmark of the sliding window alone: autosam's ``sliding_window_predict`` vs nnU-Net's
``nnUNetPredictor.predict_sliding_window_return_logits`` with the same PlainConvUNet, weights,
patch size, step 0.5, Gaussian weighting and mirroring, on the same preprocessed array (CPU).

    python benchmarks/speed/bench_sliding_window.py                  # 1 x 32 x 96 x 96 volume, 2 rounds
    python benchmarks/speed/bench_sliding_window.py --shape 40 121 146 --rounds 1

Reports wall time and process CPU time per tool (rounds interleaved, best of the rounds) and the
largest difference of the probabilities (nnU-Net accumulates in float16 on the CPU, so ~1e-3).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# bench_predict.py: beside this file
sys.path[:0] = [str(Path(__file__).resolve().parent)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[32, 96, 96])
    p.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from autosam.experiment_planning.plans import ConfigurationPlan, NetworkTopology
    from autosam.inference.sliding_window import sliding_window_predict
    from bench_predict import build_nnunet_model

    topology = NetworkTopology(5, [32, 64, 128, 256, 320], [[3, 3, 3]] * 5,
                               [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]], [2] * 5, [2] * 4)
    torch.manual_seed(0)
    net = PlainConvUNet(1, 5, topology.features_per_stage, nn.Conv3d, topology.kernel_sizes, topology.strides, 2,
                        args.classes, 2, True, nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                        nn.LeakyReLU, {"inplace": True}, deep_supervision=False).eval()
    cfg = ConfigurationPlan(name="3d", data_identifier="x", spacing=[3.0, 2.5, 2.5], patch_size=args.patch, batch_size=2,
                            median_image_size_in_voxels=args.shape, normalization_schemes=["CTNormalization"],
                            use_mask_for_norm=[False], network=topology)

    class _Plans:
        configurations = {"3d": cfg}

    labels = {"background": 0, **{f"c{i}": i for i in range(1, args.classes)}}
    folder = Path(tempfile.mkdtemp(prefix="bench_sw_")) / "model"
    build_nnunet_model(folder, _Plans, net.state_dict(),
                       {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"})
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                                perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    data = torch.from_numpy(np.random.default_rng(0).normal(size=(1, *args.shape)).astype(np.float32))

    def run_nnunet():
        return torch.softmax(predictor.predict_sliding_window_return_logits(data).float(), 0)

    def run_autosam():
        with torch.inference_mode():
            return sliding_window_predict(lambda x: net(x), data, args.patch, args.classes, "cpu", use_mirroring=True)

    results: dict[str, dict] = {"nnunet": {"wall": [], "cpu": []}, "autosam": {"wall": [], "cpu": []}}
    outputs = {}
    for _ in range(args.rounds):
        for name, fn in (("nnunet", run_nnunet), ("autosam", run_autosam)):
            w, c = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            results[name]["wall"].append(time.perf_counter() - w)
            results[name]["cpu"].append(time.process_time() - c)
            print(f"{name:8s} wall {results[name]['wall'][-1]:6.1f} s  cpu {results[name]['cpu'][-1]:6.1f} s", flush=True)
    diff = float((outputs["nnunet"] - outputs["autosam"]).abs().max())
    best = {k: {m: round(min(v[m]), 1) for m in v} for k, v in results.items()}
    print(json.dumps({"shape": args.shape, "patch": args.patch, "classes": args.classes, "threads": args.threads,
                      "best": best, "ratio_wall": round(best["autosam"]["wall"] / best["nnunet"]["wall"], 3),
                      "ratio_cpu": round(best["autosam"]["cpu"] / best["nnunet"]["cpu"], 3),
                      "max_abs_prob_diff": diff}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
