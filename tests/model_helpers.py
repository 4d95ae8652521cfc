"""A tiny model folder (untrained ``unet`` with fold_0 and fold_1) and raw images to predict, for
the prediction, model-sharing and command tests (not a test module)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from autosam.io.image import ImageGeometry, write_image
from autosam.utils.files import write_json
from training_data import DATASET_JSON, NAME, make_case, tiny_plans, untrained_model

MODEL = "unet__autosamPlans__3d"


def tiny_model_folder(results_root: Path, folds=(0, 1), name: str = NAME) -> Path:
    """``results_root/<name>/unet__autosamPlans__3d`` with plans.json, dataset.json and one
    untrained (seeded, different per fold) ``checkpoint_final.pth`` per fold."""
    folder = Path(results_root) / name / MODEL
    plans = tiny_plans(features=(2, 4, 8))
    folder.mkdir(parents=True, exist_ok=True)
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", DATASET_JSON)
    for fold in folds:
        torch.manual_seed(100 + (fold if isinstance(fold, int) else 99))
        untrained_model(plans, folder)
        shutil.move(folder / "fold_all", folder / f"fold_{fold}")
    return folder


def write_images(folder: Path, n: int = 2, seed: int = 3, shape=(20, 36, 30)) -> list[Path]:
    """``n`` single-channel cases ``img_XXX_0000.nii.gz`` with a spacing other than the plans' (so
    that prediction resamples) and a zero border (so that it crops)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    geometry = ImageGeometry(spacing=(2.5, 1.2, 0.9), origin=(4.0, -3.0, 7.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                             shape=tuple(shape))
    written = []
    for i in range(n):
        img, _seg = make_case(rng, shape)
        img = img[0]
        img[:2] = 0
        img[:, :, -3:] = 0
        path = folder / f"img_{i:03d}_0000.nii.gz"
        write_image(path, img.astype(np.float32), geometry)
        written.append(path)
    return written
