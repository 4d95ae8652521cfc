"""The training loop the core owns: data, epochs, AMP, checkpoints, logging, validation, export.

A method plugin (:class:`autosam.method.Method`) provides the network, loss, optimiser and
one training step; :func:`run_training` does the rest. Results go to
``<results>/DatasetXXX_Name/<method>__<plans>__<configuration>/fold_N/``.

Under ``torch.distributed`` (a process group initialised by the command line, see
:mod:`autosam.training.distributed`) every rank runs :func:`run_training`: the plans' batch is
split across the ranks, the step runs inside DistributedDataParallel, the pseudo Dice and the
losses are all-reduced, and rank 0 alone writes files.
"""
from __future__ import annotations

import logging
import math
import platform
import random
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import autosam
from autosam import paths
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, Plans, normalize_configuration
from autosam.experiment_planning.splits import get_or_create_splits
from autosam.io.dataset import dataset_name_from_id
from autosam.plugins import get_plugin_system
from autosam.training import checkpoint as ckpt_io
from autosam.training import distributed, rank_sync
from autosam.training.dataloading import (
    PreprocessedDataset,
    default_num_workers,
    make_loader,
    shutdown_loader,
)
from autosam.training.logger import TrainingHistory
from autosam.training.time_budget import TimeBudget, rebuild_schedule
from autosam.method import MethodContext, check_label_support, rank_batch_sizes
from autosam.training.run_support import (
    attach_log_file,
    default_iterations_per_epoch,
    load_pretrained_weights,
    pick_device,
    write_model_folder_files,
)
from autosam.utils import precision
from autosam.utils.files import read_json, write_json
from autosam.utils.locks import FolderLock, FolderLockedError, lock_folder

logger = logging.getLogger(__name__)
DEFAULT_EPOCHS = 1000
DEFAULT_SEED = 12345
EMA_MOMENTUM = 0.9  # ema = 0.9 * ema + 0.1 * mean pseudo Dice (nnU-Net)
PROGRESS_EVERY = 10  # iterations between updates of the progress bar's running mean loss
OVERSAMPLE_FOREGROUND = 0.33  # share of foreground-centred samples in a (global) batch (nnU-Net)


