"""Worker processes end when their parent does.

A data-loader worker or a pool worker whose parent is killed (``kill -9``, the out-of-memory
killer, a cluster scheduler) would otherwise stay alive, holding memory, CPU and open files (the
parent's folder lock among them, for forked workers). :func:`exit_with_parent`, called at the start
of every worker autosam starts, makes it end promptly:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the moment its
  parent ends. (The signal follows the parent *thread* that started the worker; autosam starts its
  workers from the thread that uses them.)
- everywhere, a daemon thread that checks ``os.getppid()`` every :data:`POLL_SECONDS` and ends
  the worker when its parent has changed (an orphan is adopted by init or a subreaper).

:func:`pool_initializer` wraps a ``multiprocessing`` pool's initializer with it;
:func:`process_running` tells whether a process still runs (not a zombie).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

#: Seconds between two checks of the parent by the watchdog thread.
POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1
_watching: int | None = None  # the parent PID this process watches (once per process)


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, poll: float) -> None:
    event = threading.Event()
    while not event.wait(poll):
        if os.getppid() != parent_pid:
            os._exit(1)


def exit_with_parent(parent_pid: int | None = None, poll_seconds: float | None = None) -> None:
    """Make this process end when ``parent_pid`` (default: the current parent) ends.

    Call it first thing in a worker process. ``parent_pid`` should be the PID the parent recorded
    before starting the worker: a worker whose parent is already gone ends here at once."""
    global _watching
    if parent_pid is None:
        parent_pid = os.getppid()
    if _watching == parent_pid:
        return
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent ended before the signal was armed
        os._exit(1)
    _watching = parent_pid
    threading.Thread(target=_watch, args=(parent_pid, poll_seconds or POLL_SECONDS),
                     name="autosam-exit-with-parent", daemon=True).start()


def _forget_after_fork() -> None:
    global _watching
    _watching = None  # a forked child has another parent and no watchdog thread


os.register_at_fork(after_in_child=_forget_after_fork)


def _init_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    exit_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def pool_initializer(initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> dict:
    """``initializer=`` and ``initargs=`` for ``multiprocessing.Pool`` or
    ``concurrent.futures.ProcessPoolExecutor`` whose workers run :func:`exit_with_parent` (with this
    process as the parent) and then ``initializer(*initargs)``: ``ctx.Pool(n, **pool_initializer(f))``."""
    return {"initializer": _init_worker, "initargs": (os.getpid(), initializer, tuple(initargs))}


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux reads ``/proc``; elsewhere a
    signal 0 says whether it exists)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


__all__ = ["exit_with_parent", "pool_initializer", "process_running", "POLL_SECONDS"]
