"""Facts about the results folder (``AUTOSAM_RESULTS``): where a trained model lives, which method won
``autosam_find_best_configuration``, and so which method ``-m auto`` means.

A trained model lives in ``<results>/DatasetXXX_Name/<method>__<plans>__<config>/``; the winner of
``autosam_find_best_configuration`` is recorded in ``<results>/DatasetXXX_Name/find_best_configuration.json``.
Prediction (:mod:`autosam.inference`) and the choice of the best model (:mod:`autosam.postprocessing.find_best`)
both read these facts from here, so that neither has to import the other.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from autosam import paths
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, Plans, normalize_configuration
from autosam.io.dataset import dataset_name_from_id
from autosam.utils.files import read_json

logger = logging.getLogger(__name__)
#: ``autosam_find_best_configuration``'s result in ``<results>/DatasetXXX_Name/`` (read by ``-m auto``).
RESULT_FILE = "find_best_configuration.json"


def model_folder_name(method: str, plans_name: str, configuration: str) -> str:
    return f"{method}__{plans_name}__{normalize_configuration(configuration)}"


def parse_model_folder_name(model_folder: Path) -> tuple[str, str, str]:
    """``(method, plans, configuration)`` of a folder named ``<method>__<plans>__<configuration>``."""
    parts = model_folder.name.split("__")
    if len(parts) != 3:
        raise ValueError(f"{model_folder}: model folders are named <method>__<plans>__<configuration>")
    return parts[0], parts[1], parts[2]


def find_model_folder(dataset: str | int, method: str, configuration: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """``<results>/DatasetXXX_Name/<method>__<plans>__<config>``; the error lists the trained models."""
    name = dataset_name_from_id(dataset)
    folder = paths.results_dir() / name / model_folder_name(method, plans_name, configuration)
    if not folder.is_dir():
        parent = paths.results_dir() / name
        found = sorted(p.name for p in parent.iterdir() if p.is_dir() and "__" in p.name) if parent.is_dir() else []
        raise FileNotFoundError(f"{folder}: no trained model here; trained models of {name}: {', '.join(found) or 'none'}")
    return folder


def first_existing(candidates: Sequence[Path]) -> Path | None:
    """The first of ``candidates`` that is a file, or None."""
    return next((p for p in candidates if p.is_file()), None)


def best_method_of(dataset_id, plans_name: str = DEFAULT_PLANS_NAME) -> tuple[str, str] | None:
    """(method, configuration) of the single-model winner of find_best_configuration, if it was run.
    For an ensemble winner, its first member."""
    dataset = dataset_name_from_id(dataset_id)
    f = paths.results_dir() / dataset / RESULT_FILE
    if not f.is_file():
        return None
    best = read_json(f)["best"]
    method, plans, config = best["members"][0].split("__")
    return (method, config) if plans == plans_name else None


def resolve_auto_method(dataset_id: str | int, plans_name: str = DEFAULT_PLANS_NAME, configuration: str | None = None) -> str:
    """``-m auto``: the winner of ``autosam_find_best_configuration`` for this configuration when it
    has been run (for an ensemble winner, its first member), else the plans' default method."""
    best = best_method_of(dataset_id, plans_name)
    if configuration is not None:
        configuration = normalize_configuration(configuration)
    if best is not None and (configuration is None or best[1] == configuration):
        logger.info("method 'auto': %r, the winner of autosam_find_best_configuration", best[0])
        return best[0]
    method = default_method_of(dataset_id, plans_name, configuration)
    logger.info("method 'auto': the plans' default method is %r", method)
    return method


def default_method_of(dataset_id: str | int, plans_name: str = DEFAULT_PLANS_NAME, configuration: str | None = None) -> str:
    """The plans' default method: from the preprocessed plans, else from a trained model's plans.json."""
    name = dataset_name_from_id(dataset_id)
    candidates = [paths.preprocessed_dir() / name / f"{plans_name}.json"]
    results = paths.results_dir() / name
    if results.is_dir():
        suffix = f"__{plans_name}__{normalize_configuration(configuration)}" if configuration else f"__{plans_name}__"
        candidates += sorted(p / "plans.json" for p in results.iterdir() if suffix in p.name)
    path = first_existing(candidates)
    if path is None:
        raise FileNotFoundError(f"{candidates[0]}: plans not found; '-m auto' reads the default method from the plans")
    return Plans.load(path).default_method
