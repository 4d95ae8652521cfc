"""Run independent per-case jobs in worker processes, with an optional progress bar."""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterator, Sequence

from autosam.utils.processes import pool_initializer


def sitk_single_thread() -> None:
    """Worker initialiser: one SimpleITK thread per process (the processes are the parallelism)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def imap_jobs(func: Callable[[Any], Any], jobs: Sequence[Any], num_processes: int, progress: bool = False,
              desc: str = "", unit: str = "case",
              initializer: Callable[[], None] | None = sitk_single_thread) -> Iterator[Any]:
    """Yield ``func(job)`` for every job, in completion order.

    ``num_processes > 1`` runs the jobs in that many ``spawn`` worker processes (``func`` and the
    jobs must be picklable); otherwise they run here, in order. Workers end when this process ends
    (:func:`autosam.utils.processes.exit_with_parent`) and then run ``initializer``. A worker's
    exception is re-raised here and stops the remaining jobs. ``progress`` shows a tqdm bar.
    """
    bar = None
    if progress and jobs:
        from autosam.utils.progress import progress_bar

        bar = progress_bar(total=len(jobs), desc=desc, unit=unit)
    try:
        if num_processes > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(num_processes, len(jobs)), **pool_initializer(initializer)) as pool:
                for result in pool.imap_unordered(func, jobs, chunksize=1):
                    if bar is not None:
                        bar.update()
                    yield result
        else:
            for job in jobs:
                result = func(job)
                if bar is not None:
                    bar.update()
                yield result
    finally:
        if bar is not None:
            bar.close()
