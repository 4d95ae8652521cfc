"""benchmarks/gpu_check.sh: the one-command GPU check runs end to end on the CPU (tiny backbones)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["mode"] == "cpu" and summary["precision"] == "fp32"
    assert summary["ddp"]["status"] == "skipped"
    assert set(summary["methods"]) == {"unet", "sautomed", "masksam", "msam", "medlsam"}
    for method, row in summary["methods"].items():
        assert row["status"] == "ok", (method, row)
        assert row["iterations_per_s"] > 0 and row["flops_per_iteration"] > 0 and row["tflops_per_s"] >= 0
        assert row["predicted_cases"] == 1
    assert "it/s" in proc.stdout and "JSON summary" in proc.stdout
