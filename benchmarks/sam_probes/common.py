"""Shared pieces of the SAM probes: a method built as ``autosam_train`` builds it (plans section,
options, context) on a preprocessed dataset, outside the trainer, so that a probe can look at what
enters the encoder or train for a few iterations and score a few cases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from autosam import paths
from autosam.experiment_planning.plans import Plans
from autosam.method import MethodContext
from autosam.plugins import get_plugin_system
from autosam.training.dataloading import PreprocessedDataset
from autosam.io.dataset import dataset_name_from_id


def load_setup(dataset_id, method_name: str, overrides: dict | None = None, configuration: str = "3d",
               plans_name: str = "autosamPlans", fold: int = 0, device: str = "cpu", epochs: int = 1,
               iters_per_epoch: int = 1):
    """(method, ctx, dataset, train_keys, val_keys) for ``method_name`` on the preprocessed dataset."""
    name = dataset_name_from_id(dataset_id)
    pre = paths.preprocessed_dir() / name
    plans = Plans.load(pre / f"{plans_name}.json")
    config = plans.configuration(configuration)
    method = get_plugin_system().methods.entry(method_name).obj
    options = method.make_options(config.methods.get(method.name), overrides or {})
    ds = PreprocessedDataset(pre / config.data_identifier)
    splits = json.loads((pre / "splits_final.json").read_text())
    ctx = MethodContext(plans=plans, configuration=config, dataset_json=json.loads((pre / "dataset.json").read_text()),
                        options=options, device=torch.device(device), num_input_channels=plans.num_channels,
                        num_classes=plans.num_classes, num_epochs=epochs, iterations_per_epoch=iters_per_epoch,
                        fold=fold, extra={"num_workers": 0, "training": True})
    return method, ctx, ds, splits[fold]["train"], splits[fold]["val"]


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice of labels 1..K-1 (NaN when a label is absent from both)."""
    out = []
    for k in range(1, num_classes):
        p, r = pred == k, ref == k
        d = p.sum() + r.sum()
        out.append(float(2 * (p & r).sum() / d) if d else float("nan"))
    return out


def stats(x: torch.Tensor) -> dict:
    x = x.detach().float()
    q = torch.quantile(x.flatten()[:: max(1, x.numel() // 200000)], torch.tensor([0.01, 0.5, 0.99]))
    return {"shape": list(x.shape), "min": round(float(x.min()), 3), "p01": round(float(q[0]), 3),
            "median": round(float(q[1]), 3), "p99": round(float(q[2]), 3), "max": round(float(x.max()), 3),
            "mean": round(float(x.mean()), 3), "std": round(float(x.std()), 3)}


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
