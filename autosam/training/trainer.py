"""``run_training``: one fold of a method, trained and validated, in named phases.

A method plugin (:class:`autosam.method.Method`) provides the network, loss, optimiser and
one training step; the core does the rest. Results go to
``<results>/DatasetXXX_Name/<method>__<plans>__<configuration>/fold_N/``. The phases, in order
(:mod:`autosam.training.run_setup` holds the first five, :mod:`autosam.training.loop` the epochs):

1. resolve the run: plans, method, options, split, label checks (nothing written);
2. the method's context: device, seeds, workers, iterations per epoch;
3. the network, with ``-pretrained_weights`` (a refused checkpoint writes nothing);
4. the fold folder and its lock; the log file (with the records of phases 1-3);
5. the log's header and ``metadata.json``;
6. the epochs (:class:`~autosam.training.loop.TrainingLoop`), then the final checkpoint;
7. the final validation (:func:`autosam.training.validation.validate_fold`).

Under ``torch.distributed`` (a process group initialised by the command line, see
:mod:`autosam.training.distributed`) every rank runs :func:`run_training`: the plans' batch is
split across the ranks, the step runs inside DistributedDataParallel, the pseudo Dice and the
losses are all-reduced, and rank 0 alone writes files.
"""
from __future__ import annotations

import logging
from pathlib import Path

from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME
from autosam.training import checkpoint as ckpt_io
from autosam.training import distributed
from autosam.training.loop import EMA_MOMENTUM, OVERSAMPLE_FOREGROUND, TrainingLoop  # noqa: F401 (re-exported)
from autosam.training.run_setup import (  # noqa: F401 (re-exported: the former home of these names)
    RecordBuffer,
    TrainingRun,
    build_network,
    check_preprocessed_labels,
    free_device_memory,
    lock_fold,
    log_run,
    make_context,
    model_folder,
    prepare_fold_folder,
    resolve_run,
    write_metadata,
)
from autosam.training.run_support import attach_log_file
from autosam.training.time_budget import TimeBudget
from autosam.utils.files import read_json, write_json

logger = logging.getLogger(__name__)
DEFAULT_EPOCHS = 1000
DEFAULT_SEED = 12345
_Loop = TrainingLoop  # the former name (tests and benchmarks patch its methods)
_lock_fold = lock_fold


