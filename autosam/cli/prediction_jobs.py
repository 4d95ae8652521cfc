"""Running a prediction command: the per-case progress bar, and the processes of ``--num-gpus``
(one per GPU, each with its share of the cases)."""
from __future__ import annotations

import sys

from autosam.utils.precision import default_device


class CaseProgress:
    """A per-case progress bar for prediction commands, created on the first update (so that
    nothing is drawn when an error comes first); ``quiet`` draws nothing. Call it as
    ``progress(case, done, total)`` and ``close()`` it at the end."""

    def __init__(self, quiet: bool = False, desc: str = "cases"):
        self.quiet = quiet
        self.desc = desc
        self.bar = None

    def __call__(self, case: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from autosam.utils.progress import progress_bar

            self.bar = progress_bar(total=total, desc=self.desc, unit="case")
        self.bar.update(done - self.bar.n)
        if case:
            self.bar.set_postfix_str(case)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def launch_prediction_processes(prog: str, module: str, argv: list[str], args) -> int | None:
    """``--num-gpus N`` (N > 1) outside a launcher: run ``module`` in N processes through torch's
    elastic launcher and return the exit status; None when this process predicts itself."""
    from autosam.training import distributed

    if distributed.launcher_env() is not None or not args.num_gpus or args.num_gpus < 2:
        return None
    try:
        distributed.check_local_launch(args.num_gpus, args.device)
    except RuntimeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 2 if distributed.launch_local(module, argv, args.num_gpus) else 0


def prediction_share(args) -> tuple[str, int, int]:
    """``(device, num_parts, part_id)`` of this process: the command line's, or within a launched
    job (``--num-gpus``, torchrun) this rank's GPU and its share of the job's part."""
    from autosam.training import distributed

    device = args.device or default_device()
    env = distributed.launcher_env()
    if env is None:
        return device, args.num_parts, args.part_id
    distributed.check_joined(args.num_gpus, env)
    device = str(distributed.rank_device(device, env))
    # the part's cases, every world_size-th one per rank: a part of num_parts * world_size
    return device, args.num_parts * env.world_size, args.part_id + args.num_parts * env.rank
