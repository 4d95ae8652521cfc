"""Whole-folder prediction (``autosam_predict``): the cases of an input folder, sharded over jobs
(nnU-Net's ``-num_parts``/``-part_id``), resumable (``--continue_prediction``), with the next case
preprocessed and previous ones exported in background threads while one case is predicted.
"""
from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, normalize_configuration
from autosam.inference.box_prompts import read_user_boxes, to_preprocessed_grid
from autosam.inference.case_prediction import predict_preprocessed_case
from autosam.inference.export import export_prediction
from autosam.inference.model_loading import TrainedModel, checkpoint_file_name, folds_with_checkpoint, load_trained_model
from autosam.inference.prompted import predict_case_with_prompts, prompts_record, read_user_prompts
from autosam.io.dataset import list_prediction_inputs
from autosam.preprocessing.preprocessor import preprocess_case
from autosam.results_folder import find_model_folder, resolve_auto_method
from autosam.utils.files import write_json
from autosam.utils.locks import LOCK_FILE, lock_folder

logger = logging.getLogger(__name__)


def predict_folder(input_folder: str | Path, output_folder: str | Path, dataset_id: str | int, configuration: str,
                   method: str, folds: Sequence[int | str] | None = None, checkpoint: str = "final",
                   use_mirroring: bool = True, save_probabilities: bool = False, device: str | torch.device | None = None,
                   num_processes: int = 2, plans_name: str = DEFAULT_PLANS_NAME, method_overrides: dict | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   patch_progress: bool | Callable = False, boxes_json: str | Path | None = None,
                   step_size: float = 0.5, num_export_workers: int = 1, num_parts: int = 1, part_id: int = 0,
                   continue_prediction: bool = False, prompts_json: str | Path | None = None,
                   cpu_bf16: bool = False) -> list[Path]:
    """Predict every case of ``input_folder`` (``<case>_0000<ending>``...) into ``output_folder``.

    ``method="auto"``: see :func:`resolve_auto_method`. ``folds=None``: every fold that has the
    checkpoint (:func:`folds_with_checkpoint`, logged). While one case is predicted, the next one is
    preprocessed and up to ``num_export_workers`` previous ones exported in background threads
    (``num_processes > 1``). ``step_size``: sliding-window step as a fraction of the patch.
    ``boxes_json``: box prompts per case (:mod:`autosam.inference.box_prompts`) for a method that
    takes them; checked completely before anything is written, and recorded in ``predict_args.json``.
    ``prompts_json``: prompts per case (3D boxes, 2D boxes, clicks; :mod:`autosam.inference.prompted`)
    for :meth:`Method.predict_with_prompts`, checked and recorded the same way.
    ``num_parts``/``part_id`` and ``continue_prediction``: see :func:`select_cases`.
    ``cpu_bf16``: on the CPU, predict under bfloat16 autocast (:attr:`MethodContext.cpu_bf16`).
    Returns the written label files.
    """
    input_folder = Path(input_folder)
    configuration = normalize_configuration(configuration)
    if not input_folder.is_dir():
        raise FileNotFoundError(f"{input_folder}: input folder does not exist")
    if method == "auto":
        method = resolve_auto_method(dataset_id, plans_name, configuration)
    model_folder = find_model_folder(dataset_id, method, configuration, plans_name)
    if folds is None:
        folds = folds_with_checkpoint(model_folder, checkpoint)
        logger.info("folds with %s in %s: %s (the default: all of them)", checkpoint_file_name(checkpoint),
                    model_folder, ", ".join(map(str, folds)))
    model = load_trained_model(model_folder, folds, checkpoint, device, method_overrides)
    return predict_folder_with_model(model, input_folder, output_folder, use_mirroring=use_mirroring,
                                     save_probabilities=save_probabilities, num_processes=num_processes,
                                     progress=progress, patch_progress=patch_progress, boxes_json=boxes_json,
                                     step_size=step_size, num_export_workers=num_export_workers, num_parts=num_parts,
                                     part_id=part_id, continue_prediction=continue_prediction,
                                     prompts_json=prompts_json, cpu_bf16=cpu_bf16)