def run_training(dataset_id, configuration: str, method_name: str, fold, *, epochs: int = DEFAULT_EPOCHS,
                 iters_per_epoch: int | None = None, device=None, resume: bool = False, validation_only: bool = False,
                 save_npz: bool = False, seed: int = DEFAULT_SEED, plans_name: str = DEFAULT_PLANS_NAME,
                 method_overrides: dict | None = None, num_workers: int | None = None, progress: bool = False,
                 validate: bool = True, val_best: bool = False, disable_checkpointing: bool = False,
                 pretrained_weights: str | Path | None = None, step_size: float = 0.5,
                 time_budget_minutes: float | None = None) -> Path:
    """Train ``method_name`` on fold ``fold`` (0..4 or ``"all"``) and validate; return the fold folder.

    :param iters_per_epoch: ``None`` applies :func:`default_iterations_per_epoch`.
    :param resume: continue from ``checkpoint_latest.pth`` (or ``checkpoint_final.pth``).
    :param validation_only: skip training; predict the validation cases with ``checkpoint_final.pth``.
    :param save_npz: also save validation probabilities (``<case>.npz`` + ``<case>.json``).
    :param method_overrides: option values (strings or typed) on top of defaults and the plans.
    :param progress: show a tqdm bar per epoch (the command line turns it on).
    :param validate: run the full-volume validation after training (tests may skip it).
    :param val_best: validate with ``checkpoint_best.pth`` instead of the final network.
    :param disable_checkpointing: write no ``checkpoint_latest.pth``/``checkpoint_best.pth`` while
        training, only ``checkpoint_final.pth`` at the end.
    :param pretrained_weights: a checkpoint (another dataset or method) to start from; tensors of
        matching name and shape are loaded, the rest (e.g. the segmentation head) stays freshly
        initialised (:func:`autosam.training.run_support.load_pretrained_weights`).
    :param step_size: sliding-window step of the validation (fraction of the patch).
    :param time_budget_minutes: stop training at the end of the epoch in which this many minutes of
        training are used, with the schedule fitted to the epochs that fit
        (:mod:`autosam.training.time_budget`); the final validation follows as usual.
    """
    if val_best and disable_checkpointing:
        raise ValueError("--val_best validates with checkpoint_best.pth, which --disable_checkpointing does not write")
    if pretrained_weights is not None and resume:
        raise ValueError("-pretrained_weights starts a new training; it cannot be combined with --c (continue)")
    if pretrained_weights is not None and validation_only:
        logger.warning("-pretrained_weights is ignored with --val: the validation uses the fold's own checkpoint")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    budget = TimeBudget(time_budget_minutes, epochs) if time_budget_minutes is not None else None
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    main = rank == 0  # rank 0 alone writes files; the others wait for what they need (barrier/broadcast)
    with RecordBuffer() as early_records:  # phases 1-3 log before the fold's log file exists
        run = resolve_run(dataset_id, configuration, method_name, fold, plans_name, method_overrides, main)
        ctx = make_context(run, device=device, seed=seed, epochs=epochs, iters_per_epoch=iters_per_epoch,
                           num_workers=num_workers, step_size=step_size, rank=rank, world_size=world_size)
        network = build_network(run, ctx, None if validation_only else pretrained_weights)
    prepare_fold_folder(run, main)
    # one process owns the fold folder while it trains or validates: rank 0 (the only one writing
    # there); a second run of the same fold stops here with FolderLockedError naming the owner
    fold_lock = lock_fold(run.fold_dir, main, world_size)
    handler = None
    try:
        handler = attach_log_file(run.fold_dir) if main else None
        early_records.replay(handler)
        log_run(run, ctx)
        if main:
            write_metadata(run, ctx, time_budget_minutes)
        if not validation_only:
            _train(run, ctx, network, resume, ctx.extra["num_workers"], progress and main, disable_checkpointing,
                   budget, main)
        distributed.barrier()  # the checkpoints of rank 0 exist before any rank reads them
        if validate and run.val_keys:
            _validate(run, ctx, network, "checkpoint_best.pth" if val_best else "checkpoint_final.pth",
                      reload=validation_only or val_best, save_npz=save_npz, progress=progress and main)
    finally:
        if handler is not None:
            logging.getLogger("autosam").removeHandler(handler)
            logging.getLogger("autosam_plugins").removeHandler(handler)
            handler.close()
        if fold_lock is not None:
            fold_lock.release()
    return run.fold_dir


def _train(run: TrainingRun, ctx, network, resume: bool, num_workers: int, progress: bool,
           disable_checkpointing: bool, budget: TimeBudget | None, main: bool) -> None:
    """Phase 6: the epochs, the final checkpoint, the time budget's record; then the loop's
    optimiser state, gradients and DDP buckets are freed before the validation."""
    loop = TrainingLoop(run.method, run.entry, ctx, network, run.dataset, run.train_keys, run.val_keys, run.fold_dir,
                        resume, num_workers, progress,
                        dict(dataset_name=run.dataset_name, plans_name=run.plans_name,
                             configuration=run.configuration, fold=run.fold))
    loop.disable_checkpointing = disable_checkpointing
    loop.time_budget = budget
    loop.run()
    if budget is not None and main:
        summary = budget.summary(loop.epochs_trained, ctx.iterations_per_epoch)
        logger.info("time budget: %s", summary)
        write_json(run.fold_dir / "metadata.json", {**read_json(run.fold_dir / "metadata.json"), "time_budget": summary})
    loop.release()  # optimizer state, gradients, DDP buckets: not needed by the validation
    del loop
    free_device_memory(ctx.device)


def _validate(run: TrainingRun, ctx, network, checkpoint: str, *, reload: bool, save_npz: bool, progress: bool) -> None:
    """Phase 7: the fold's validation cases predicted whole and evaluated (``reload``: with
    ``checkpoint`` from disk instead of the network in memory)."""
    from autosam.training.validation import validate_fold

    if reload:
        path = run.fold_dir / checkpoint
        ck = ckpt_io.load_checkpoint(path, map_location="cpu")
        ckpt_io.method_entry_for_checkpoint(ck, path)
        ckpt_io.restore_training_state(ck, network=network, method=run.method)
        logger.info("validation with %s (epoch %d)", path, ck["epoch"])
    # the uncompiled module: switching deep supervision off need not recompile a compiled one
    validate_fold(run.method, ckpt_io.unwrap(network), ctx, run.dataset, run.val_keys, run.fold_dir, run.pre_folder,
                  run.dataset_json_path, save_npz=save_npz, progress=progress, checkpoint=checkpoint)


__all__ = ["run_training", "model_folder", "DEFAULT_EPOCHS", "DEFAULT_SEED"]
