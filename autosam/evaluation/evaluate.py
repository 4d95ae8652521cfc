"""Evaluate a folder of predicted label maps against reference label maps (``summary.json``).

The layout is nnU-Net's ``summary.json``::

    {"metric_per_case": [{"reference_file": ..., "prediction_file": ...,
                          "metrics": {"1": {"Dice": ..., "IoU": ..., "HD95": ..., "TP": ..., ...}}}],
     "mean": {"1": {...}, "2": {...}},
     "foreground_mean": {"Dice": ..., ...},
     ...}

Every prediction file (named like its reference, ending with the dataset's ``file_ending``) is
evaluated; a prediction without reference is an error. References without prediction are listed
under ``"references_without_prediction"`` (an error with ``strict=True``).

Region-based datasets are scored per region (keys ``"(1, 2, 3)"``, as nnU-Net): a region's Dice
compares the union of its labels in the reference and in the prediction. Voxels whose reference
has the ``ignore`` label count in no metric (both masks are cleared there, TN excludes them);
``autosam_evaluate_simple -il`` names such a label without a dataset.json.

Undefined values: Dice/IoU of a label absent from both masks are NaN (written as ``NaN`` like
nnU-Net does) and left out of the means. An infinite HD95 (label in exactly one of the two masks)
is written as ``null`` with ``"HD95_infinite": true``; the means of HD95 are over the finite values
and ``"HD95_n_infinite"`` counts the cases (the case-label pairs in ``foreground_mean``) left out.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autosam.evaluation.metrics import case_metrics
from autosam.io.labels import LabelManager, metric_key
from autosam.io.image import read_label
from autosam.utils.files import read_json, write_json
from autosam.utils.processes import pool_initializer

logger = logging.getLogger(__name__)

COUNT_METRICS = ("TP", "FP", "FN", "TN", "n_ref", "n_pred")


def foreground_labels(dataset_json: dict) -> list[int | tuple[int, ...]]:
    """What to evaluate: the foreground regions of a region-based dataset (tuples of label values),
    else every label but background (0) and ``ignore``."""
    return LabelManager.from_dataset_json(dataset_json).evaluation_keys


def evaluate_case(reference_file: str | Path, prediction_file: str | Path, labels: Sequence[int | tuple[int, ...]],
                  compute_hd95: bool = True, ignore_label: int | None = None) -> dict:
    """Metrics of one case; both files are read as label maps (:func:`autosam.io.image.read_label`:
    a value that is not a whole number is an error naming the file) and must have the same shape and spacing."""
    ref, ref_geom = read_label(reference_file)
    pred, pred_geom = read_label(prediction_file)
    if ref.shape != pred.shape:
        raise ValueError(f"{prediction_file}: shape {pred.shape} differs from the reference {reference_file} {ref.shape}")
    if not np.allclose(ref_geom.spacing, pred_geom.spacing, rtol=1e-3, atol=1e-4):
        raise ValueError(f"{prediction_file}: spacing {pred_geom.spacing} differs from the reference {reference_file} {ref_geom.spacing}")
    metrics = case_metrics(ref, pred, labels, ref_geom.spacing, compute_hd95, ignore_label)
    return {"reference_file": str(reference_file), "prediction_file": str(prediction_file), "metrics": metrics}


def _evaluate_case_args(args: tuple) -> dict:
    return evaluate_case(*args)


def aggregate(per_case: list[dict], labels: Sequence[int | tuple[int, ...]]) -> tuple[dict, dict]:
    """``mean`` per label or region (NaN Dice/IoU and infinite HD95 left out) and ``foreground_mean``."""
    keys = [metric_key(lab) for lab in labels]
    mean: dict[str, dict] = {}
    for key in keys:
        values = [case["metrics"][key] for case in per_case]
        entry: dict = {}
        for metric in ("Dice", "IoU"):
            entry[metric] = _nanmean([v[metric] for v in values])
        if values and "HD95" in values[0]:
            hd = [v["HD95"] for v in values]
            entry["HD95"] = _nanmean([h for h in hd if math.isfinite(h)])
            entry["HD95_n_infinite"] = sum(1 for h in hd if not math.isfinite(h))
        for metric in COUNT_METRICS:
            entry[metric] = float(np.mean([v[metric] for v in values])) if values else math.nan
        mean[key] = entry
    foreground: dict = {}
    if mean:
        metrics = list(next(iter(mean.values())))
        for metric in metrics:
            if metric == "HD95_n_infinite":
                continue
            vals = [mean[k][metric] for k in keys]
            if metric == "HD95":
                foreground["HD95"] = _nanmean([v for v in vals if math.isfinite(v)])
                foreground["HD95_n_infinite"] = sum(mean[k]["HD95_n_infinite"] for k in keys)
            else:
                foreground[metric] = _nanmean(vals)
    return mean, foreground


def evaluate_folder(ref_dir: str | Path, pred_dir: str | Path, dataset_json_path: str | Path,
                    output_file: str | Path | None = None, num_processes: int = 1, *, strict: bool = False,
                    compute_hd95: bool = True, progress: Callable[[int, int], None] | None = None,
                    cases: Sequence[str] | None = None) -> dict:
    """Evaluate every prediction in ``pred_dir`` against ``ref_dir``; return the summary dict and
    write it atomically to ``output_file`` when given (JSON; infinite HD95 as ``null`` + flag).
    Labels (or regions), the ignore label and the file ending come from ``dataset_json_path``.

    ``cases``: evaluate these case identifiers only (a fold's validation cases): other files of
    either folder are left alone, a case without a reference is an error, and a case without a
    prediction is warned about (an error with ``strict``). Without ``cases`` every prediction is
    evaluated and references without a prediction are only counted (logged at INFO)."""
    dataset_json = read_json(dataset_json_path)
    if "labels" not in dataset_json or "file_ending" not in dataset_json:
        raise ValueError(f"{dataset_json_path}: needs 'labels' and 'file_ending'")
    label_manager = LabelManager.from_dataset_json(dataset_json, str(dataset_json_path))
    labels = label_manager.evaluation_keys
    return evaluate_folder_labels(ref_dir, pred_dir, labels, dataset_json["file_ending"], output_file, num_processes,
                                  strict=strict, compute_hd95=compute_hd95, progress=progress,
                                  ignore_label=label_manager.ignore_label,
                                  label_names=dict(zip(labels, label_manager.output_names)), cases=cases)


def evaluate_folder_labels(ref_dir: str | Path, pred_dir: str | Path, labels: Sequence[int | tuple[int, ...]],
                           file_ending: str = ".nii.gz", output_file: str | Path | None = None, num_processes: int = 1,
                           *, strict: bool = False, compute_hd95: bool = True,
                           progress: Callable[[int, int], None] | None = None, ignore_label: int | None = None,
                           label_names: dict | None = None, cases: Sequence[str] | None = None) -> dict:
    """:func:`evaluate_folder` with the labels given directly (no dataset.json): ``labels`` are the
    label values (or regions, tuples of values) to evaluate, ``ignore_label`` a reference value
    whose voxels count in no metric, ``label_names`` names for the summary (default: the keys),
    ``cases`` as in :func:`evaluate_folder`."""
    ref_dir, pred_dir, ending = Path(ref_dir), Path(pred_dir), file_ending
    labels = [tuple(int(v) for v in lab) if isinstance(lab, (tuple, list)) else int(lab) for lab in labels]
    if not labels:
        raise ValueError("give at least one label to evaluate")
    if ignore_label is not None and ignore_label in labels:
        raise ValueError(f"label {ignore_label} is both evaluated and the ignore label")
    for folder, what in ((ref_dir, "reference"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: {what} folder does not exist")
    predictions = sorted(p for p in pred_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    references = {p.name for p in ref_dir.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")}
    if cases is not None:
        wanted = {f"{c}{ending}" for c in cases}
        no_reference = sorted(wanted - references)
        if no_reference:
            raise FileNotFoundError(f"{ref_dir / no_reference[0]}: reference not found"
                                    + (f" (and {len(no_reference) - 1} more)" if len(no_reference) > 1 else ""))
        predictions = [p for p in predictions if p.name in wanted]
        references = wanted
    if not predictions:
        raise ValueError(f"{pred_dir}: no prediction files ending with {ending!r}"
                         + (f" for the {len(cases)} case(s) asked for" if cases is not None else ""))
    missing_ref = [p for p in predictions if p.name not in references]
    if missing_ref:
        raise FileNotFoundError(f"{missing_ref[0]}: no reference {ref_dir / missing_ref[0].name}"
                                + (f" (and {len(missing_ref) - 1} more)" if len(missing_ref) > 1 else ""))
    unpredicted = sorted(references - {p.name for p in predictions})
    if unpredicted:
        if strict:
            raise FileNotFoundError(f"{pred_dir}: no prediction for {len(unpredicted)} reference(s), e.g. {unpredicted[0]}")
        if cases is not None:  # asked for and not predicted: really missing
            logger.warning("%d of the %d case(s) to evaluate have no prediction in %s: %s", len(unpredicted),
                           len(references), pred_dir, ", ".join(unpredicted))
        else:
            logger.info("%d reference(s) in %s have no prediction in %s", len(unpredicted), ref_dir, pred_dir)

    jobs = [(ref_dir / p.name, p, labels, compute_hd95, ignore_label) for p in predictions]
    per_case: list[dict] = []
    if num_processes > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # safe inside processes that hold threads (training)
        with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=ctx, **pool_initializer()) as pool:
            for result in pool.map(_evaluate_case_args, jobs):
                per_case.append(result)
                if progress:
                    progress(len(per_case), len(jobs))
    else:
        for job in jobs:
            per_case.append(evaluate_case(*job))
            if progress:
                progress(len(per_case), len(jobs))

    mean, foreground = aggregate(per_case, labels)
    summary = {
        "metric_per_case": [_jsonable_case(c) for c in per_case],
        "mean": {k: _jsonable_metrics(v) for k, v in mean.items()},
        "foreground_mean": _jsonable_metrics(foreground),
        "labels": {metric_key(lab): (label_names or {}).get(lab, metric_key(lab)) for lab in labels},
        "ignore_label": ignore_label,
        "references_without_prediction": unpredicted,
        "hd95_definition": "symmetric 95th percentile surface distance in mm; null + HD95_infinite=true "
                           "when the label is in exactly one of the two masks",
    }
    if output_file is not None:
        write_json(output_file, summary, indent=2)
    return summary


def _nanmean(values: list[float]) -> float:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def _jsonable_metrics(metrics: dict) -> dict:
    out = dict(metrics)
    if "HD95" in out and isinstance(out["HD95"], float) and math.isinf(out["HD95"]):
        out["HD95"] = None
        out["HD95_infinite"] = True
    return out


def _jsonable_case(case: dict) -> dict:
    return {**case, "metrics": {k: _jsonable_metrics(v) for k, v in case["metrics"].items()}}