def predict_folder_with_model(model: TrainedModel, input_folder: str | Path, output_folder: str | Path,
                              use_mirroring: bool = True, save_probabilities: bool = False, num_processes: int = 2,
                              progress: Callable[[str, int, int], None] | None = None,
                              patch_progress: bool | Callable = False, boxes_json: str | Path | None = None,
                              step_size: float = 0.5, num_export_workers: int = 1, num_parts: int = 1,
                              part_id: int = 0, continue_prediction: bool = False,
                              prompts_json: str | Path | None = None, cpu_bf16: bool = False) -> list[Path]:
    """:func:`predict_folder` with a model already loaded (:func:`load_trained_model`), for example
    from a model folder outside ``AUTOSAM_RESULTS`` (``autosam_predict_from_modelfolder``)."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise FileNotFoundError(f"{input_folder}: input folder does not exist")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    model.ctx.step_size = step_size
    model.ctx.cpu_bf16 = bool(cpu_bf16)
    all_cases = list_prediction_inputs(input_folder, model.dataset_json)
    if not all_cases:
        raise FileNotFoundError(f"{input_folder}: no images named <case>_0000{model.dataset_json['file_ending']}")
    ending = model.dataset_json["file_ending"]
    if prompts_json is not None and boxes_json is not None:
        raise ValueError("give --boxes-json or --prompts-json, not both (a boxes file is a prompts file too)")
    user_boxes = read_user_boxes(boxes_json, model, all_cases) if boxes_json is not None else None
    user_prompts = read_user_prompts(prompts_json, model, all_cases) if prompts_json is not None else None
    cases = select_cases(all_cases, output_folder, ending, num_parts=num_parts, part_id=part_id,
                         continue_prediction=continue_prediction, save_probabilities=save_probabilities)
    # one process writes an output folder (one part of it with num_parts > 1) at a time; another
    # stops with FolderLockedError naming it
    lock_name = LOCK_FILE if num_parts == 1 else f".autosam.part{part_id}of{num_parts}.lock"
    with lock_folder(output_folder, "prediction output folder", lock_name=lock_name):
        return _predict_cases(model, cases, input_folder, output_folder, user_boxes, boxes_json, use_mirroring=use_mirroring,
                              save_probabilities=save_probabilities, num_processes=num_processes, progress=progress,
                              patch_progress=patch_progress, step_size=step_size, num_export_workers=num_export_workers,
                              num_parts=num_parts, user_prompts=user_prompts, prompts_json=prompts_json)


def _predict_cases(model: TrainedModel, cases: list, input_folder: Path, output_folder: Path, user_boxes, boxes_json, *,
                   use_mirroring: bool, save_probabilities: bool, num_processes: int, progress, patch_progress,
                   step_size: float, num_export_workers: int, num_parts: int, user_prompts=None,
                   prompts_json=None) -> list[Path]:
    """The part of :func:`predict_folder_with_model` that writes into ``output_folder`` (owned by this process)."""
    configuration = model.configuration.name
    folds = [f.fold for f in model.folds]
    checkpoint = model.folds[0].checkpoint.name if model.folds[0].checkpoint else None
    ending = model.dataset_json["file_ending"]
    write_json(output_folder / "dataset.json", model.dataset_json)
    model.plans.save(output_folder / "plans.json")
    write_json(output_folder / "predict_args.json", {
        "input_folder": str(input_folder), "model_folder": str(model.model_folder), "method": model.method.name,
        "configuration": configuration, "folds": [str(f) for f in folds], "checkpoint": checkpoint,
        "use_mirroring": use_mirroring, "step_size": step_size, "save_probabilities": save_probabilities,
        "cpu_bf16": model.ctx.cpu_bf16 and model.ctx.device.type == "cpu",
        "device": str(model.ctx.device), "num_parts": num_parts,
        "options": _options_dict(model.ctx.options),
        "checkpoint_epochs": {str(f.fold): f.epoch for f in model.folds},
        "box_prompts": None if user_boxes is None else {
            "file": str(boxes_json), "mode": f"manual boxes from --boxes-json: {model.method.name}'s own localisation skipped",
            "boxes": {case: {str(k): v for k, v in b.items()} for case, b in user_boxes.items()}},
        **({} if user_prompts is None else {"prompts": {"file": str(prompts_json), "prompts": {
            case: prompts_record(p) for case, p in user_prompts.items()}}}),
    })

    def load(case):
        return preprocess_case([str(p) for p in case.images], model.plans, configuration)

    if not cases:
        return []
    exports_in_flight = max(1, int(num_export_workers))
    background = ThreadPoolExecutor(max_workers=1 + exports_in_flight) if num_processes > 1 else None
    written: list[Path] = []
    pending_exports: list[Future] = []
    try:
        next_case: Future | Any = background.submit(load, cases[0]) if background else None
        for i, case in enumerate(cases):
            data, _seg, properties = next_case.result() if background else load(case)
            if background and i + 1 < len(cases):
                next_case = background.submit(load, cases[i + 1])
            if progress:
                progress(case.identifier, i, len(cases))
            case_boxes = None
            if user_boxes is not None:
                case_boxes = to_preprocessed_grid(user_boxes[case.identifier], properties, data.shape[1:])
            if user_prompts is not None:
                probs = predict_case_with_prompts(model.method, model.folds, data, properties, model.ctx,
                                                  user_prompts[case.identifier], use_mirroring=use_mirroring)
            else:
                probs = predict_preprocessed_case(model.method, model.folds, data, properties, model.ctx, use_mirroring,
                                                  progress=patch_progress, boxes=case_boxes)
            del data
            out = output_folder / f"{case.identifier}{ending}"
            if background:
                # at most num_export_workers exports in flight: bounds memory to that many cases of probabilities
                while len(pending_exports) >= exports_in_flight:
                    pending_exports.pop(0).result()
                pending_exports.append(background.submit(export_prediction, probs, properties, model.configuration,
                                                         out, save_probabilities, model.ctx.label_manager))
            else:
                export_prediction(probs, properties, model.configuration, out, save_probabilities, model.ctx.label_manager)
            written.append(out)
        for f in pending_exports:
            f.result()
        if progress:
            progress("", len(cases), len(cases))
    finally:
        if background:
            background.shutdown(wait=True, cancel_futures=True)
    return written


def select_cases(cases: Sequence, output_folder: str | Path, ending: str, *, num_parts: int = 1, part_id: int = 0,
                 continue_prediction: bool = False, save_probabilities: bool = False) -> list:
    """The cases this job predicts (``cases`` as :func:`~autosam.io.dataset.list_prediction_inputs`
    lists them, sorted by identifier).

    ``num_parts``/``part_id`` (nnU-Net's ``-num_parts``/``-part_id``): job ``part_id`` of
    ``num_parts`` independent jobs takes every ``num_parts``-th case starting at ``part_id``, so the
    jobs together cover every case exactly once. ``continue_prediction``: cases whose output is
    complete are skipped. Outputs are written atomically, the label file last, so an existing label
    file is complete; with ``save_probabilities`` the ``.npz`` and ``.json`` must exist too."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in 0 .. num_parts - 1 and num_parts at least 1, got part_id {part_id}, "
                         f"num_parts {num_parts}")
    mine = sorted(cases, key=lambda c: c.identifier)[part_id::num_parts]
    if not continue_prediction:
        return mine
    output_folder = Path(output_folder)

    def complete(case) -> bool:
        needed = [output_folder / f"{case.identifier}{ending}"]
        if save_probabilities:
            needed += [output_folder / f"{case.identifier}.npz", output_folder / f"{case.identifier}.json"]
        return all(p.is_file() for p in needed)

    todo = [c for c in mine if not complete(c)]
    if len(todo) < len(mine):
        logger.info("--continue_prediction: %d of %d case(s) already predicted in %s, skipped", len(mine) - len(todo),
                    len(mine), output_folder)
    return todo


def _options_dict(options: Any) -> dict:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(vars(options))
