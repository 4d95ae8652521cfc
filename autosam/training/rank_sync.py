"""What the ranks of a distributed training must agree on, and how rank-0-only work is waited for.

- :func:`main_process_phase`: rank 0 alone runs a phase (``after_training``, writing a checkpoint,
  evaluating the validation); the other ranks wait for its outcome on the process group's key-value
  store, not inside a collective. When the phase fails on rank 0 they stop at once with its error
  instead of waiting in the next collective until the timeout (120 minutes by default); a long phase
  does not run into that timeout either (they poll the store, logging every few minutes).
- :func:`all_gather_object`, :func:`check_same_on_every_rank`: a value of every rank; a value that
  must be equal everywhere (e.g. the epoch each rank resumed from).
- :func:`agree_amp_dtype`: one autocast dtype for the job (a rank without native bf16 makes every
  rank use fp16 with a GradScaler: DDP averages gradients, scaled and unscaled ones must not mix).
- :func:`seed_rank`: each rank its own random stream once the network exists (clicks, dropout,
  crops differ across ranks; the initial weights do not).

Every function is the identity / a plain call when no process group is initialised.
"""
from __future__ import annotations

import logging
import random
import time
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from autosam.training import distributed

logger = logging.getLogger(__name__)
POLL_SECONDS = 30  # one wait on the store; the waiting ranks log their wait every LOG_EVERY seconds
LOG_EVERY = 600
_phase_counter = 0  # every rank runs the same phases in the same order: the n-th phase has the same key


def all_gather_object(obj: Any) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` when not distributed)."""
    if not distributed.is_initialized():
        return [obj]
    out: list = [None] * distributed.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_same_on_every_rank(value: Any, what: str) -> None:
    """Raise on every rank when ``value`` differs between the ranks, naming each rank's value."""
    values = all_gather_object(value)
    if any(v != values[0] for v in values):
        shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise RuntimeError(f"the ranks disagree on {what} ({shown}); each rank must see the same files "
                           "(a shared file system that has caught up)")


def main_process_phase(name: str, fn: Callable, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on rank 0 alone; return its result there (``None`` elsewhere).

    The other ranks wait until rank 0 reports the phase done on the process group's store; when it
    failed, every rank raises (rank 0 its own exception, the others a RuntimeError naming it)."""
    global _phase_counter
    if not distributed.is_initialized() or distributed.get_world_size() == 1:
        return fn(*args, **kwargs)
    _phase_counter += 1
    key = f"autosam/phase/{_phase_counter}"
    store = dist.distributed_c10d._get_default_store()
    if distributed.get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            store.set(key, f"error {type(exc).__name__}: {exc}")
            raise
        store.set(key, "ok")
        return result
    start = last_log = time.monotonic()
    while True:
        try:
            store.wait([key], timedelta(seconds=POLL_SECONDS))
            break
        except Exception as exc:  # a timeout of this wait: rank 0 is still busy (other errors propagate)
            if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
                raise
        if time.monotonic() - last_log >= LOG_EVERY:
            last_log = time.monotonic()
            logger.info("rank %d: waiting for rank 0 (%s) for %.0f min", distributed.get_rank(), name,
                        (last_log - start) / 60)
    status = store.get(key).decode()
    if status != "ok":
        raise RuntimeError(f"rank 0 failed during {name}: {status.removeprefix('error ')}")
    return None


_AMP_ORDER = (None, torch.float16, torch.bfloat16)  # fp32 < fp16 (+ GradScaler) < bf16


def agree_amp_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype of the job: the least capable rank's (bf16 only when every rank has it)."""
    if not distributed.is_initialized():
        return dtype
    ranks = all_gather_object(_AMP_ORDER.index(dtype))
    agreed = _AMP_ORDER[min(ranks)]
    if agreed != dtype:
        logger.warning("rank %d: %s here, but another rank's GPU lacks it; the whole job trains in %s",
                       distributed.get_rank(), dtype, agreed)
    return agreed


def seed_rank(seed: int, rank: int) -> None:
    """Seed python, numpy and torch (every device) with ``seed + rank``."""
    value = seed + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


__all__ = ["all_gather_object", "check_same_on_every_rank", "main_process_phase", "agree_amp_dtype", "seed_rank"]
