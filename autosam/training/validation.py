"""After training: full-volume prediction of a fold's validation cases in original geometry,
then ``summary.json`` (nnU-Net layout) against the ground truth."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from autosam import paths
from autosam.evaluation.evaluate import evaluate_folder
from autosam.inference.export import export_prediction
from autosam.inference.predictor import predict_preprocessed_case
from autosam.training import distributed, rank_sync
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
    rank 0 evaluates all of them once the others are done, and every rank returns the summary. Rank
    0 evaluates the case names the ranks report having written (not what a listing of the folder
    shows: on a shared file system it may lag behind other nodes' writes, see :func:`evaluate_written`)."""
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
        from autosam.utils.progress import progress_bar

        bar = progress_bar(total=len(cases), desc="validation", unit="case")
    written = []
    with torch.no_grad():
        for key in cases:
            data, _, props = dataset.load(key)
            probs = predict_preprocessed_case(method, [network], data, props, ctx, use_mirroring=True)
            export_prediction(probs, props, ctx.configuration, out / f"{key}{ending}", save_probabilities=save_npz,
                              label_manager=ctx.label_manager)
            written.append(key)
            logger.info("validation: predicted %s", key)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    # every rank's predictions are written: their names reach rank 0
    done = {key for part in rank_sync.all_gather_object(written) for key in part}
    cases = [key for key in all_cases if key in done]
    summary = rank_sync.main_process_phase("the validation summary", _summarize, method, network, ctx, dataset, cases,
                                           out, preprocessed_dataset_folder, dataset_json_path, checkpoint)
    return distributed.broadcast_object(summary)


STALE_LISTING_RETRIES = 6  # x STALE_LISTING_WAIT seconds for a shared file system to show every written case
STALE_LISTING_WAIT = 10.0


def evaluate_written(out: Path, cases: list[str], reference: Path, dataset_json_path: Path) -> dict:
    """``evaluate_folder`` of ``cases``, all of which were written to ``out``: when the folder's
    listing misses some (a directory cache that has not caught up with other nodes), wait and
    evaluate again; still missing after a minute is an error naming them, never a summary of fewer cases."""
    for attempt in range(STALE_LISTING_RETRIES + 1):
        summary = evaluate_folder(reference, out, dataset_json_path, output_file=None, cases=cases)
        missing = summary.get("references_without_prediction") or []
        if not missing:
            return summary
        if attempt < STALE_LISTING_RETRIES:
            logger.warning("validation: %d written case(s) not yet listed in %s (%s); waiting for the file system",
                           len(missing), out, ", ".join(missing[:5]))
            time.sleep(STALE_LISTING_WAIT)
    raise RuntimeError(f"{out}: {len(missing)} validation case(s) written by the ranks are not visible here: "
                       f"{', '.join(missing[:10])}")


def _summarize(method, network, ctx, dataset, cases, out, preprocessed_dataset_folder, dataset_json_path, checkpoint):
    summary = evaluate_written(out, cases, reference_folder(preprocessed_dataset_folder), dataset_json_path)
    if checkpoint is not None:
        summary["checkpoint"] = checkpoint
    report = method.validation_report(network, ctx, dataset, cases)
    if report:
        summary["method_report"] = report
    write_json(out / "summary.json", summary, indent=2)
    fg = summary.get("foreground_mean", {}).get("Dice")
    logger.info("validation of %d cases: foreground mean Dice %s (%s)", len(cases), fg, out / "summary.json")
    return summary
