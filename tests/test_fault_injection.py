"""benchmarks/reliability/fault_injection.py keeps working: one SIGKILL per stage, everything recovered."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about two minutes on two cores: three reference runs and three kill chains
def test_fault_injection_smoke_run(tmp_path):
    summary_file = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reliability" / "fault_injection.py"), "--kills", "1",
                           "--seed", "3", "--workdir", str(tmp_path / "work"), "--json", str(summary_file)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"(\d+) faults injected, (\d+) recovered, 0 corrupt", last)
    assert match and match.group(1) == match.group(2) and int(match.group(1)) >= 3, last
    summary = json.loads(summary_file.read_text())
    assert set(summary["stages"]) == {"preprocess", "train", "predict"}
    for stage in summary["stages"].values():
        assert stage["kills"] >= 1 and stage["recovered"] == stage["kills"] and not stage["corrupt"]
        assert not stage["orphans"] and not stage["not_recovered"]
    assert not (tmp_path / "work").exists()  # removed without --keep
