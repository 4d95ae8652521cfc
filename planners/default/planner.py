"""The default experiment planner (nnU-Net's rules), registered as ``default``.

Configurations: ``2d`` and ``3d`` at the target spacing (they share one preprocessed copy), plus
``3d_lowres`` when the ``3d`` patch covers less than 25 % of the median image: its spacing grows
in 3 % steps (the finer axes first, until they reach the coarse one) until the patch covers at
least 25 % of the median image at that spacing. Rules: :mod:`autosam.experiment_planning.rules`
and :mod:`autosam.experiment_planning.topology`; method sections and the default method:
:mod:`autosam.experiment_planning.method_sections`. See ``documentation/planning.md``.
"""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from autosam import hookimpl
from autosam.experiment_planning import rules
from autosam.experiment_planning.fingerprint_types import DatasetFingerprint
from autosam.experiment_planning.method_sections import add_method_sections, choose_default_method
from autosam.experiment_planning.plans import (
    DEFAULT_PLANS_NAME,
    PLANS_SCHEMA_VERSION,
    ConfigurationPlan,
    Plans,
    ResamplingPlan,
)
from autosam.experiment_planning.topology import plan_patch_and_batch
from autosam.io.labels import LabelManager

logger = logging.getLogger(__name__)

ALL_CONFIGURATIONS = ("2d", "3d", "3d_lowres")
LOWRES_THRESHOLD = 0.25
LOWRES_SPACING_STEP = 1.03
LOWRES_MAX_STEPS = 400


