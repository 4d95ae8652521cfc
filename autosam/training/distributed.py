"""Distributed training on ``torch.distributed``: one process per GPU (DDP), on one node or many.

How a run becomes distributed:

- ``autosam_train ... --num-gpus N`` on one node starts N processes through torch's elastic
  launcher (:func:`launch_local`, the launcher behind ``torchrun --standalone``); each of them runs
  the same command line and joins the process group.
- ``torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m
  autosam.cli.train ...`` (or any launcher that sets torchrun's variables) starts them across
  nodes; the command detects the environment (:func:`launcher_env`) and joins.

Each process trains on ``cuda:LOCAL_RANK`` (backend NCCL) or, with ``--device cpu``, on the CPU
(backend gloo, which is how the tests exercise the path). The trainer wraps a :class:`TrainStep`
module, whose forward runs the method's whole ``train_step``, in
:class:`~torch.nn.parallel.DistributedDataParallel`: methods that call submodules and run several
forward passes per step get synchronised gradients without knowing about DDP.

The helpers below are no-ops (or identities) when no process group is initialised, so the
trainer calls them unconditionally.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autosam.utils.threads import affinity_cores

logger = logging.getLogger(__name__)

#: torchrun's variables that mark a process as one rank of a launched job.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: How long a rank waits in a collective (e.g. while rank 0 alone runs ``after_training`` or the
#: evaluation); ``AUTOSAM_DDP_TIMEOUT_MINUTES`` overrides it.
DEFAULT_TIMEOUT_MINUTES = 120


@dataclass(frozen=True)
class LaunchEnv:
    """The position of this process in a launched job (from torchrun's environment variables)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def launcher_env(environ=None) -> LaunchEnv | None:
    """The launcher's environment of this process, or None when it was not started by torchrun /
    the elastic launcher (no ``WORLD_SIZE``). Inconsistent values are an error naming them."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        shown = ", ".join(f"{k}={env[k]!r}" for k in LAUNCHER_VARIABLES if k in env)
        raise RuntimeError(f"distributed launch: the launcher's variables are not integers ({shown})") from None
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise RuntimeError(f"distributed launch: inconsistent RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}, "
                           f"LOCAL_WORLD_SIZE={local_world}")
    return LaunchEnv(rank, world, local_rank, local_world)


# ---------------------------------------------------------------------------------- process group
def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def rank_device(device: str | torch.device, env: LaunchEnv) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA request, the CPU for ``cpu``.
    One GPU per process; a fixed index (``cuda:1``) or MPS cannot be shared out."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None and env.local_world_size > 1:
            raise RuntimeError(f"--device {device}: with {env.local_world_size} processes on this node each takes "
                               "cuda:LOCAL_RANK; give --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
        if not torch.cuda.is_available():
            raise RuntimeError("distributed training on CUDA: no CUDA device is available")
        index = env.local_rank if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"rank {env.rank}: local rank {env.local_rank} needs cuda:{index}, but only "
                               f"{torch.cuda.device_count()} GPU(s) are visible on this node")
        return torch.device("cuda", index)
    if dev.type == "cpu":
        return dev
    raise RuntimeError(f"--device {device}: distributed training runs on CUDA (NCCL) or on the CPU (gloo), not {dev.type}")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def timeout() -> timedelta:
    value = os.environ.get("AUTOSAM_DDP_TIMEOUT_MINUTES")
    try:
        minutes = float(value) if value else DEFAULT_TIMEOUT_MINUTES
    except ValueError:
        raise RuntimeError(f"AUTOSAM_DDP_TIMEOUT_MINUTES={value!r}: not a number of minutes") from None
    return timedelta(minutes=minutes)


def init_process_group(device: torch.device, env: LaunchEnv) -> None:
    """Join the launched job's process group (``env://``: MASTER_ADDR/MASTER_PORT from the launcher)."""
    if is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend_for(device)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU (no guessing in barrier())
    dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timeout(), **kwargs)
    logger.info("distributed: rank %d of %d (local rank %d), backend %s, device %s", env.rank, env.world_size,
                env.local_rank, backend, device)