def model_folder(dataset_name: str, method: str, plans_name: str, configuration: str) -> Path:
    return paths.results_dir() / dataset_name / f"{method}__{plans_name}__{configuration}"


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
    configuration = normalize_configuration(configuration)
    dataset_name = dataset_name_from_id(dataset_id)
    pre_folder = paths.preprocessed_dir() / dataset_name
    plans_path = pre_folder / f"{plans_name}.json"
    if not plans_path.is_file():
        raise FileNotFoundError(f"{plans_path}: plans not found; run autosam_plan_and_preprocess -d {dataset_id} first")
    plans = Plans.load(plans_path)
    config = plans.configuration(configuration)
    dataset_json_path = pre_folder / "dataset.json"
    if not dataset_json_path.is_file():
        dataset_json_path = paths.raw_dir() / dataset_name / "dataset.json"
    dataset_json = read_json(dataset_json_path)

    if method_name == "auto":
        method_name = plans.default_method
        logger.info("method 'auto': using the plans' default method %r (%s)", method_name, plans.default_method_rationale)
    entry = get_plugin_system().methods.entry(method_name)
    method = entry.obj
    if configuration not in method.configurations:
        raise ValueError(f"method {method.name!r} does not support configuration {configuration!r}; "
                         f"it supports: {', '.join(method.configurations)}")
    check_label_support(method, plans.label_manager, str(plans_path))  # before anything is written
    options = method.make_options(config.methods.get(method.name), method_overrides)

    data_folder = pre_folder / config.data_identifier
    all_keys = PreprocessedDataset(data_folder).keys
    if not all_keys:
        raise FileNotFoundError(f"{data_folder}: no preprocessed cases; run autosam_preprocess -d {dataset_id} -c {configuration}")
    fold = "all" if str(fold) == "all" else int(fold)
    if fold == "all":
        train_keys, val_keys = list(all_keys), list(all_keys)
    else:
        # rank 0 creates splits_final.json when missing; every rank uses the same splits
        splits = distributed.broadcast_object(get_or_create_splits(pre_folder, all_keys) if main else None)
        if not 0 <= fold < len(splits):
            raise ValueError(f"fold {fold} does not exist; {pre_folder / 'splits_final.json'} has {len(splits)} folds")
        train_keys, val_keys = splits[fold]["train"], splits[fold]["val"]
    dataset = PreprocessedDataset(data_folder, sorted(set(train_keys) | set(val_keys)))
    check_preprocessed_labels(dataset, plans, dataset_id, configuration)  # before anything is written

    out = model_folder(dataset_name, method.name, plans_name, configuration)
    fold_dir = out / f"fold_{fold}"
    if main:  # the files of the fold: rank 0 only (also where a lock on the fold belongs)
        fold_dir.mkdir(parents=True, exist_ok=True)
        write_model_folder_files(out, plans, dataset_json, pre_folder)
    distributed.barrier()
    dev = pick_device(device)
    if dev.type == "cpu":
        from autosam.utils.cpu_allocator import tune_cpu_allocator

        tune_cpu_allocator()
    elif dev.type == "cuda":
        torch.cuda.set_device(dev)  # cuda:N: allocations and kernels without an index go to N too
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick its fastest kernels (nnU-Net)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if num_workers is None:  # per process: the node's cores are shared by its ranks
        num_workers = default_num_workers() if world_size == 1 else distributed.default_workers_per_rank()
    if iters_per_epoch is None:
        iters_per_epoch = default_iterations_per_epoch(dataset.subset(train_keys), config.batch_size, config.patch_size)
    ctx = MethodContext(plans=plans, configuration=config, dataset_json=dataset_json, options=options, device=dev,
                        num_input_channels=plans.num_channels, num_classes=plans.num_classes, num_epochs=epochs,
                        iterations_per_epoch=iters_per_epoch, fold=fold, output_folder=fold_dir, seed=seed,
                        extra={"num_workers": num_workers},
                        step_size=step_size, rank=rank, world_size=world_size)

    # one process owns the fold folder while it trains or validates: rank 0 (the only one writing
    # there); a second run of the same fold stops here with FolderLockedError naming the owner
    fold_lock = _lock_fold(fold_dir, main, world_size)
    try:
        handler = attach_log_file(fold_dir) if main else None
    except BaseException:
        if fold_lock is not None:
            fold_lock.release()
        raise
    try:
        logger.info("training %s fold %s: method %s (%s %s), configuration %s, device %s, %d epochs x %d iterations, "
                    "%d training / %d validation cases", dataset_name, fold, method.name, entry.distribution,
                    entry.version, configuration, dev, epochs, iters_per_epoch, len(train_keys), len(val_keys))
        if world_size > 1:
            logger.info("distributed: %d processes; global batch %d (the plans'), per rank %s; %s data loader "
                        "workers per rank", world_size, config.batch_size,
                        "/".join(map(str, rank_batch_sizes(config.batch_size, world_size))), ctx.extra["num_workers"])
        logger.info("options: %s", ckpt_io.options_dict(options))
        target = getattr(plans, "compute_target", "gpu")
        if target == "gpu" and dev.type == "cpu":
            logger.warning("the plans %s were made for a GPU (nnU-Net-sized network); training it on the CPU is slow. "
                           "For a CPU-sized network run autosam_plan_experiment -d %s --target cpu "
                           "-overwrite_plans_name <NAME> and train with --plans <NAME>", plans_name, dataset_name)
        elif target == "cpu" and dev.type != "cpu":
            logger.warning("the plans %s were made for the CPU (16 base features, small patch) but you train on %s; "
                           "for nnU-Net's full-size network plan with --target gpu", plans_name, dev.type)
        if main:
            write_json(fold_dir / "metadata.json", {
                "method": method.name, "plugin": entry.plugin, "distribution": entry.distribution, "version": entry.version,
                "options": ckpt_io.options_dict(options), "dataset": dataset_name, "configuration": configuration,
                "plans_name": plans_name, "fold": fold, "epochs": epochs, "iterations_per_epoch": iters_per_epoch,
                "seed": seed, "device": str(dev), "torch_version": torch.__version__, "autosam_version": autosam.__version__,
                "python_version": platform.python_version(), "started": datetime.now().isoformat(timespec="seconds"),
                "world_size": world_size, "time_budget_minutes": time_budget_minutes,
            })
        network = method.build_network(ctx).to(dev)
        if world_size > 1:  # identical initial weights above; from here on each rank draws its own numbers
            rank_sync.seed_rank(seed, rank)
        val_checkpoint = "checkpoint_best.pth" if val_best else "checkpoint_final.pth"
        if not validation_only:
            if pretrained_weights is not None:
                load_pretrained_weights(network, pretrained_weights)
            loop = _Loop(method, entry, ctx, network, dataset, train_keys, val_keys, fold_dir, resume,
                         num_workers, progress and main,
                         dict(dataset_name=dataset_name, plans_name=plans_name, configuration=configuration, fold=fold))
            loop.disable_checkpointing = disable_checkpointing
            loop.time_budget = budget
            loop.run()
            if budget is not None and main:
                summary = budget.summary(loop.epochs_trained, ctx.iterations_per_epoch)
                logger.info("time budget: %s", summary)
                write_json(fold_dir / "metadata.json", {**read_json(fold_dir / "metadata.json"), "time_budget": summary})
            loop.release()  # optimizer state, gradients, DDP buckets: not needed by the validation
            del loop
            _free_device_memory(dev)
        distributed.barrier()  # the checkpoints of rank 0 exist before any rank reads them
        if validate and val_keys:
            from autosam.training.validation import validate_fold

            if validation_only or val_best:  # else the network in memory is the final one
                path = fold_dir / val_checkpoint
                ck = ckpt_io.load_checkpoint(path, map_location="cpu")
                ckpt_io.method_entry_for_checkpoint(ck, path)
                ckpt_io.restore_training_state(ck, network=network, method=method)
                logger.info("validation with %s (epoch %d)", path, ck["epoch"])
            # the uncompiled module: switching deep supervision off need not recompile a compiled one
            validate_fold(method, ckpt_io.unwrap(network), ctx, dataset, val_keys, fold_dir, pre_folder, dataset_json_path,
                          save_npz=save_npz, progress=progress and main, checkpoint=val_checkpoint)
    finally:
        if handler is not None:
            logging.getLogger("autosam").removeHandler(handler)
            logging.getLogger("autosam_plugins").removeHandler(handler)
            handler.close()
        if fold_lock is not None:
            fold_lock.release()
    return fold_dir


