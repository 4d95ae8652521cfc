"""Plan an experiment: fingerprint + dataset.json -> ``<preprocessed>/DatasetXXX/<plans_name>.json``."""
from __future__ import annotations

import logging
from pathlib import Path

from autosam import paths
from autosam.experiment_planning.fingerprint_types import DatasetFingerprint
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, Plans, normalize_configuration
from autosam.io.dataset import DatasetError, dataset_name_from_id, load_dataset_json
from autosam.utils.files import write_json
from autosam.utils.locks import lock_folder

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"


def default_plans_name(planner: str) -> str:
    """``autosamPlans`` for the default planner, ``<planner>Plans`` for any other."""
    return DEFAULT_PLANS_NAME if planner == "default" else f"{planner}Plans"


def plans_path(dataset_name: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    return paths.preprocessed_dir() / dataset_name / f"{plans_name}.json"


def load_plans(dataset_id: int | str, plans_name: str = DEFAULT_PLANS_NAME) -> Plans:
    """Load the plans of a dataset; a missing file names the command that writes it."""
    name = dataset_name_from_id(dataset_id)
    path = plans_path(name, plans_name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no plans {plans_name!r} for {name}; run autosam_plan_experiment -d {name}")
    return Plans.load(path)


def _may_have_accelerator() -> bool:
    """False only when this machine certainly has no CUDA device and no Apple GPU: Linux without
    an NVIDIA (or ROCm) device node or driver entry."""
    import glob
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return True  # macOS (MPS), Windows: let torch tell
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd"))


def resolve_compute_target(target: str = "auto") -> str:
    """``"gpu"`` or ``"cpu"``; ``"auto"`` is ``"gpu"`` when CUDA or MPS is available here, else ``"cpu"``."""
    if target in ("gpu", "cpu"):
        return target
    if target != "auto":
        raise ValueError(f"compute target {target!r}: expected auto, gpu or cpu")
    if not _may_have_accelerator():  # answered without importing torch (seconds of start-up)
        return "cpu"
    import torch

    mps = getattr(torch.backends, "mps", None)
    return "gpu" if torch.cuda.is_available() or (mps is not None and mps.is_available()) else "cpu"


def plan_experiment(
    dataset_id: int | str,
    planner: str = "default",
    gpu_memory_gb: float = 8,
    plans_name: str | None = None,
    configurations=None,
    plugin_system=None,
    target: str = "auto",
) -> Plans:
    """Run the planner ``planner`` on the dataset's fingerprint and write its plans file.

    ``target``: plan for a ``"gpu"`` (nnU-Net's rules, ``gpu_memory_gb``) or a ``"cpu"`` (a
    CPU-sized network and patch); ``"auto"`` picks ``"gpu"`` when this machine has CUDA or MPS.
    A planner whose ``plan`` takes no ``target`` argument always plans its own way.

    Needs ``dataset_fingerprint.json`` in the preprocessed folder (``autosam_extract_fingerprint``).
    ``-pl NAME`` (``planner``) writes ``<NAME>Plans.json`` unless ``plans_name`` is given, so plans of
    different planners live side by side.
    """
    if plugin_system is None:
        from autosam.plugins import get_plugin_system

        plugin_system = get_plugin_system()
    name = dataset_name_from_id(dataset_id, [paths.raw_dir(), paths.preprocessed_dir()])
    pre = paths.preprocessed_dir() / name
    fp_file = pre / FINGERPRINT_FILE
    if not fp_file.is_file():
        raise DatasetError(f"{fp_file}: fingerprint missing; run autosam_extract_fingerprint -d {name} first")
    fingerprint = DatasetFingerprint.load(fp_file)
    raw_json = paths.raw_dir() / name / "dataset.json"
    dataset_json = load_dataset_json(raw_json if raw_json.is_file() else pre / "dataset.json")
    planner_obj = plugin_system.planners.get(planner)
    plans_name = plans_name or default_plans_name(planner)
    extra = {}
    if _accepts(planner_obj.plan, "plugin_system"):
        extra["plugin_system"] = plugin_system
    if _accepts(planner_obj.plan, "target"):
        extra["target"] = resolve_compute_target(target)
        if target == "auto":
            logger.info("planning for the %s (%s); use --target gpu|cpu to choose", extra["target"].upper(),
                        "a GPU is available" if extra["target"] == "gpu" else "no GPU found on this machine")
    if configurations is not None:
        configurations = [normalize_configuration(c) for c in configurations]
    plans = planner_obj.plan(
        fingerprint=fingerprint, dataset_json=dataset_json, gpu_memory_gb=gpu_memory_gb, plans_name=plans_name,
        configurations=configurations, **extra,
    )
    if not isinstance(plans, Plans):
        raise TypeError(f"planner {planner!r} returned {type(plans).__name__}; expected autosam.experiment_planning.plans.Plans")
    plans.dataset_name = name
    plans.plans_name = plans_name
    with lock_folder(pre, "preprocessed dataset folder"):  # one process writes it at a time
        out = plans_path(name, plans_name)
        write_json(pre / "dataset.json", dataset_json)
        plans.save(out)
    for cname, conf in plans.configurations.items():
        logger.info("%s: spacing %s, patch %s, batch %d, data %s, methods %s", cname, conf.spacing, conf.patch_size,
                    conf.batch_size, conf.data_identifier, sorted(conf.methods))
    logger.info("default method %s (%s); wrote %s", plans.default_method, plans.default_method_rationale, out)
    return plans


def _accepts(fn, arg: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