def destroy_process_group(wait_for_others: bool = True) -> None:
    """Leave the process group; after a run that ended normally, once every rank is done with it.

    DDP wrappers that are no longer referenced still hold the group (and gloo work) until the garbage
    collector frees them: free them first, then wait for every rank, so that no rank tears its
    connections down while another still uses them. Without both, rank 0 of a two-rank gloo job
    sometimes aborted at exit ("terminate called without an active exception") after all its work was
    done (tests/test_distributed.py, about one run in three on a loaded machine). A rank that leaves
    on an error passes ``wait_for_others=False``: the others may never reach the barrier."""
    if is_initialized():
        gc.collect()
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- collectives
def _comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor on ``tensor``'s device; ``tensor``
    itself when not distributed)."""
    if not is_initialized():
        return tensor
    work = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose backward sums the incoming gradients over the ranks too."""

    @staticmethod
    def forward(ctx, tensor):
        work = tensor.contiguous().clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work

    @staticmethod
    def backward(ctx, grad):
        work = grad.contiguous().clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work


def differentiable_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks, through which gradients flow (e.g. a batch Dice over
    the global batch). Each rank's loss then depends on every rank's samples; with DDP's averaging
    of the gradients, the result equals the single-process gradient. Identity when not distributed."""
    if not is_initialized() or get_world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return tensor
    return all_reduce_sum(tensor.float()) / get_world_size()


def all_true(flag: torch.Tensor | bool) -> bool:
    """True when ``flag`` holds on every rank (one host sync)."""
    value = torch.as_tensor(flag).detach().reshape(-1).all()
    if not is_initialized():
        return bool(value)
    work = value.to(_comm_device(), torch.int32)
    dist.all_reduce(work, op=dist.ReduceOp.MIN)
    return bool(work.item())


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; tensors travel on the CPU)."""
    if not is_initialized():
        return obj
    holder = [_to_cpu(obj) if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src, device=_comm_device())
    return holder[0]


