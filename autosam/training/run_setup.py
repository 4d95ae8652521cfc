"""The phases of :func:`autosam.training.trainer.run_training` before and around the epochs.

1. :func:`resolve_run`: plans, dataset.json, the method and its options, the fold's split, the
   checks of labels and preprocessed data. Nothing is written (a :class:`TrainingRun` comes back).
2. :func:`make_context`: the device, the seeds, the data-loader workers, the iterations per epoch
   (a :class:`~autosam.method.MethodContext`).
3. :func:`build_network`: the method's network on the device, ``-pretrained_weights`` loaded; a
   refused checkpoint stops the run before the fold folder is touched.
4. :func:`prepare_fold_folder` and :func:`lock_fold`: the model folder's files and the fold's lock
   (rank 0).
5. :func:`log_run` and :func:`write_metadata`: the training log's header and ``metadata.json``.

The epochs themselves are :class:`autosam.training.loop.TrainingLoop`; the final validation is
:func:`autosam.training.validation.validate_fold`.
"""
from __future__ import annotations

import logging
import platform
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import autosam
from autosam import paths
from autosam.experiment_planning.plans import Plans, normalize_configuration
from autosam.experiment_planning.splits import get_or_create_splits
from autosam.io.dataset import dataset_name_from_id
from autosam.method import MethodContext, check_label_support, rank_batch_sizes
from autosam.plugins import get_plugin_system
from autosam.results_folder import model_folder_name
from autosam.training import checkpoint as ckpt_io
from autosam.training import distributed, rank_sync
from autosam.training.dataloading import PreprocessedDataset, default_num_workers
from autosam.training.run_support import (
    default_iterations_per_epoch,
    load_pretrained_weights,
    pick_device,
    write_model_folder_files,
)
from autosam.utils.files import read_json, write_json
from autosam.utils.locks import FolderLock, FolderLockedError, lock_folder

logger = logging.getLogger("autosam.training.trainer")  # the trainer's log lines, as before the split


def model_folder(dataset_name: str, method: str, plans_name: str, configuration: str) -> Path:
    """``<results>/<dataset>/<method>__<plans>__<configuration>`` (:mod:`autosam.results_folder` names it)."""
    return paths.results_dir() / dataset_name / model_folder_name(method, plans_name, configuration)


@dataclass
class TrainingRun:
    """Everything resolved about one fold's training before anything is written."""

    dataset_id: Any
    dataset_name: str
    configuration: str
    plans_name: str
    plans: Plans
    config: Any  # the configuration's ConfigurationPlan
    pre_folder: Path
    dataset_json: dict
    dataset_json_path: Path
    entry: Any  # the method's plugin entry
    options: Any
    fold: int | str
    train_keys: list[str]
    val_keys: list[str]
    dataset: PreprocessedDataset

    @property
    def method(self):
        return self.entry.obj

    @property
    def model_dir(self) -> Path:
        return model_folder(self.dataset_name, self.method.name, self.plans_name, self.configuration)

    @property
    def fold_dir(self) -> Path:
        return self.model_dir / f"fold_{self.fold}"


def resolve_run(dataset_id, configuration: str, method_name: str, fold, plans_name: str,
                method_overrides: dict | None, main: bool) -> TrainingRun:
    """Phase 1: what to train, on which cases, with which options (``main``: rank 0, which creates
    ``splits_final.json`` when missing)."""
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
    check_label_support(method, plans.label_manager, str(plans_path))
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
    check_preprocessed_labels(dataset, plans, dataset_id, configuration)
    return TrainingRun(dataset_id=dataset_id, dataset_name=dataset_name, configuration=configuration,
                       plans_name=plans_name, plans=plans, config=config, pre_folder=pre_folder,
                       dataset_json=dataset_json, dataset_json_path=dataset_json_path, entry=entry, options=options,
                       fold=fold, train_keys=list(train_keys), val_keys=list(val_keys), dataset=dataset)


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


def make_context(run: TrainingRun, *, device, seed: int, epochs: int, iters_per_epoch: int | None,
                 num_workers: int | None, step_size: float, rank: int, world_size: int) -> MethodContext:
    """Phase 2: the device (set up for CUDA or the CPU), the seeds, the loader workers and the
    iterations per epoch, in the method's context."""
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
        iters_per_epoch = default_iterations_per_epoch(run.dataset.subset(run.train_keys), run.config.batch_size,
                                                       run.config.patch_size)
    return MethodContext(plans=run.plans, configuration=run.config, dataset_json=run.dataset_json, options=run.options,
                         device=dev, num_input_channels=run.plans.num_channels, num_classes=run.plans.num_classes,
                         num_epochs=epochs, iterations_per_epoch=iters_per_epoch, fold=run.fold,
                         output_folder=run.fold_dir, seed=seed, extra={"num_workers": num_workers},
                         step_size=step_size, rank=rank, world_size=world_size)


