"""Default torch threads: the cores really available, shared with the autosam processes already running."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from autosam.utils import threads


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(v2) == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path / "v1") == pytest.approx(1.0)
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_limit(tmp_path / "v1") is None
    (v2 / "cpu.max").write_text("50000 100000\n")  # half a core still gets one thread
    assert threads.available_cores(v2) == 1


@pytest.mark.parametrize("cores, others, claimed, expected", [
    (2, 0, 0, 2), (2, 1, 2, 1), (2, 1, 1, 1), (16, 1, 8, 8), (16, 3, 6, 4), (8, 1, 8, 1)])
def test_share_of_the_cores(cores, others, claimed, expected):
    assert threads.default_threads(cores, others, claimed) == expected


def test_a_second_process_takes_what_the_first_left(tmp_path, monkeypatch):
    """A real second process registered in the same folder halves the default; it ends, and the
    next process gets every core again (its stale entry is removed)."""
    folder = tmp_path / "registry"
    monkeypatch.delenv("AUTOSAM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda *a, **k: 4)
    before = torch.get_num_threads()
    code = ("import sys, time; from pathlib import Path; from autosam.utils import threads; "
            "threads.available_cores = lambda *a, **k: 4; "
            "print(threads.configure_threads('other', Path(sys.argv[1])), flush=True); time.sleep(60)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "AUTOSAM_NUM_THREADS")}
    other = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert other.stdout.readline().strip() == "4"
        assert json.loads((folder / f"{other.pid}.json").read_text())["threads"] == 4
        assert threads.claimed_by_others(folder) == (1, 4)
        assert threads.configure_threads("me", folder) == 1  # 4 cores, all claimed: one thread, not 4 more
        assert torch.get_num_threads() == 1
    finally:
        other.kill()
        other.wait()
    try:
        time.sleep(0.1)
        assert threads.configure_threads("me", folder) == 4
        assert not (folder / f"{other.pid}.json").exists()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert threads.configure_threads("me", folder) == 3  # explicit settings win
        monkeypatch.setenv("AUTOSAM_NUM_THREADS", "not a number")
        assert threads.configure_threads("me", folder) == 3  # ignored with a warning
    finally:
        torch.set_num_threads(before)