def _free_device_memory(dev: torch.device) -> None:
    """Return what the training loop held to the device before the final validation."""
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _lock_fold(fold_dir: Path, main: bool, world_size: int) -> FolderLock | None:
    """The lock of the fold folder, taken by rank 0 (``main``); under DDP every rank raises the
    FolderLockedError when rank 0 could not take it."""
    lock, busy = None, None
    if main:
        try:
            lock = lock_folder(fold_dir, "training fold")
        except FolderLockedError as exc:
            busy = exc
    if world_size > 1:
        owner = distributed.broadcast_object((busy.owner or {}) if busy is not None else None)
        if owner is not None and busy is None:
            busy = FolderLockedError(fold_dir, owner or None, "training fold")
    if busy is not None:
        raise busy
    return lock


def check_preprocessed_labels(dataset: PreprocessedDataset, plans: Plans, dataset_id, configuration: str) -> None:
    """Stop with one error naming every preprocessed segmentation of ``dataset`` that holds label
    values the plans' labels (dataset.json) do not declare: a folder preprocessed by an older
    autosam kept them, and training would crash on them mid-run (or learn from them silently)."""
    from autosam.io.dataset import DatasetError
    from autosam.preprocessing.storage import undeclared_values_of_cases

    declared = set(plans.label_manager.declared_values)
    found = undeclared_values_of_cases(dataset.folder, dataset.keys, declared)
    if found:
        lines = "\n  - ".join(f"{path}: label value(s) {values}" for path, values in sorted(found.items()))
        raise DatasetError(
            f"{len(found)} preprocessed segmentation(s) in {dataset.folder} hold label values that dataset.json does "
            f"not declare (declared: {sorted(declared)}); the folder was written by an older autosam that kept "
            f"them:\n  - {lines}\nRemove {dataset.folder} and run autosam_preprocess -d {dataset_id} -c "
            f"{configuration} again: it stops on undeclared values in the raw labels (or maps them to background "
            f"with --undeclared_labels_to_background), or declare the values in dataset.json 'labels'.")