class RecordBuffer(logging.Handler):
    """Keeps the log records of the phases that run before the fold's log file exists (building
    the network), so that the log file still gets them once it is attached."""

    LOGGERS = ("autosam", "autosam_plugins")

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self):
        for name in self.LOGGERS:  # INFO records must exist to be kept (as attach_log_file sets it)
            lg = logging.getLogger(name)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                lg.setLevel(logging.INFO)
            lg.addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
        return False

    def replay(self, handler: logging.Handler | None) -> None:
        if handler is not None:
            for record in self.records:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.records = []


def build_network(run: TrainingRun, ctx: MethodContext, pretrained_weights: str | Path | None) -> torch.nn.Module:
    """Phase 3: the method's network on the device, with ``pretrained_weights`` loaded (a checkpoint
    that cannot be used stops here, before anything is written); under DDP each rank then draws
    its own random numbers (the initial weights are identical)."""
    network = run.method.build_network(ctx).to(ctx.device)
    if pretrained_weights is not None:
        load_pretrained_weights(network, pretrained_weights)
    if ctx.world_size > 1:
        rank_sync.seed_rank(ctx.seed, ctx.rank)
    return network


def prepare_fold_folder(run: TrainingRun, main: bool) -> None:
    """Phase 4a: the fold folder and the model folder's plans, dataset.json and fingerprint (rank 0)."""
    if main:
        run.fold_dir.mkdir(parents=True, exist_ok=True)
        write_model_folder_files(run.model_dir, run.plans, run.dataset_json, run.pre_folder)
    distributed.barrier()


def lock_fold(fold_dir: Path, main: bool, world_size: int) -> FolderLock | None:
    """Phase 4b: the lock of the fold folder, taken by rank 0 (``main``); under DDP every rank raises
    the FolderLockedError when rank 0 could not take it."""
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


def log_run(run: TrainingRun, ctx: MethodContext) -> None:
    """Phase 5a: the training log's header (what runs where, and warnings about plans and device)."""
    method, entry, config = run.method, run.entry, run.config
    logger.info("training %s fold %s: method %s (%s %s), configuration %s, device %s, %d epochs x %d iterations, "
                "%d training / %d validation cases", run.dataset_name, run.fold, method.name, entry.distribution,
                entry.version, run.configuration, ctx.device, ctx.num_epochs, ctx.iterations_per_epoch,
                len(run.train_keys), len(run.val_keys))
    if ctx.world_size > 1:
        logger.info("distributed: %d processes; global batch %d (the plans'), per rank %s; %s data loader "
                    "workers per rank", ctx.world_size, config.batch_size,
                    "/".join(map(str, rank_batch_sizes(config.batch_size, ctx.world_size))), ctx.extra["num_workers"])
    logger.info("options: %s", ckpt_io.options_dict(run.options))
    target = getattr(run.plans, "compute_target", "gpu")
    if target == "gpu" and ctx.device.type == "cpu":
        logger.warning("the plans %s were made for a GPU (nnU-Net-sized network); training it on the CPU is slow. "
                       "For a CPU-sized network run autosam_plan_experiment -d %s --target cpu "
                       "-overwrite_plans_name <NAME> and train with --plans <NAME>", run.plans_name, run.dataset_name)
    elif target == "cpu" and ctx.device.type != "cpu":
        logger.warning("the plans %s were made for the CPU (16 base features, small patch) but you train on %s; "
                       "for nnU-Net's full-size network plan with --target gpu", run.plans_name, ctx.device.type)


def write_metadata(run: TrainingRun, ctx: MethodContext, time_budget_minutes: float | None) -> None:
    """Phase 5b: ``fold_N/metadata.json`` (rank 0)."""
    entry = run.entry
    write_json(run.fold_dir / "metadata.json", {
        "method": run.method.name, "plugin": entry.plugin, "distribution": entry.distribution, "version": entry.version,
        "options": ckpt_io.options_dict(run.options), "dataset": run.dataset_name, "configuration": run.configuration,
        "plans_name": run.plans_name, "fold": run.fold, "epochs": ctx.num_epochs,
        "iterations_per_epoch": ctx.iterations_per_epoch, "seed": ctx.seed, "device": str(ctx.device),
        "torch_version": torch.__version__, "autosam_version": autosam.__version__,
        "python_version": platform.python_version(), "started": datetime.now().isoformat(timespec="seconds"),
        "world_size": ctx.world_size, "time_budget_minutes": time_budget_minutes,
    })


def free_device_memory(dev: torch.device) -> None:
    """Return what the training loop held to the device before the final validation."""
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
