"""Reuse one dataset's plans on another (nnU-Net's ``move_plans_between_datasets``), for example to
train on a target dataset with the architecture, patch size and spacing of a source dataset whose
weights it starts from (``autosam_train -pretrained_weights``).

Everything the source planned is kept (configurations, spacings, patch and batch sizes, networks,
normalisation schemes, the method sections and the source's foreground intensity statistics, which
CT normalisation uses), except what belongs to the target: ``dataset_name``, ``labels`` and
``channel_names`` (and ``regions_class_order`` of a region-based dataset) come from the target's
raw ``dataset.json``, and a new plans name renames the
preprocessed data folders (``data_identifier``) so that the two plans never share one.
"""
from __future__ import annotations

import logging
from pathlib import Path

from autosam import paths
from autosam.experiment_planning.plans import Plans
from autosam.io.dataset import dataset_name_from_id, load_dataset_json
from autosam.io.labels import LabelManager

logger = logging.getLogger(__name__)


def move_plans_between_datasets(source, target, source_plans_name: str, target_plans_name: str | None = None,
                                overwrite: bool = False) -> Path:
    """Write ``<preprocessed>/<target>/<target_plans_name>.json`` from the source's plans; returns it."""
    source_name, target_name = dataset_name_from_id(source), dataset_name_from_id(target)
    target_plans_name = target_plans_name or source_plans_name
    source_file = paths.preprocessed_dir() / source_name / f"{source_plans_name}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"{source_file}: source plans not found; run autosam_plan_experiment -d {source_name} first")
    target_dj_path = paths.raw_dir() / target_name / "dataset.json"
    target_dj = load_dataset_json(target_dj_path)
    target_file = paths.preprocessed_dir() / target_name / f"{target_plans_name}.json"
    if target_file.exists() and not overwrite:
        raise FileExistsError(f"{target_file}: plans of this name exist already; choose another -tp or --overwrite")
    plans = Plans.load(source_file)
    channels = {str(k): v for k, v in target_dj["channel_names"].items()}
    if len(channels) != plans.num_channels:
        raise ValueError(f"{target_dj_path}: {len(channels)} channel(s), the plans {source_file} are for "
                         f"{plans.num_channels}; plans move only between datasets with the same channels")
    if channels != plans.channel_names:
        logger.warning("channel names differ (source %s, target %s); the source's normalisation (%s) is kept",
                       plans.channel_names, channels,
                       sorted({s for c in plans.configurations.values() for s in c.normalization_schemes}))
    plans.dataset_name = target_name
    label_manager = LabelManager.from_dataset_json(target_dj, str(target_dj_path))
    plans.labels = label_manager.to_json()["labels"]
    plans.regions_class_order = label_manager.regions_class_order
    plans.channel_names = channels
    if target_plans_name != source_plans_name:
        for conf in plans.configurations.values():
            old = conf.data_identifier
            conf.data_identifier = (target_plans_name + old[len(source_plans_name):] if old.startswith(source_plans_name)
                                    else f"{target_plans_name}_{old}")
    plans.plans_name = target_plans_name
    plans.save(target_file)
    return target_file