class _Loop:
    """State of one training run (kept out of run_training to keep both readable)."""

    def __init__(self, method, entry, ctx, network, dataset, train_keys, val_keys, fold_dir, resume, num_workers,
                 progress, info):
        self.method, self.entry, self.ctx, self.network = method, entry, ctx, network
        self.dataset, self.train_keys, self.val_keys = dataset, train_keys, val_keys
        self.fold_dir, self.resume, self.num_workers, self.progress, self.info = fold_dir, resume, num_workers, progress, info
        self.loss_fn = method.build_loss(ctx)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn = self.loss_fn.to(ctx.device)
        self.optimizer, self.scheduler = method.configure_optimizers(network, ctx)
        # bf16 where native, else fp16 + GradScaler; under DDP the least capable rank decides for all
        self.amp_dtype = rank_sync.agree_amp_dtype(precision.amp_dtype(ctx.device))
        self.scaler = precision.grad_scaler(self.amp_dtype, ctx.device)
        logger.info("precision: %s on %s", precision.precision_name(self.amp_dtype), ctx.device)
        self.history = TrainingHistory()
        self.best_ema: float | None = None
        self.start_epoch = 0
        if resume:  # before DDP: its construction then shares rank 0's resumed weights, not fresh ones
            self.try_resume()
            rank_sync.check_same_on_every_rank(self.start_epoch, "the epoch to resume from (--c)")
        # under torch.distributed: DDP around a module whose forward is the method's train_step
        # (also for one rank when the process group was started for it: --ddp checks this path on one GPU)
        self.ddp_step = distributed.wrap_train_step(method, network, self.loss_fn, ctx) if distributed.is_initialized() else None

    def autocast(self):
        return precision.autocast(self.ctx.device, self.amp_dtype)

    # ------------------------------------------------------------------ resume / save
    def try_resume(self) -> None:
        for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
            path = self.fold_dir / name
            if path.is_file():
                break
        else:
            logger.warning("--c: no checkpoint in %s; starting from scratch", self.fold_dir)
            return
        ck = ckpt_io.load_checkpoint(path, map_location="cpu")
        ckpt_io.method_entry_for_checkpoint(ck, path)
        if ck["method"] != self.method.name:
            raise ValueError(f"{path}: checkpoint of method {ck['method']!r}, not {self.method.name!r}")
        ckpt_io.restore_training_state(ck, network=self.network, optimizer=self.optimizer, scheduler=self.scheduler,
                                       grad_scaler=self.scaler, method=self.method)
        self.start_epoch = int(ck["epoch"])
        self.history = TrainingHistory.from_state(ck.get("logger") or {})
        self.history.truncate(self.start_epoch)
        self.best_ema = ck.get("best_ema")
        logger.info("resuming from epoch %d (%d of %d epochs completed, %s)", self.start_epoch, self.start_epoch,
                    self.ctx.num_epochs, path.name)

    disable_checkpointing = False  # --disable_checkpointing: only checkpoint_final.pth is written
    time_budget: TimeBudget | None = None  # --time-budget-minutes
    epochs_trained = 0  # epochs done when training stopped (this run and the runs it resumed)

    def apply_time_budget(self, epochs_done: int, replan: bool = False) -> bool:
        """After ``epochs_done`` epochs: True when the budget is used up (training stops); else
        shorten the run to the epochs that fit and rebuild the schedule for them. Rank 0 decides
        for every rank (their clocks differ)."""
        budget, ctx = self.time_budget, self.ctx
        decision = (budget.exhausted(), budget.fitting_epochs() if (replan or budget.should_replan()) else None)
        if ctx.world_size > 1:
            decision = distributed.broadcast_object(decision if ctx.is_main_process else None)
        exhausted, fitting = decision
        if exhausted:
            budget.stop_reason = f"the budget of {budget.minutes:g} min was used after {epochs_done} epochs"
            if epochs_done < ctx.num_epochs:
                logger.info("time budget: %s; training stops", budget.stop_reason)
            ctx.num_epochs = epochs_done
            return True
        if fitting is not None and fitting < ctx.num_epochs:
            logger.info("time budget: %d of %d epochs fit into %g min (%.1f s per epoch); the schedule follows",
                        fitting, budget.planned_epochs, budget.minutes, budget.mean_epoch())
            ctx.num_epochs = fitting
            self.optimizer, self.scheduler = rebuild_schedule(self.method, self.network, self.optimizer, self.scheduler,
                                                              ctx, epochs_done)
            budget.stop_reason = f"{fitting} epochs fit into the budget"
        return False

    def save(self, name: str, epoch: int) -> None:
        if self.disable_checkpointing and name != "checkpoint_final.pth":
            return
        # rank 0 writes; the others wait outside any collective (a failure stops them at once)
        rank_sync.main_process_phase(f"writing {name}", self._write_checkpoint, name, epoch)

    def _write_checkpoint(self, name: str, epoch: int) -> None:
        ckpt_io.save_checkpoint(
            self.fold_dir / name, method_entry=self.entry, options=self.ctx.options, network=self.network,
            optimizer=self.optimizer, scheduler=self.scheduler, grad_scaler=self.scaler, epoch=epoch,
            num_epochs=self.ctx.num_epochs, history=self.history.state(), best_ema=self.best_ema,
            method_state=self.method.extra_state(), iterations_per_epoch=self.ctx.iterations_per_epoch, **self.info,
        )

    # ------------------------------------------------------------------ loop
    def release(self) -> None:
        """Drop the optimiser, scheduler, scaler, DDP wrapper and gradients (after training)."""
        self.network.zero_grad(set_to_none=True)
        self.optimizer = self.scheduler = self.scaler = self.ddp_step = self.loss_fn = None

    def run(self) -> None:
        ctx = self.ctx
        if self.time_budget is not None and self.start_epoch > 0:  # the epochs of the runs resumed count
            self.time_budget.epoch_times = [t for t in self.history.state().get("epoch_time", [])[:self.start_epoch]
                                            if t is not None]
            self.apply_time_budget(self.start_epoch, replan=True)
        self.epochs_trained = self.start_epoch
        if self.start_epoch >= ctx.num_epochs:
            logger.info("training already complete (%d epochs)", self.start_epoch)
            if self._final_epoch() >= self.start_epoch:  # stopped before checkpoint_latest.pth was removed
                if ctx.is_main_process:
                    (self.fold_dir / "checkpoint_latest.pth").unlink(missing_ok=True)
            else:  # stopped after the last epoch, before the final checkpoint: do what was left
                self.finish()
            return
        train_loader, val_loader = self.make_loaders()
        try:
            epoch = self.start_epoch
            while epoch < ctx.num_epochs:  # a time budget may shorten the run as it goes
                self.run_epoch(epoch, train_loader, val_loader)
                epoch = self.epochs_trained = epoch + 1
                if self.time_budget is not None:
                    self.time_budget.record(self.history.last("epoch_time"))
                    if self.apply_time_budget(epoch):
                        break
        finally:
            for loader in (train_loader, val_loader):
                shutdown_loader(loader)
        self.finish()

    def _final_epoch(self) -> int:
        """The epoch of ``checkpoint_final.pth``, or -1 when there is none."""
        path = self.fold_dir / "checkpoint_final.pth"
        if not path.is_file():
            return -1
        return int(ckpt_io.load_checkpoint(path, map_location="cpu")["epoch"])

    def finish(self) -> None:
        """After the last epoch: the method's ``after_training``, the final (and best) checkpoint."""
        ctx = self.ctx
        self.after_training()
        epochs = max(ctx.num_epochs, self.start_epoch)  # a run resumed with fewer --epochs keeps its count
        self.save("checkpoint_final.pth", epochs)
        if not self.method.per_epoch_metric and not self.disable_checkpointing:
            self.save("checkpoint_best.pth", epochs)
            logger.info("%s has no per-epoch validation metric: checkpoint_best.pth is the final network", self.method.name)
        if ctx.is_main_process:
            (self.fold_dir / "checkpoint_latest.pth").unlink(missing_ok=True)  # the final one supersedes it
        logger.info("training done; best EMA pseudo Dice %.4f", self.best_ema if self.best_ema is not None else math.nan)

    def after_training(self) -> None:
        """The method's ``after_training`` hook, on rank 0 alone; its result (the network's weights
        and buffers, the method state) then reaches the other ranks, which validate with it."""
        ctx = self.ctx
        # the other ranks wait outside any collective: a failure here stops them at once
        rank_sync.main_process_phase("after_training", self.method.after_training, self.network, ctx,
                                     self.dataset.subset(self.train_keys), list(self.train_keys))
        if ctx.world_size > 1:
            distributed.broadcast_module_state(ckpt_io.unwrap(self.network))
            state = distributed.broadcast_object(self.method.extra_state() if ctx.is_main_process else None)
            if not ctx.is_main_process:
                self.method.load_extra_state(state)

    def make_loaders(self):
        ctx, method = self.ctx, self.method
        ds_scales = method.deep_supervision_scales(ctx)
        patch = method.train_patch_size(ctx)
        # the plans' batch is the global one: each rank draws its share, with as many foreground-centred
        # samples as its part of a single-process batch would hold
        global_bs = ctx.configuration.batch_size
        bs, fg = ctx.rank_batch_size, ctx.foreground_fraction(global_bs, OVERSAMPLE_FOREGROUND)
        # a fresh worker seed per (seed, rank, start epoch): ranks draw different samples, and a
        # resumed run does not replay the first batches
        seed = ctx.loader_seed + 7919 * self.start_epoch
        custom = method.make_train_loader(ctx, self.dataset.subset(self.train_keys), list(self.train_keys))
        ignore = ctx.label_manager.ignore_label  # never a foreground-sampling target
        pin = ctx.device.type == "cuda"
        train = iter(custom) if custom is not None else make_loader(
            self.dataset.subset(self.train_keys), bs, patch, ds_scales, train=True,
            num_workers=self.num_workers, seed=seed, ignore_label=ignore, pin_memory=pin, oversample_foreground=fg)
        # validation draws a fifth of the batches: half the workers (nnU-Net), at least one if any
        val = make_loader(self.dataset.subset(self.val_keys), bs, patch, ds_scales, train=False,
                          num_workers=max(1, self.num_workers // 2) if self.num_workers > 0 else 0,
                          seed=ctx.loader_seed + 1, ignore_label=ignore, pin_memory=pin, oversample_foreground=fg)
        return train, val

    def to_device(self, batch: dict) -> dict:
        dev = self.ctx.device
        move = lambda t: t.to(dev, non_blocking=True) if isinstance(t, torch.Tensor) else t  # noqa: E731
        out = dict(batch)
        for key in ("data", "target"):
            if key in out:
                out[key] = [move(t) for t in out[key]] if isinstance(out[key], (list, tuple)) else move(out[key])
        return out

    def train_iteration(self, batch: dict) -> torch.Tensor | None:
        """One optimiser step; returns the detached loss (still on the device: no host sync), or
        ``None`` when the loss was not finite and the step was skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            if self.ddp_step is not None:  # DDP: the backward pass averages the gradients over the ranks
                loss = self.ddp_step(self.to_device(batch))[0]
            else:
                loss = self.method.train_step(self.network, self.to_device(batch), self.loss_fn, self.ctx).loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        # the one host sync of a step, once the backward pass is queued: a non-finite loss skips the
        # update (on every rank when on one: the ranks' weights must stay equal)
        if not distributed.all_true(torch.isfinite(loss)):
            logger.warning("epoch %d: non-finite loss %s; step skipped", self.ctx.epoch, float(loss))
            self.optimizer.zero_grad(set_to_none=True)
            return None
        clip = getattr(self.ctx.options, "grad_clip", None)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if clip and clip > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def validate_patches(self, val_loader) -> tuple[float, list[float]]:
        labels = self.ctx.label_manager  # one pseudo Dice per foreground class or region
        k = len(labels.evaluation_keys)
        # counts and losses stay on the device (one host sync at the end, not one per batch)
        tp, fp, fn = (torch.zeros(k, dtype=torch.int64, device=self.ctx.device) for _ in range(3))
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.ctx.device)
        # nnU-Net: a fifth of the training batches; a method whose validation step costs more may ask fewer
        n = max(1, math.ceil(round(self.ctx.iterations_per_epoch * self.method.per_epoch_validation_fraction, 6)))
        self.network.eval()
        for _ in range(n):
            batch = self.to_device(next(val_loader))
            with self.autocast():
                result = self.method.validation_step(self.network, batch, self.loss_fn, self.ctx)
            loss_sum += result.loss.detach().float()
            if result.output is None:
                continue
            target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
            ref = target[:, 0].to(result.output.device)
            pred, refs = labels.predicted_masks(result.output), labels.masks_of(ref)
            valid = labels.valid_mask(ref)  # ignored voxels count nowhere
            if valid is not None:
                pred = pred & valid
            dims = tuple(range(1, pred.ndim))
            tp += (pred & refs).sum(dims)
            fp += (pred & ~refs).sum(dims)
            fn += (~pred & refs).sum(dims)
        self.network.train()
        if self.ctx.world_size > 1:  # every rank scores the same pseudo Dice: the same best checkpoint
            counts = distributed.all_reduce_sum(torch.stack([tp, fp, fn]))
            tp, fp, fn = counts[0], counts[1], counts[2]
            loss_sum = distributed.all_reduce_mean(loss_sum)
        tp, fp, fn = (t.cpu().double() for t in (tp, fp, fn))
        denom = 2 * tp + fp + fn
        dice = [float(2 * t / d) if d > 0 else math.nan for t, d in zip(tp, denom)]
        return float(loss_sum) / n, dice

    def run_epoch(self, epoch: int, train_loader, val_loader) -> None:
        ctx = self.ctx
        ctx.epoch = epoch
        start = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        self.network.train()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=ctx.iterations_per_epoch, desc=f"epoch {epoch + 1}/{ctx.num_epochs}", unit="it", leave=False)
        loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)  # on the device: no sync per step
        steps = 0
        for i in range(ctx.iterations_per_epoch):
            value = self.train_iteration(next(train_loader))
            if value is not None:
                loss_sum += value.float()
                steps += 1
            if bar is not None:
                bar.update(1)
                if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == ctx.iterations_per_epoch:  # a host sync: not every step
                    bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}" if steps else "nan")
        if bar is not None:
            bar.close()
        if ctx.world_size > 1:  # the loss of the global batch: the mean over the ranks' steps
            totals = distributed.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(steps), device=ctx.device)]))
            loss_sum, steps = totals[0], int(totals[1])
        val_loss, dice = self.validate_patches(val_loader)
        if self.scheduler is not None:
            self.scheduler.step()
        valid = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(valid)) if valid else 0.0
        ema = mean_dice if self.history.last("ema_pseudo_dice") is None else (
            EMA_MOMENTUM * self.history.last("ema_pseudo_dice") + (1 - EMA_MOMENTUM) * mean_dice)
        train_loss = float(loss_sum) / steps if steps else math.nan
        seconds = time.time() - start
        self.history.log(epoch, train_loss=train_loss, val_loss=val_loss, pseudo_dice=dice, ema_pseudo_dice=ema,
                         lr=lr, epoch_time=seconds)
        if self.method.per_epoch_metric:
            logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, pseudo Dice %s, EMA %.4f, lr %.3g, %.1f s",
                        epoch + 1, ctx.num_epochs, train_loss, val_loss, [round(d, 4) for d in dice], ema, lr, seconds)
        else:  # no patch segmentation to score: no pseudo Dice in the log or the plot
            logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, lr %.3g, %.1f s", epoch + 1, ctx.num_epochs,
                        train_loss, val_loss, lr, seconds)
        if self.method.per_epoch_metric and (self.best_ema is None or ema > self.best_ema):
            self.best_ema = ema
            self.save("checkpoint_best.pth", epoch + 1)
            logger.info("new best EMA pseudo Dice %.4f", ema)
        self.save("checkpoint_latest.pth", epoch + 1)
        self.method.on_epoch_end(self.network, ctx, dict(train_loss=train_loss, val_loss=val_loss, pseudo_dice=dice,
                                                         ema_pseudo_dice=ema, lr=lr, epoch_time=seconds))
        if not ctx.is_main_process:
            return
        try:
            names = ctx.label_manager.output_names
            self.history.plot(self.fold_dir / "progress.png", names, pseudo_dice=self.method.per_epoch_metric)
        except Exception as exc:  # a plotting problem must not stop training
            logger.warning("progress.png not written: %s", exc)


__all__ = ["run_training", "model_folder", "DEFAULT_EPOCHS", "DEFAULT_SEED"]
