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

``python -m fake_cuda --count 2 --card h100,t4 -m ddp_worker trainer_checks OUT``: the trainer under
DDP on two fake GPUs of different kinds (rank 1's without native bf16): each rank writes
OUT.rankN.json with what it saw (autocast dtype and GradScaler inside the step, its first random
number and its initial weights, the validation summary while rank 0's first listing of the validation
folder misses rank 1's case, the error of a resume whose checkpoint epoch differs on rank 1, the error
and the seconds until it of an ``after_training`` that fails on rank 0).

``python -m ddp_worker masksam_without_targets OUT``: two DDP steps of masksam in which rank 1's
batch holds no segment; rank 0 writes OUT when both steps completed.
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


def _record_first(fn, record: dict, key: str, value):
    """``fn`` that stores ``value()`` under ``key`` the first time it is called."""
    def wrapped(*args, **kwargs):
        if key not in record:
            record[key] = value()
        return fn(*args, **kwargs)
    return wrapped


def run_trainer_checks(out: Path, rank: int) -> None:
    import time

    from autosam.evaluation import evaluate
    from autosam.plugins import get_method
    from autosam.training import checkpoint as ckpt_io
    from autosam.training import validation
    from autosam.training.trainer import run_training
    from training_data import NAME

    unet = get_method("unet")
    seen: dict = {"rank": rank}
    build, step = unet.build_network, unet.train_step

    def build_network(ctx):
        network = build(ctx)
        seen.setdefault("initial_weights", float(sum(p.detach().double().sum() for p in network.parameters())))
        return network

    unet.build_network = build_network
    unet.train_step = _record_first(step, seen, "step", lambda: {
        "autocast": [torch.is_autocast_enabled("cuda"), str(torch.get_autocast_dtype("cuda"))],
        "random": float(torch.rand(()))})
    # a listing of the validation folder on rank 0 that has not caught up with rank 1's write (once)
    listing, hidden = evaluate.Path.iterdir, {"done": False}

    def stale_iterdir(folder):
        entries = list(listing(folder))
        if folder.name == "validation" and rank == 0 and not hidden["done"]:
            hidden["done"] = True
            return iter([e for e in entries if not e.name.startswith("case_001")])
        return iter(entries)

    validation.STALE_LISTING_WAIT = 0.2
    evaluate.Path.iterdir = stale_iterdir
    try:
        fold_dir = run_training(NAME, "3d", "unet", 0, epochs=1, iters_per_epoch=1, device="cuda", num_workers=0,
                                method_overrides={"compile": "false"})
    finally:
        evaluate.Path.iterdir = listing
    seen["stale_listing_seen"] = hidden["done"]
    seen["scaler"] = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)["grad_scaler"] is not None
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    seen["summary_cases"] = sorted(Path(c["prediction_file"]).name for c in summary["metric_per_case"])
    # --c where rank 1 reads an older checkpoint (a file system that has not caught up)
    load = ckpt_io.load_checkpoint

    def stale_load(path, *args, **kwargs):
        ck = load(path, *args, **kwargs)
        if rank == 1:
            ck["epoch"] = 0
        return ck

    ckpt_io.load_checkpoint = stale_load
    try:
        run_training(NAME, "3d", "unet", 0, epochs=2, iters_per_epoch=1, device="cuda", num_workers=0, resume=True,
                     validate=False, method_overrides={"compile": "false"})
        seen["resume_error"] = None
    except RuntimeError as exc:
        seen["resume_error"] = str(exc)
    finally:
        ckpt_io.load_checkpoint = load
    # after_training fails on rank 0: every rank stops at once
    def failing_after_training(*args):
        if rank == 0:
            raise ValueError("after_training failed on purpose")

    unet.after_training = failing_after_training
    start = time.monotonic()
    try:
        run_training(NAME, "3d", "unet", 1, epochs=1, iters_per_epoch=1, device="cuda", num_workers=0, validate=False,
                     method_overrides={"compile": "false"})
        seen["after_training_error"] = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        seen["after_training_error"] = f"{type(exc).__name__}: {exc}"
    seen["after_training_seconds"] = time.monotonic() - start
    out.with_name(f"{out.name}.rank{rank}.json").write_text(json.dumps(seen))


def run_masksam_without_targets(out: Path, rank: int, world_size: int) -> None:
    """Two DDP steps of masksam (find_unused_parameters False) where rank 1 sees no segment."""
    from autosam.method import MethodContext
    from autosam.plugins import get_method
    from test_device_guard import TINY_OPTIONS
    from training_data import tiny_plans

    method = get_method("masksam")
    plans = tiny_plans((4, 32, 32), batch_size=2)
    cfg = plans.configuration("3d")
    options = method.make_options(cfg.methods.get("masksam"), TINY_OPTIONS["masksam"])
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=options, device=torch.device("cpu"),
                        num_input_channels=1, num_classes=plans.num_classes, num_epochs=1, iterations_per_epoch=2,
                        rank=rank, world_size=world_size)
    torch.manual_seed(0)
    network = method.build_network(ctx)
    loss_fn = method.build_loss(ctx)
    optimizer, _ = method.configure_optimizers(network, ctx)
    step = ddp_step(method, network, loss_fn, ctx)
    data, seg = fixed_batch(2)
    data, seg = data[rank:rank + 1, :, :4], seg[rank:rank + 1, :, :4]
    if rank == 1:
        seg = torch.zeros_like(seg)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        step({"data": data, "target": [seg]}).backward()
        optimizer.step()
    distributed.barrier()
    if rank == 0:
        out.write_text("ok")


def main(argv: list[str]) -> int:
    env = distributed.launcher_env()
    assert env is not None, "start this module with torch.distributed.run"
    torch.set_num_threads(1)
    # under tests/fake_cuda.py: each rank on its (fake) GPU, NCCL replaced by gloo
    device = torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    distributed.init_process_group(device, env)
    finished = False
    try:
        mode, out = argv[0], Path(argv[1])
        if mode == "steps":
            result = run_steps(env.rank, env.world_size, ddp_step)
            if env.rank == 0:
                torch.save(result, out)
            torch.save(run_broadcast(env.rank), out.with_name(f"{out.name}.rank{env.rank}.pt"))
        elif mode == "methods":
            run_methods(out, argv[2:])
        elif mode == "trainer_checks":
            run_trainer_checks(out, env.rank)
        elif mode == "masksam_without_targets":
            run_masksam_without_targets(out, env.rank, env.world_size)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        finished = True
    finally:
        distributed.destroy_process_group(wait_for_others=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
