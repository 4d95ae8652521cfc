"""The quick subset of the hostile-input matrix (benchmarks/reliability/hostile_inputs.py --quick): real
commands with memory capped, each input refused in one line with nothing left behind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_hostile_matrix_is_refused_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOSAM_")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reliability" / "hostile_inputs.py"), "--quick",
                           "--work", str(tmp_path / "work"), "--memory-gb", "4"],
                          capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=900)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert last == "8 inputs tried, 8 refused cleanly, 0 silent, 0 crashes", proc.stdout[-4000:]
