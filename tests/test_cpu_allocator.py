"""autosam.utils.cpu_allocator: large freed CPU buffers are reused instead of faulted in again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autosam.utils import cpu_allocator

PROBE = r"""
import resource, torch
from autosam.utils.cpu_allocator import tune_cpu_allocator
applied = tune_cpu_allocator()
first = torch.empty(4 * 1024 * 1024)  # 16 MiB, the size of a 3D activation
with open("/proc/self/maps") as f:
    heap = [tuple(int(v, 16) for v in line.split()[0].split("-")) for line in f if line.rstrip().endswith("[heap]")]
on_heap = any(lo <= first.data_ptr() < hi for lo, hi in heap)
del first
def forward_like():
    a = torch.empty(4 * 1024 * 1024); a.fill_(1.0)
    b = torch.empty(2 * 1024 * 1024); b.fill_(1.0)
    c = torch.empty(6 * 1024 * 1024); c.fill_(1.0)
    del a
    d = torch.empty(4 * 1024 * 1024); d.fill_(1.0)
    del b, c, d
for _ in range(10):
    forward_like()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    forward_like()
print(applied, on_heap, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(**env) -> tuple[bool, bool, int]:
    clean = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "AUTOSAM_CPU_ALLOCATOR"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    applied, on_heap, faults = out.stdout.split()
    return applied == "True", on_heap == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_reuses_large_buffers():
    applied, on_heap, faults = _probe()
    default_applied, default_on_heap, _ = _probe(AUTOSAM_CPU_ALLOCATOR="default")
    assert applied and not default_applied
    # glibc's default serves a fresh process's first 16 MiB buffer with its own mmap (faulted in
    # anew after every free); tuned, it comes from the heap and is reused
    assert on_heap and not default_on_heap
    # steady state of a forward-like pattern: 10 x 64 MiB allocated and freed, no pages faulted in again
    assert faults < 2000, faults


def test_user_settings_and_opt_out_are_respected(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "_applied", None)
    assert cpu_allocator.tune_cpu_allocator({"MALLOC_ARENA_MAX_": "2"}) is False
    monkeypatch.setattr(cpu_allocator, "_applied", None)
    assert cpu_allocator.tune_cpu_allocator({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) is False
    monkeypatch.setattr(cpu_allocator, "_applied", None)
    assert cpu_allocator.tune_cpu_allocator({"AUTOSAM_CPU_ALLOCATOR": "default"}) is False
