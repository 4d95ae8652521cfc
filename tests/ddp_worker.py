"""One rank of the distributed tests (not a test module): started by ``torch.distributed.run`` from
tests/test_distributed.py, joins the gloo process group on the CPU and does one job.

``python -m ddp_worker steps OUT``: two optimiser steps of the ``unet`` method (batch Dice, deep
supervision) on this rank's share of a fixed global batch, through the DDP :class:`TrainStep`; rank 0
saves the losses (mean over the ranks), the gradients and the final weights to OUT; then every rank
saves to OUT.rankN.pt what it received from rank 0 through ``broadcast_module_state`` and
``broadcast_object``.

``python -m ddp_worker methods OUT METHOD...``: each method trains one epoch of two iterations with
the core trainer (its DDP path, ``after_training`` broadcast included); rank 0 records each finished
method in the JSON file OUT.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from autosam.training import distributed

GLOBAL_BATCH = 4
PATCH = (16, 32, 32)
STEPS = 2


def fixed_batch(global_batch: int = GLOBAL_BATCH, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The same ``global_batch`` patches (data B x 1 x *PATCH, labels B x 1 x *PATCH) on every rank."""
    from training_data import make_case

    rng = np.random.default_rng(seed)
    data, seg = [], []
    for _ in range(global_batch):
        img, lab = make_case(rng, (24, 40, 40))
        data.append(img[:, 4:20, 4:36, 4:36])
        seg.append(lab[:, 4:20, 4:36, 4:36])
    return torch.from_numpy(np.stack(data)).float(), torch.from_numpy(np.stack(seg).astype(np.int64))


def unet_setup(rank: int, world_size: int):
    """The unet method, a context for this rank, a seeded network and its loss."""
    from autosam.method import MethodContext
    from autosam.plugins import get_method
    from training_data import tiny_plans

    method = get_method("unet")
    plans = tiny_plans(PATCH, batch_size=GLOBAL_BATCH)
    cfg = plans.configuration("3d")
    options = method.make_options({}, {"batch_dice": "true", "deep_supervision": "true", "optimizer": "sgd"})
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=options, device=torch.device("cpu"),
                        num_input_channels=1, num_classes=plans.num_classes, num_epochs=1, iterations_per_epoch=STEPS,
                        rank=rank, world_size=world_size)
    torch.manual_seed(0)
    network = method.build_network(ctx)
    return method, ctx, network, method.build_loss(ctx)


def shard(method, ctx, data: torch.Tensor, seg: torch.Tensor) -> dict:
    """This rank's part of the global batch, with the deep-supervision targets the core would make."""
    from autosam.method import rank_batch_sizes
    from autosam.training.dataloading import DownsampleTargets

    sizes = rank_batch_sizes(len(data), ctx.world_size)
    start = sum(sizes[:ctx.rank])
    part = slice(start, start + sizes[ctx.rank])
    targets = DownsampleTargets(method.deep_supervision_scales(ctx))(seg=seg[part].numpy())["target"]
    return {"data": data[part], "target": [torch.from_numpy(np.ascontiguousarray(t)) for t in targets]}


def run_steps(rank: int, world_size: int, step_fn) -> dict:
    """``STEPS`` SGD steps; returns the losses (mean over ranks), the first step's gradients and the final weights."""
    method, ctx, network, loss_fn = unet_setup(rank, world_size)
    optimizer, _ = method.configure_optimizers(network, ctx)
    data, seg = fixed_batch()
    batch = shard(method, ctx, data, seg)
    step = step_fn(method, network, loss_fn, ctx)
    losses, first_grads = [], None
    for i in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = step(batch)
        loss.backward()
        losses.append(float(distributed.all_reduce_mean(loss.detach())))
        if i == 0:
            first_grads = {n: p.grad.detach().clone() for n, p in network.named_parameters() if p.grad is not None}
        optimizer.step()
    return {"losses": losses, "grads": first_grads, "weights": {k: v.clone() for k, v in network.state_dict().items()}}


class Stateful(torch.nn.Module):
    """Parameters and a bool buffer (as medlsam's prototypes) that differ per rank until broadcast."""

    def __init__(self, rank: int):
        super().__init__()
        torch.manual_seed(rank)
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("valid", torch.zeros(3, dtype=torch.bool))
        if rank == 0:
            self.valid[1] = True


def run_broadcast(rank: int) -> dict:
    module = Stateful(rank)
    distributed.broadcast_module_state(module)
    received = distributed.broadcast_object({"rank": rank, "tensor": torch.arange(3) * (rank + 1)})
    return {"state": {k: v.clone() for k, v in module.state_dict().items()}, "object": received}


def ddp_step(method, network, loss_fn, ctx):
    wrapped = distributed.wrap_train_step(method, network, loss_fn, ctx)
    return lambda batch: wrapped(batch)[0]


def single_step(method, network, loss_fn, ctx):
    return lambda batch: method.train_step(network, batch, loss_fn, ctx).loss


def run_methods(out: Path, methods: list[str]) -> None:
    from autosam.training.trainer import run_training
    from test_device_guard import TINY_OPTIONS
    from training_data import NAME

    done = {}
    for method in methods:
        fold_dir = run_training(NAME, "3d", method, 0, epochs=1, iters_per_epoch=2, device="cpu", num_workers=0,
                                method_overrides=TINY_OPTIONS[method], validate=False)
        if distributed.get_rank() == 0:
            ck = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
            done[method] = {"epoch": int(ck["epoch"]), "train_loss": ck["logger"]["train_loss"],
                            "logs": sorted(p.name for p in fold_dir.glob("training_log_*.txt"))}
            out.write_text(json.dumps(done))


def main(argv: list[str]) -> int:
    env = distributed.launcher_env()
    assert env is not None, "start this module with torch.distributed.run"
    torch.set_num_threads(1)
    distributed.init_process_group(torch.device("cpu"), env)
    try:
        mode, out = argv[0], Path(argv[1])
        if mode == "steps":
            result = run_steps(env.rank, env.world_size, ddp_step)
            if env.rank == 0:
                torch.save(result, out)
            torch.save(run_broadcast(env.rank), out.with_name(f"{out.name}.rank{env.rank}.pt"))
        elif mode == "methods":
            run_methods(out, argv[2:])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