def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` on rank ``src`` into the same module on the
    other ranks (in place), e.g. after ``after_training`` completed the network on rank 0 alone."""
    if not is_initialized():
        return
    state = module.state_dict(keep_vars=True)
    layout = [(k, tuple(v.shape), str(v.dtype)) for k, v in state.items()]
    reference = broadcast_object(layout, src)
    if reference != layout:
        mine, theirs = dict((k, s) for k, *s in layout), dict((k, s) for k, *s in reference)
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise RuntimeError(f"rank {get_rank()}: the network differs from rank {src}'s in {', '.join(diff[:10])}; "
                           "cannot share its state")
    device = _comm_device()
    with torch.no_grad():
        for value in state.values():
            work = value.detach().to(device, torch.uint8 if value.dtype == torch.bool else value.dtype, copy=True)
            dist.broadcast(work, src=src)
            value.data.copy_(work.to(value.device, value.dtype))


# ---------------------------------------------------------------------------------- the DDP module
class TrainStep(nn.Module):
    """A module whose forward is one whole ``method.train_step``; the method's network is its only
    submodule. Wrapped in DDP, every parameter the step touches, through any number of forward
    passes or direct submodule calls, gets its gradient averaged over the ranks during backward.

    The forward returns ``(loss, logs, output)`` (tuples are what DDP searches for tensors)."""

    def __init__(self, method, network: nn.Module, loss_fn, ctx):
        super().__init__()
        self.network = network
        # not submodules: the loss and the method carry no parameters DDP should synchronise
        self.__dict__["_method"], self.__dict__["_loss_fn"], self.__dict__["_ctx"] = method, loss_fn, ctx

    def forward(self, batch: dict):
        result = self._method.train_step(self.network, batch, self._loss_fn, self._ctx)
        return result.loss, result.logs, result.output


def wrap_train_step(method, network: nn.Module, loss_fn, ctx) -> nn.Module:
    """``DistributedDataParallel(TrainStep(...))`` for this rank's device;
    ``find_unused_parameters`` as the method declares (:attr:`Method.ddp_find_unused_parameters`)."""
    from torch.nn.parallel import DistributedDataParallel

    step = TrainStep(method, network, loss_fn, ctx)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    find_unused = bool(getattr(method, "ddp_find_unused_parameters", False))
    wrapped = DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=find_unused)
    logger.info("distributed: DDP over %d ranks (find_unused_parameters=%s)", get_world_size(), find_unused)
    return wrapped


# ---------------------------------------------------------------------------------- launching
def launch_local(module: str, argv: list[str], nproc: int) -> int:
    """Run ``python -m module *argv`` in ``nproc`` processes on this node through torch's elastic
    launcher (``torchrun --standalone --nproc-per-node nproc``); each process finds the launcher's
    variables and joins. Returns 0, or 1 after printing which rank failed and why."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc-per-node={int(nproc)}", "--max-restarts=0", "--monitor-interval=1",
                       "-m", module, *argv])
    env_threads = os.environ.get("OMP_NUM_THREADS")
    if env_threads is None:  # torchrun's default (1 thread per process) would slow CPU runs down silently
        os.environ["OMP_NUM_THREADS"] = str(max(1, affinity_cores() // max(1, int(nproc))))
    try:
        run(args)
    except ChildFailedError as exc:
        failed = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in sorted(exc.failures.items()))
        print(f"{module.rsplit('.', 1)[-1]}: error: {nproc} processes launched; failed: {failed} (their errors are "
              "printed above)", file=sys.stderr)
        return 1
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def default_workers_per_rank() -> int:
    """Background augmentation workers of one rank by default: its share of the node's cores
    (``LOCAL_WORLD_SIZE`` ranks share them) minus one for its training loop, at most 8."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", get_world_size()) or 1)
    return max(0, min(8, affinity_cores() // max(1, local) - 1))


__all__ = ["LaunchEnv", "launcher_env", "rank_device", "init_process_group", "destroy_process_group", "barrier",
           "all_reduce_sum", "all_reduce_mean", "differentiable_all_reduce_sum", "all_true", "broadcast_object", "broadcast_module_state", "TrainStep",
           "wrap_train_step", "launch_local", "get_rank", "get_world_size", "is_initialized", "is_main_process"]


# ---------------------------------------------------------------------------------- the commands
def check_local_launch(nproc: int, device: str | None) -> None:
    """Why ``--num-gpus nproc`` cannot start here (an error), before any process is started:
    CUDA needs that many visible GPUs; the CPU (gloo) must be asked for with ``--device cpu``."""
    if device is None or device == "":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--num-gpus {nproc}: no CUDA device is available; add --device cpu to run "
                               f"{nproc} CPU processes (gloo backend) instead")
        device = "cuda"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None and nproc > 1:
            raise RuntimeError(f"--num-gpus {nproc} with --device {device}: the processes take cuda:0 .. cuda:{nproc - 1}; "
                               "give --device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible < nproc:
            raise RuntimeError(f"--num-gpus {nproc}: only {visible} CUDA device(s) are visible "
                               "(CUDA_VISIBLE_DEVICES restricts them)")
    elif dev.type != "cpu":
        raise RuntimeError(f"--num-gpus {nproc} with --device {device}: several processes run on CUDA or on the CPU only")


def check_joined(nproc: int | None, env: LaunchEnv) -> None:
    """A process started by a launcher whose ``--num-gpus`` disagrees with the launcher's count."""
    if nproc is not None and nproc != env.local_world_size:
        raise RuntimeError(f"--num-gpus {nproc}, but the launcher started {env.local_world_size} process(es) on this "
                           "node (LOCAL_WORLD_SIZE); under torchrun leave --num-gpus out")
