"""Loading a trained model: the folds' checkpoints, the networks built from the plans, the method.

A trained model lives in ``<results>/DatasetXXX_Name/<method>__<plans>__<config>/`` with
``fold_N/checkpoint_{final,best,latest}.pth`` (written by :mod:`autosam.training.checkpoint`) and,
ideally, copies of ``plans.json`` and ``dataset.json`` (otherwise they are read from the
preprocessed folder). The method is looked up by the name recorded in the checkpoint; a missing
plugin is reported with the package to install.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from autosam import paths
from autosam.experiment_planning.plans import ConfigurationPlan, Plans
from autosam.method import Method, MethodContext, check_label_support
from autosam.results_folder import first_existing, parse_model_folder_name
from autosam.training.checkpoint import load_checkpoint, method_entry_for_checkpoint, strip_compile_prefix, unwrap
from autosam.training.run_support import pick_device
from autosam.utils.files import read_json

CHECKPOINT_CHOICES = ("final", "best", "latest")


@dataclass
class FoldModel:
    """One fold's network and the method state saved with it."""

    fold: int | str
    network: nn.Module
    method_state: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    epoch: int | None = None


@dataclass
class TrainedModel:
    """Everything needed to predict with the folds of one trained model."""

    method: Method
    ctx: MethodContext
    folds: list[FoldModel]
    plans: Plans
    configuration: ConfigurationPlan
    dataset_json: dict
    model_folder: Path


def checkpoint_file_name(checkpoint: str) -> str:
    """``final``/``best``/``latest`` or a checkpoint file name (nnU-Net's ``-chk checkpoint_final.pth``)
    -> the file name in ``fold_N/``."""
    if checkpoint in CHECKPOINT_CHOICES:
        return f"checkpoint_{checkpoint}.pth"
    if not checkpoint or Path(checkpoint).name != checkpoint or not checkpoint.endswith(".pth"):
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)} or a file name in fold_N/ "
                         f"ending in .pth (e.g. checkpoint_best.pth), got {checkpoint!r}")
    return checkpoint


def folds_with_checkpoint(model_folder: str | Path, checkpoint: str = "final") -> list[int | str]:
    """The folds of ``model_folder`` that have the checkpoint (``fold_0``.. in order; ``all`` only
    when no numbered fold has it): the default fold ensemble of ``autosam_predict``. An error
    lists what the folds do have when none has it."""
    model_folder = Path(model_folder)
    name = checkpoint_file_name(checkpoint)
    numbered = sorted((int(p.name[5:]) for p in model_folder.glob("fold_*") if p.name[5:].isdigit()))
    folds: list[int | str] = [f for f in numbered if (model_folder / f"fold_{f}" / name).is_file()]
    if not folds and (model_folder / "fold_all" / name).is_file():
        folds = ["all"]
    if not folds:
        have = sorted(f"{p.parent.name}/{p.name}" for p in model_folder.glob("fold_*/checkpoint_*.pth"))
        raise FileNotFoundError(f"{model_folder}: no fold has {name}" + (f"; found: {', '.join(have)}" if have
                                                                         else " (no fold is trained)"))
    return folds


def load_plans_and_dataset_json(model_folder: Path, plans_name: str) -> tuple[Plans, dict]:
    """The model folder's ``plans.json`` and ``dataset.json``; for a model folder without them, the
    dataset's plans and dataset.json in the preprocessed (or raw) folder."""
    dataset_name = model_folder.parent.name
    plans_path = first_existing([model_folder / "plans.json"]) or first_existing(
        [paths.preprocessed_dir() / dataset_name / f"{plans_name}.json"])
    if plans_path is None:
        raise FileNotFoundError(f"{model_folder}: no plans.json, and no {plans_name}.json in the preprocessed folder of {dataset_name}")
    dj_path = first_existing([model_folder / "dataset.json"]) or first_existing(
        [paths.preprocessed_dir() / dataset_name / "dataset.json", paths.raw_dir() / dataset_name / "dataset.json"])
    if dj_path is None:
        raise FileNotFoundError(f"{model_folder}: no dataset.json here nor in the preprocessed/raw folders of {dataset_name}")
    return Plans.load(plans_path), read_json(dj_path)


def load_trained_model(model_folder: str | Path, folds: Sequence[int | str] = (0,), checkpoint: str = "final",
                       device: str | torch.device | None = None, method_overrides: dict | None = None) -> TrainedModel:
    """Load the networks of ``folds`` (``0``.. or ``"all"``) from ``checkpoint_<checkpoint>.pth``
    (``checkpoint``: final, best, latest, or a file name such as ``checkpoint_best.pth``)."""
    model_folder = Path(model_folder).resolve()  # "." names no model: its resolved name does
    checkpoint_name = checkpoint_file_name(checkpoint)
    if not folds:
        raise ValueError("give at least one fold")
    _, plans_name, configuration_name = parse_model_folder_name(model_folder)
    device = pick_device(device)  # None: the best available device, as the command line
    if device.type == "cpu":
        from autosam.utils.cpu_allocator import tune_cpu_allocator

        tune_cpu_allocator()
    plans, dataset_json = load_plans_and_dataset_json(model_folder, plans_name)
    configuration = plans.configuration(configuration_name)

    method: Method | None = None
    ctx: MethodContext | None = None
    fold_models: list[FoldModel] = []
    for fold in folds:
        fold_dir = model_folder / f"fold_{fold}"
        path = fold_dir / checkpoint_name
        if not path.is_file():
            available = sorted(p.name for p in fold_dir.glob("checkpoint_*.pth")) if fold_dir.is_dir() else []
            raise FileNotFoundError(f"{path}: checkpoint not found" + (f"; available: {', '.join(available)}" if available
                                                                        else f" (is fold {fold} trained?)"))
        ckpt = load_checkpoint(path, map_location="cpu")
        entry = method_entry_for_checkpoint(ckpt, path)
        if method is None:
            method = entry.obj
            check_label_support(method, plans.label_manager, str(model_folder))  # before anything is written
            # the checkpoint's options are what was trained; command-line overrides go on top
            options = method.make_options(ckpt.get("options") or {}, method_overrides or {})
            ctx = MethodContext(plans=plans, configuration=configuration, dataset_json=dataset_json, options=options,
                                device=device, num_input_channels=plans.num_channels, num_classes=plans.num_classes,
                                fold=fold, output_folder=None)
        elif entry.obj.name != method.name:
            raise ValueError(f"{path}: fold {fold} was trained with method {entry.obj.name!r}, fold {fold_models[0].fold} "
                             f"with {method.name!r}")
        network = method.build_network(ctx)
        try:
            unwrap(network).load_state_dict(strip_compile_prefix(ckpt["network"]))
        except RuntimeError as exc:
            detail = " ".join(str(exc).split()).replace(f"Error(s) in loading state_dict for {type(network).__name__}: ", "")
            raise ValueError(f"{path}: weights do not fit the network built from the plans and options "
                             f"({detail[:400]}{' ...' if len(detail) > 400 else ''})") from None
        network.to(device).eval()
        fold_models.append(FoldModel(fold, network, ckpt.get("method_state") or {}, path, ckpt.get("epoch")))
        del ckpt
    assert method is not None and ctx is not None
    return TrainedModel(method, ctx, fold_models, plans, configuration, dataset_json, model_folder)
