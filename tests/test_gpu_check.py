"""benchmarks/gpu/gpu_check.sh: the one-command GPU acceptance check runs end to end on the CPU (tiny
backbones), its assertions hold there, and a failed assertion fails the script."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failed_assertion_fails_the_section_and_names_it(capsys):
    acceptance = importlib.util.spec_from_file_location("gpu_check_acceptance",
                                                         SCRIPT.with_name("gpu_check_acceptance.py"))
    module = importlib.util.module_from_spec(acceptance)
    acceptance.loader.exec_module(module)
    acc = module.Acceptance()
    with acc.section("holds", 5) as detail:
        detail["figure"] = 1
    with acc.section("does not hold", 5):
        assert 1 == 2, "one is not two"
    with acc.section("too slow", 1):
        import time

        time.sleep(3)
    assert acc.results["holds"]["status"] == "ok" and acc.results["holds"]["detail"] == {"figure": 1}
    assert acc.failed == ["does not hold", "too slow"]
    assert "one is not two" in acc.results["does not hold"]["detail"]["error"]
    assert "exceeded its 1 s" in acc.results["too slow"]["detail"]["error"]
    assert "ACCEPTANCE FAILED: does not hold" in capsys.readouterr().err


def test_card_peaks_by_name():
    gpu_check = _module()
    assert gpu_check.card_peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.card_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.card_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.card_peak_tflops("Some Future Card") is None
    assert set(gpu_check.GPU_OPTIONS) == set(gpu_check.CPU_OPTIONS) == set(gpu_check.METHODS)


@pytest.mark.slow
def test_gpu_check_runs_every_method_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    out = tmp_path / "summary.json"
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--work", str(tmp_path / "work"), "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=1200)  # about 5 min on 2 busy cores
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["mode"] == "cpu" and summary["precision"] == "fp32"
    assert summary["ddp"]["status"] == "skipped"
    assert set(summary["methods"]) == {"unet", "sautomed", "masksam", "msam", "medlsam"}
    for method, row in summary["methods"].items():
        assert row["status"] == "ok", (method, row)
        assert row["iterations_per_s"] > 0 and row["flops_per_iteration"] > 0 and row["tflops_per_s"] >= 0
        assert row["predicted_cases"] == 1
        assert row["autocast_in_train_step"] == ["fp32 (no autocast)"] and not row["grad_scaler"]
    acceptance = summary["acceptance"]
    assert {name for name, r in acceptance.items() if r["status"] == "ok"} >= {
        "train without --device, then --c, validation on", "1 step(s) forced to fp16 (GradScaler)",
        "DDP with one process (--ddp) equals the plain run", "unet: really compiled (no eager fallback)",
        *(f"{m}: autocast dtype inside train_step" for m in summary["methods"])}, acceptance
    assert {name for name, r in acceptance.items() if r["status"] == "skipped"} == {
        "GPU and CPU predictions of one checkpoint agree", "throughput: unet eager vs compiled, bf16 vs fp32"}
    assert acceptance["DDP with one process (--ddp) equals the plain run"]["detail"]["relative_l2_distance"] < 1e-6
    assert "it/s" in proc.stdout and "JSON summary" in proc.stdout and "acceptance:" in proc.stdout


@pytest.mark.slow
def test_gpu_check_ddp_part_on_the_cpu(tmp_path):
    """--ddp-cpu: the DDP part (autosam_train --num-gpus 2) runs as 2 gloo processes per method (msam: a
    method whose steps leave parameters unused)."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    out = tmp_path / "summary.json"
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--ddp-cpu", "--no-acceptance", "--methods", "msam", "--cases",
                           "2", "--work", str(tmp_path / "work"), "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())["ddp"]
    assert ddp["status"] == "ran" and ddp["backend"] == "gloo" and set(ddp["methods"]) == {"msam"}
    for method, row in ddp["methods"].items():
        assert row["status"] == "ok" and "--device cpu" in row["command"], (method, row)
        assert row["iterations_per_s"] > 0
    assert "DDP (2 CPU processes) msam: ok" in proc.stdout


@pytest.mark.slow
def test_gpu_options_build_the_real_networks_from_random_weights(autosam_dirs):
    """The GPU mode's options (ViT-B for sautomed, small backbones for the other SAM methods,
    --allow-random-init, the planned input size of the backbone) build every network without
    checkpoint files."""
    import torch

    from autosam.data.example import make_example_dataset
    from autosam.experiment_planning.plans import Plans
    from autosam.pipeline import plan_and_preprocess
    from autosam.plugins import get_method
    from autosam.sam.backbones import build_backbone
    from autosam.method import MethodContext

    gpu_check = _module()
    make_example_dataset(autosam_dirs["raw"], gpu_check.DATASET_ID, 2, "organs")
    plan_and_preprocess(gpu_check.DATASET_ID, num_processes=1, configurations=("3d",), target="gpu")
    plans = Plans.load(next(autosam_dirs["preprocessed"].glob("Dataset999_*")) / "autosamPlans.json")
    cfg = plans.configuration("3d")
    for name, options in gpu_check.GPU_OPTIONS.items():
        method = get_method(name)
        options = gpu_check.planned_options(name, options)
        opts = method.make_options(cfg.methods.get(name), options)
        ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=opts, device=torch.device("cpu"),
                            num_input_channels=1, num_classes=plans.num_classes)
        network = method.build_network(ctx)
        assert sum(p.numel() for p in network.parameters()) > (1e6 if name == "unet" else 1e5), name
        if getattr(opts, "backbone", None) in ("sam_vit_b", "sam_med3d") and name != "medlsam":
            assert sum(p.numel() for p in network.parameters()) > 80e6, name  # ViT-B / SAM-Med3D size
    assert gpu_check.GPU_OPTIONS["sautomed"]["backbone"] == "sam_vit_b"  # one SAM method at its real size
    assert build_backbone("sam_vit_b", input_size=64, allow_random_init=True).embed_dim == 256  # medlsam's SAM stage
