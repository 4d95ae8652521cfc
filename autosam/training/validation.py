"""After training: full-volume prediction of a fold's validation cases in original geometry,
then ``summary.json`` (nnU-Net layout) against the ground truth."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from autosam import paths
from autosam.evaluation.evaluate import evaluate_folder
from autosam.inference.export import export_prediction
from autosam.inference.predictor import predict_preprocessed_case
from autosam.training import distributed
from autosam.utils.files import write_json

logger = logging.getLogger(__name__)


def reference_folder(preprocessed_dataset_folder: Path) -> Path:
    """``gt_segmentations/`` of the preprocessed dataset, else the raw ``labelsTr/``."""
    gt = Path(preprocessed_dataset_folder) / "gt_segmentations"
    if gt.is_dir():
        return gt
    raw = paths.raw_dir() / Path(preprocessed_dataset_folder).name / "labelsTr"
    if raw.is_dir():
        return raw
    raise FileNotFoundError(f"{gt}: no ground-truth segmentations (nor {raw}); re-run autosam_preprocess")


def validate_fold(method, network, ctx, dataset, val_keys, fold_dir: Path, preprocessed_dataset_folder: Path,
                  dataset_json_path: Path, *, save_npz: bool = False, progress: bool = False,
                  checkpoint: str | None = None) -> dict:
    """Predict each validation case, export ``fold_dir/validation/<case><ending>`` (plus
    ``<case>.npz``/``<case>.json`` with ``save_npz``), write and return ``validation/summary.json``.

    Only the fold's validation cases are evaluated (other references in ``gt_segmentations``
    belong to the training cases). ``checkpoint`` (the file the network comes from) is recorded in
    the summary, so that a validation with ``--val_best`` can be told apart. The sliding-window
    step is ``ctx.step_size``.

    Under torch.distributed each rank predicts every ``world_size``-th case (``cases[rank::world]``);
    rank 0 evaluates all of them once the others are done, and every rank returns the summary."""
    out = Path(fold_dir) / "validation"
    if ctx.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    ending = ctx.dataset_json["file_ending"]
    network.eval()
    all_cases = list(val_keys)
    cases = all_cases[ctx.rank::ctx.world_size]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc="validation", unit="case")
    with torch.no_grad():
        for key in cases:
            data, _, props = dataset.load(key)
            probs = predict_preprocessed_case(method, [network], data, props, ctx, use_mirroring=True)
            export_prediction(probs, props, ctx.configuration, out / f"{key}{ending}", save_probabilities=save_npz,
                              label_manager=ctx.label_manager)
            logger.info("validation: predicted %s", key)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    distributed.barrier()  # every rank's predictions are written
    if not ctx.is_main_process:
        return distributed.broadcast_object(None)
    cases = all_cases
    summary = evaluate_folder(reference_folder(preprocessed_dataset_folder), out, dataset_json_path,
                              output_file=None, cases=cases)
    if checkpoint is not None:
        summary["checkpoint"] = checkpoint
    report = method.validation_report(network, ctx, dataset, cases)
    if report:
        summary["method_report"] = report
    write_json(out / "summary.json", summary, indent=2)
    fg = summary.get("foreground_mean", {}).get("Dice")
    logger.info("validation of %d cases: foreground mean Dice %s (%s)", len(cases), fg, out / "summary.json")
    return distributed.broadcast_object(summary)