class DefaultPlanner:
    name = "default"
    description = ("nnU-Net's rules: median/anisotropic target spacing, CT vs z-score, patch and batch from a GPU budget "
                   "(or a CPU compute budget)")

    def plan(
        self,
        fingerprint: DatasetFingerprint,
        dataset_json: dict,
        gpu_memory_gb: float = 8.0,
        plans_name: str | None = None,
        configurations: Iterable[str] | None = None,
        plugin_system=None,
        target: str = "gpu",
    ) -> Plans:
        """Plan every configuration (or only ``configurations``) and return typed plans.

        ``target``: ``"gpu"`` (nnU-Net's rules) or ``"cpu"`` (a CPU-sized network and patch, see
        :mod:`autosam.experiment_planning.topology`).
        """
        if plugin_system is None:
            from autosam.plugins import get_plugin_system

            plugin_system = get_plugin_system()
        wanted = tuple(configurations) if configurations else ALL_CONFIGURATIONS
        unknown = sorted(set(wanted) - set(ALL_CONFIGURATIONS))
        if unknown:
            raise ValueError(f"unknown configuration(s) {unknown}; the default planner knows {list(ALL_CONFIGURATIONS)}")
        if not fingerprint.spacings:
            raise ValueError("the fingerprint has no cases; cannot plan")
        plans_name = plans_name or DEFAULT_PLANS_NAME
        label_manager = LabelManager.from_dataset_json(dataset_json)
        channel_names = {str(k): str(v) for k, v in dataset_json["channel_names"].items()}
        n_channels = len(channel_names)
        n_classes = label_manager.num_segmentation_heads
        n_cases = len(fingerprint.spacings)

        schemes = [rules.normalization_for_channel(channel_names[str(c)]) for c in range(n_channels)]
        masks = [rules.use_mask_for_norm(s, fingerprint.median_relative_size_after_crop) for s in schemes]
        spacing = rules.target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop)
        median_shape = rules.median_shape_at_spacing(fingerprint.spacings, fingerprint.shapes_after_crop, spacing)
        resampling = ResamplingPlan(separate_z_anisotropy_threshold=rules.ANISOTROPY_THRESHOLD)

        def make(name: str, sp: list[float], med: list[int], n_samples: int = n_cases) -> ConfigurationPlan:
            pp = plan_patch_and_batch(sp, med, gpu_memory_gb, n_samples, n_channels, n_classes, target=target)
            return ConfigurationPlan(
                name=name, data_identifier="", spacing=[float(v) for v in sp], patch_size=pp.patch_size,
                batch_size=pp.batch_size, median_image_size_in_voxels=[int(v) for v in med],
                normalization_schemes=list(schemes), use_mask_for_norm=list(masks),
                resampling=ResamplingPlan(**vars(resampling)), network=pp.topology,
            )

        confs: dict[str, ConfigurationPlan] = {}
        full3d = make("3d", spacing, median_shape)
        if "2d" in wanted:
            # 2D samples are slices: the batch cap counts the dataset's slices
            conf2d = make("2d", spacing[1:], median_shape[1:], n_cases * median_shape[0])
            conf2d.spacing = list(spacing)  # preprocessed at the 3d spacing; the network sees (y, x)
            confs["2d"] = conf2d
        if "3d" in wanted:
            confs["3d"] = full3d
        if "3d_lowres" in wanted:
            lowres = self._plan_lowres(full3d, fingerprint, make)
            if lowres is not None:
                confs["3d_lowres"] = lowres
        assign_data_identifiers(confs, plans_name)

        plans = Plans(
            schema_version=PLANS_SCHEMA_VERSION,
            dataset_name=str(dataset_json.get("name", "")),
            plans_name=plans_name,
            planner=self.name,
            gpu_memory_target_gb=float(gpu_memory_gb),
            original_median_spacing=[float(v) for v in np.median(np.asarray(fingerprint.spacings), axis=0)],
            original_median_shape=[int(v) for v in np.median(np.asarray(fingerprint.shapes_after_crop), axis=0)],
            num_channels=n_channels,
            channel_names=channel_names,
            labels=label_manager.to_json()["labels"],
            regions_class_order=label_manager.regions_class_order,
            foreground_intensity_properties_per_channel={
                k: dict(vars(v)) if not isinstance(v, dict) else dict(v)
                for k, v in fingerprint.foreground_intensity_properties_per_channel.items()
            },
            configurations=confs,
            default_method="",
            default_method_rationale="",
            compute_target=target,
        )
        add_method_sections(plans, fingerprint, dataset_json, plugin_system)
        plans.default_method, plans.default_method_rationale, plans.method_votes = choose_default_method(
            fingerprint, dataset_json, plugin_system, target=target
        )
        return plans

    @staticmethod
    def _plan_lowres(full: ConfigurationPlan, fingerprint: DatasetFingerprint, make) -> ConfigurationPlan | None:
        coverage = float(np.prod(full.patch_size) / np.prod(full.median_image_size_in_voxels))
        if coverage >= LOWRES_THRESHOLD:
            return None
        sp = np.asarray(full.spacing, dtype=float)
        for _ in range(LOWRES_MAX_STEPS):
            coarse = sp.max()
            if np.any(sp < coarse):
                sp = np.where(sp < coarse, np.minimum(sp * LOWRES_SPACING_STEP, coarse), sp)
            else:
                sp = sp * LOWRES_SPACING_STEP
            med = rules.median_shape_at_spacing(fingerprint.spacings, fingerprint.shapes_after_crop, sp)
            conf = make("3d_lowres", [float(v) for v in sp], med)
            if np.prod(conf.patch_size) / np.prod(med) >= LOWRES_THRESHOLD:
                return conf
        logger.warning("3d_lowres: no spacing reached %.0f%% patch coverage; skipping it", LOWRES_THRESHOLD * 100)
        return None


def assign_data_identifiers(confs: dict[str, ConfigurationPlan], plans_name: str) -> None:
    """Configurations with identical spacing share one preprocessed folder ``<plans>_<names>``."""
    groups: dict[tuple, list[str]] = {}
    for name, conf in confs.items():
        groups.setdefault(tuple(round(v, 6) for v in conf.spacing), []).append(name)
    for names in groups.values():
        ident = f"{plans_name}_" + "_".join(names)
        for n in names:
            confs[n].data_identifier = ident


@hookimpl
def register_planners(register):
    register(DefaultPlanner())
