"""How many CPU threads an autosam process uses by default.

torch starts one OpenMP thread per core it sees (``os.cpu_count()``). On a shared node that is too
many: a cluster job may be given fewer cores (CPU affinity, a cgroup CPU quota in a container or a
SLURM allocation), and two autosam processes on the same cores (a training and a prediction) each
start a full set of threads, whose spinning OpenMP workers then slow both down many times over.

The default therefore follows the cores actually available and the autosam processes already
running on them:

- **cores available** (:func:`available_cores`): the CPU affinity of this process, capped by the
  cgroup CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), rounded up;
- **other autosam processes**: every heavy autosam command (training, prediction, box
  segmentation) registers its thread count in a small file in :func:`registry_folder`, removed when it
  ends; entries of processes that no longer run are ignored and removed;
- the default is ``max(1, min(cores // (1 + others), cores - threads claimed by others))``.

An explicit ``AUTOSAM_NUM_THREADS`` or ``OMP_NUM_THREADS`` always wins (and is registered as such).
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import tempfile
from pathlib import Path

from autosam.utils.processes import process_running

logger = logging.getLogger(__name__)

__all__ = ["affinity_cores", "available_cores", "cgroup_cpu_limit", "registry_folder", "claimed_by_others", "default_threads",
           "configure_threads"]


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The cgroup CPU quota in cores (e.g. 1.5), or None when there is none or it cannot be read."""
    root = Path(root)
    try:
        text = (root / "cpu.max").read_text().split()  # cgroup v2: "<quota|max> <period>"
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        if text:
            return None
    except (OSError, ValueError, IndexError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):  # cgroup v1
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def affinity_cores() -> int:
    """Cores this process may run on: its CPU affinity (cluster schedulers restrict it), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no sched_getaffinity on macOS / Windows
        return os.cpu_count() or 1


def available_cores(cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup CPU quota (rounded up)."""
    cores = affinity_cores()
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 1e-9)))
    return cores


def registry_folder() -> Path:
    """Where autosam processes register their threads (``AUTOSAM_THREAD_REGISTRY``, else a per-user
    folder in the temporary directory)."""
    env = os.environ.get("AUTOSAM_THREAD_REGISTRY")
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"autosam-threads-{uid}"


def claimed_by_others(folder: Path | None = None) -> tuple[int, int]:
    """``(processes, threads)`` registered by other running autosam processes; stale entries go."""
    folder = folder or registry_folder()
    processes = threads = 0
    try:
        entries = list(folder.glob("*.json"))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            record = json.loads(entry.read_text())
            pid, count = int(record["pid"]), int(record["threads"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid():
            continue
        if not process_running(pid):
            try:
                entry.unlink()
            except OSError:
                pass
            continue
        processes += 1
        threads += max(0, count)
    return processes, threads


def default_threads(cores: int, other_processes: int, other_threads: int) -> int:
    """Threads for a new process on ``cores`` cores beside others that already hold some."""
    return max(1, min(cores // (1 + other_processes), cores - other_threads))


def _explicit() -> int | None:
    for name in ("AUTOSAM_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                logger.warning("%s=%r is not a whole number of threads; ignored", name, value)
    return None


_registered: set[Path] = set()  # registry files this process writes (removed at exit)


def _register(folder: Path, threads: int, command: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "threads": threads, "command": command}))
        os.replace(tmp, path)
    except OSError:  # an unwritable temporary folder: the default still applies, unregistered
        return
    if path in _registered:
        return
    _registered.add(path)

    def unregister() -> None:
        try:
            path.unlink()
        except OSError:
            pass

    atexit.register(unregister)


def configure_threads(command: str = "autosam", folder: Path | None = None) -> int:
    """Set torch's intra-op thread count for this process (see the module docstring) and register
    it; returns the count."""
    import torch

    folder = folder or registry_folder()
    threads = _explicit()
    if threads is None:
        threads = default_threads(available_cores(), *claimed_by_others(folder))
    torch.set_num_threads(threads)
    _register(folder, threads, command)
    return threads
