"""Small synthetic fingerprint/plans objects for plugin and documentation tests (not a test module)."""
from __future__ import annotations

from autosam.experiment_planning.fingerprint_types import (
    FINGERPRINT_SCHEMA_VERSION,
    ClassStats,
    DatasetFingerprint,
    IntensityStats,
)
from autosam.experiment_planning.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, Plans


def synthetic_fingerprint() -> DatasetFingerprint:
    """Three cases, two classes: one large single structure, one with many tiny components."""

    def cls(label, comps, frac):
        return ClassStats(label=label, name=f"c{label}", cases_present=3, volume_fraction=frac, components_per_case=comps,
                          component_volume_mm3=50.0, bbox_extent_mm=[20.0, 30.0, 30.0], slices_spanned=8,
                          per_case_components=[int(comps)] * 3)

    return DatasetFingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION, case_identifiers=["a", "b", "c"], spacings=[[2.0, 1.0, 1.0]] * 3,
        shapes_before_crop=[[40, 64, 64]] * 3, shapes_after_crop=[[36, 60, 60]] * 3, median_relative_size_after_crop=0.9,
        foreground_intensity_properties_per_channel={"0": IntensityStats(
            mean=60.0, median=55.0, std=40.0, min=-200.0, max=400.0, percentile_00_5=-80.0, percentile_99_5=250.0)},
        class_statistics={"1": cls(1, 1, 0.05), "2": cls(2, 12, 1e-4)},
        num_labelled_cases=3,
    )


def synthetic_configuration(patch_size=(32, 64, 64), batch_size=2) -> ConfigurationPlan:
    dims = len(patch_size)
    return ConfigurationPlan(
        name="3d" if dims == 3 else "2d", data_identifier="x", spacing=[2.0, 1.0, 1.0][-dims:], patch_size=list(patch_size),
        batch_size=batch_size, median_image_size_in_voxels=[36, 60, 60][-dims:], normalization_schemes=["CTNormalization"],
        use_mask_for_norm=[False],
    )


def synthetic_plans(patch_size=(32, 64, 64), batch_size=2) -> Plans:
    cfg = synthetic_configuration(patch_size, batch_size)
    return Plans(
        schema_version=PLANS_SCHEMA_VERSION, dataset_name="Dataset999_Example", plans_name="autosamPlans",
        planner="default", gpu_memory_target_gb=8, original_median_spacing=[2.0, 1.0, 1.0],
        original_median_shape=[36, 60, 60], num_channels=1, channel_names={"0": "CT"},
        labels={"background": 0, "c1": 1, "c2": 2}, foreground_intensity_properties_per_channel={},
        configurations={cfg.name: cfg}, default_method="unet", default_method_rationale="",
    )


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "c1": 1, "c2": 2}, "numTraining": 3,
                "file_ending": ".nii.gz"}
