"""Keep freed tensor memory in the process on the CPU (glibc ``mallopt``), instead of handing every
large buffer back to the kernel and faulting fresh zeroed pages in on the next allocation.

glibc serves allocations above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with
a fresh ``mmap`` and returns them with ``munmap`` when freed. A 3D network's activations are
megabytes each and are allocated anew in every forward pass, so on the CPU every pass pays tens
of thousands of page faults for zeroed pages: measured on the ``bench_predict`` UNet (patch
32 x 64 x 64, 2 threads, idle 2-core AMD EPYC), 16-27 k minor faults and 56-86 ms of system time
per forward, 0.55-0.59 s per forward against 0.47-0.49 s with the settings below (0-256 faults,
~1 ms system time); ``benchmarks/speed/bench_predict_stages.py --allocator-check`` reproduces it.

:func:`tune_cpu_allocator` sets the mmap threshold to glibc's maximum (32 MiB), the trim
threshold to 1 GiB and the top pad to 256 MiB: buffers up to 32 MiB are reused from the heap, the
heap grows in large steps, and up to 1 GiB of freed memory may stay mapped (what the process has
touched at its peak stays resident a little longer; the peak itself does not grow). Without the
top pad ~1-2 k faults per forward remained.
It does nothing when the user chose malloc settings through the environment (``MALLOC_*_`` or
``GLIBC_TUNABLES``), when ``AUTOSAM_CPU_ALLOCATOR=default``, or outside glibc (macOS, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024
TOP_PAD = 256 * 1024 * 1024

_applied: bool | None = None


def _user_chose_malloc_settings(environ) -> bool:
    return any(k.startswith("MALLOC_") and k.endswith("_") for k in environ) or "GLIBC_TUNABLES" in environ


def tune_cpu_allocator(environ=None) -> bool:
    """Apply the settings once per process; ``True`` if they are in effect (see module docstring)."""
    global _applied
    if _applied is not None:
        return _applied
    environ = os.environ if environ is None else environ
    _applied = False
    if environ.get("AUTOSAM_CPU_ALLOCATOR", "tuned").lower() == "default" or _user_chose_malloc_settings(environ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(opt, value) for opt, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                                     (M_TOP_PAD, TOP_PAD)))
    _applied = ok
    logger.debug("CPU allocator: mmap threshold %d MiB, trim threshold %d MiB, top pad %d MiB: %s", MMAP_THRESHOLD >> 20,
                 TRIM_THRESHOLD >> 20, TOP_PAD >> 20, "applied" if ok else "refused by mallopt")
    return ok
