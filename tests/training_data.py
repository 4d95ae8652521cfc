"""A tiny synthetic *preprocessed* dataset (plans, splits, cases, ground truth) for trainer tests
that must not depend on the planner/preprocessor (not a test module)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autosam.experiment_planning.plans import PLANS_SCHEMA_VERSION, ConfigurationPlan, NetworkTopology, Plans
from autosam.io.image import ImageGeometry, write_image
from autosam.preprocessing.storage import save_case
from autosam.utils.files import write_json

NAME = "Dataset990_Tiny"
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "ball": 1, "bar": 2}, "numTraining": 6,
                "file_ending": ".nii.gz"}


def tiny_plans(patch=(16, 32, 32), batch_size=2, features=(4, 8, 16), dataset_json: dict | None = None) -> Plans:
    dataset_json = dataset_json or DATASET_JSON
    topo = NetworkTopology(n_stages=3, features_per_stage=list(features), kernel_sizes=[[3, 3, 3]] * 3,
                           strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage_encoder=[1, 1, 1],
                           n_conv_per_stage_decoder=[1, 1])
    cfg = ConfigurationPlan(name="3d", data_identifier="autosamPlans_3d", spacing=[2.0, 1.0, 1.0], patch_size=list(patch),
                            batch_size=batch_size, median_image_size_in_voxels=[24, 40, 40],
                            normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[False], network=topo)
    return Plans(schema_version=PLANS_SCHEMA_VERSION, dataset_name=NAME, plans_name="autosamPlans", planner="default",
                 gpu_memory_target_gb=8, original_median_spacing=[2.0, 1.0, 1.0], original_median_shape=[24, 40, 40],
                 num_channels=1, channel_names={"0": "CT"}, labels=dataset_json["labels"],
                 foreground_intensity_properties_per_channel={}, configurations={"3d": cfg}, default_method="unet",
                 default_method_rationale="baseline", regions_class_order=dataset_json.get("regions_class_order"))


def make_case(rng: np.random.Generator, shape=(24, 40, 40)):
    """A noisy image with a bright ball (label 1) and a dark bar (label 2)."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [rng.integers(6, s - 6) for s in shape]
    seg = np.zeros(shape, np.int16)
    seg[((z - c[0]) * 2) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < rng.integers(25, 50)] = 1
    y0 = rng.integers(2, shape[1] - 8)
    seg[2:-2, y0:y0 + 4, 3:7] = 2
    img = rng.normal(0, 0.3, shape).astype(np.float32) + 2.0 * (seg == 1) - 2.0 * (seg == 2)
    return img[None], seg[None]


def make_tiny_preprocessed(pre_root: Path, raw_root: Path | None = None, num_cases: int = 6, seed: int = 0,
                           shape=(24, 40, 40), patch=(16, 32, 32), features=(4, 8, 16), dataset_json: dict | None = None,
                           annotate=None) -> Path:
    """Write plans, dataset.json, splits (2 folds), cases with properties and gt_segmentations.

    ``dataset_json``: another one than :data:`DATASET_JSON` (e.g. regions over the labels 1 and 2).
    ``annotate``: a function of the full label map (Z x Y x X) returning the stored one (e.g. with
    unannotated voxels set to an ignore label)."""
    rng = np.random.default_rng(seed)
    folder = Path(pre_root) / NAME
    dataset_json = dataset_json or DATASET_JSON
    plans = tiny_plans(patch, features=features, dataset_json=dataset_json)
    folder.mkdir(parents=True, exist_ok=True)
    plans.save(folder / "autosamPlans.json")
    write_json(folder / "dataset.json", dataset_json)
    keys = [f"case_{i:03d}" for i in range(num_cases)]
    half = num_cases // 2
    write_json(folder / "splits_final.json", [{"train": keys[half:], "val": keys[:half]},
                                              {"train": keys[:half], "val": keys[half:]}])
    geometry = ImageGeometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                             shape=tuple(shape))
    for key in keys:
        img, seg = make_case(rng, shape)
        if annotate is not None:
            seg = np.asarray(annotate(seg[0]), dtype=np.int16)[None]
        locs = {str(c): np.argwhere(seg[0] == c)[::7].tolist() for c in (1, 2)}
        props = {"geometry": geometry.to_dict(), "shape_before_cropping": list(shape),
                 "bbox_used_for_cropping": [[0, s] for s in shape], "shape_after_cropping_and_before_resampling": list(shape),
                 "spacing": [2.0, 1.0, 1.0], "class_locations": locs}
        save_case(folder / "autosamPlans_3d", key, img, seg, props)
        write_image(folder / "gt_segmentations" / f"{key}.nii.gz", seg[0].astype(np.uint8), geometry)
    if raw_root is not None:
        (Path(raw_root) / NAME).mkdir(parents=True, exist_ok=True)
        write_json(Path(raw_root) / NAME / "dataset.json", dataset_json)
    return folder


def untrained_model(plans, folder: Path, method: str = "unet", overrides: dict | None = None) -> None:
    """``folder/fold_all/checkpoint_final.pth`` of ``method`` with its initial weights: enough to
    check what prediction does with geometry and prompts, without training."""
    import torch

    from autosam.plugins import get_plugin_system
    from autosam.training.checkpoint import save_checkpoint
    from autosam.training.method import MethodContext

    entry = get_plugin_system().methods.entry(method)
    cfg = plans.configuration("3d")
    options = entry.obj.make_options(cfg.methods.get(method, {}), overrides or {})
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=options, device=torch.device("cpu"),
                        num_input_channels=plans.num_channels, num_classes=plans.num_classes)
    save_checkpoint(folder / "fold_all" / "checkpoint_final.pth", method_entry=entry, options=options,
                    network=entry.obj.build_network(ctx), epoch=0, num_epochs=0, configuration="3d", plans_name="autosamPlans")
