"""``plan_and_preprocess``: fingerprint -> plans -> preprocessed data, as one call."""
from __future__ import annotations

import logging
from typing import Iterable

from autosam.experiment_planning.plans import Plans

logger = logging.getLogger(__name__)


def plan_and_preprocess(dataset_id: int | str, num_processes: int = 2, planner: str = "default",
                        configurations: Iterable[str] | None = None, verify: bool = False,
                        gpu_memory_gb: float = 8, plans_name: str | None = None, progress: bool = False,
                        target: str = "auto", preprocess: bool = True, clean: bool = False,
                        num_processes_fingerprint: int | None = None,
                        undeclared_labels_to_background: bool = False) -> Plans:
    """Extract the fingerprint (reused when up to date), plan with ``planner``, preprocess.

    ``configurations=None`` preprocesses every configuration of the plans (``2d``, ``3d`` and
    ``3d_lowres`` when planned; on a CPU target ``3d_lowres`` only on request). With ``verify`` the dataset's integrity is checked first and a
    broken dataset stops the run before anything is written. ``target`` (``auto``, ``gpu``,
    ``cpu``): the hardware the plans are sized for (see :func:`~autosam.experiment_planning.planning.plan_experiment`).
    ``preprocess=False`` stops after planning; ``clean`` recomputes the fingerprint even when up to
    date; ``num_processes_fingerprint`` (default ``num_processes``) sets the fingerprint's workers.
    Label values that ``dataset.json`` does not declare stop the run before anything is written,
    unless ``undeclared_labels_to_background`` maps them to background (0).
    """
    from autosam.experiment_planning.fingerprint import extract_fingerprint
    from autosam.experiment_planning.planning import plan_experiment
    from autosam.preprocessing.preprocessor import preprocess_dataset

    from autosam import paths
    from autosam.experiment_planning.fingerprint import FINGERPRINT_FILE
    from autosam.io.dataset import dataset_name_from_id

    fingerprint_file = paths.preprocessed_dir() / dataset_name_from_id(dataset_id) / FINGERPRINT_FILE
    before = fingerprint_file.stat().st_mtime_ns if fingerprint_file.is_file() else None
    extract_fingerprint(dataset_id, num_processes=num_processes_fingerprint or num_processes, verify=verify,
                        overwrite=clean, progress=progress,
                        undeclared_labels_to_background=undeclared_labels_to_background)
    # a fingerprint computed just now has read every label file and refused undeclared values:
    # preprocessing need not read them all once more to check the same thing
    labels_checked = fingerprint_file.is_file() and fingerprint_file.stat().st_mtime_ns != before
    plans = plan_experiment(dataset_id, planner=planner, gpu_memory_gb=gpu_memory_gb, plans_name=plans_name,
                            target=target)
    if not preprocess:
        return plans
    if configurations is None and getattr(plans, "compute_target", "gpu") == "cpu" and "3d_lowres" in plans.configurations:
        # a CPU patch is small, so 3d_lowres is planned for most datasets; its cascade doubles the
        # training that a CPU user rarely runs: planned, preprocessed on request
        configurations = [c for c in plans.configurations if c != "3d_lowres"]
        logger.info("3d_lowres is planned but not preprocessed on a CPU target (its cascade doubles training time); "
                    "autosam_preprocess -d %s -c 3d_lowres preprocesses it", dataset_id)
    preprocess_dataset(dataset_id, plans_name=plans.plans_name, configurations=configurations,
                       num_processes=num_processes, progress=progress,
                       undeclared_labels_to_background=undeclared_labels_to_background,
                       labels_checked=labels_checked)
    return plans
