"""Prediction with trained models: loading folds, the fold ensemble, whole-folder prediction.

A trained model lives in ``<results>/DatasetXXX_Name/<method>__<plans>__<config>/`` with
``fold_N/checkpoint_{final,best,latest}.pth`` (written by :mod:`autosam.training.checkpoint`) and,
ideally, copies of ``plans.json`` and ``dataset.json`` (otherwise they are read from the
preprocessed folder). The method is looked up by the name recorded in the checkpoint; a missing
plugin is reported with the package to install.

The fold ensemble is the mean of each fold's class probabilities. Input images go through the
same preprocessing as training (:func:`autosam.preprocessing.preprocessor.preprocess_case`, never
a label); predictions are exported in the input's exact geometry (:mod:`autosam.inference.export`).
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from autosam import paths
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, ConfigurationPlan, Plans, normalize_configuration
from autosam.inference.export import export_prediction
from autosam.io.dataset import dataset_name_from_id, list_prediction_inputs
from autosam.method import Method, MethodContext, check_label_support
from autosam.training.run_support import pick_device
from autosam.utils import precision
from autosam.utils.files import read_json, write_json
from autosam.utils.locks import LOCK_FILE, lock_folder

logger = logging.getLogger(__name__)
CHECKPOINT_CHOICES = ("final", "best", "latest")


@dataclass
class FoldModel:
    """One fold's network and the method state saved with it."""

    fold: int | str
    network: nn.Module
    method_state: dict = field(default_factory=dict)
    checkpoint: Path | None = None
    epoch: int | None = None


@dataclass
class TrainedModel:
    """Everything needed to predict with the folds of one trained model."""

    method: Method
    ctx: MethodContext
    folds: list[FoldModel]
    plans: Plans
    configuration: ConfigurationPlan
    dataset_json: dict
    model_folder: Path


def model_folder_name(method: str, plans_name: str, configuration: str) -> str:
    return f"{method}__{plans_name}__{normalize_configuration(configuration)}"


def find_model_folder(dataset: str | int, method: str, configuration: str, plans_name: str = DEFAULT_PLANS_NAME) -> Path:
    """``<results>/DatasetXXX_Name/<method>__<plans>__<config>``; the error lists the trained models."""
    name = dataset_name_from_id(dataset)
    folder = paths.results_dir() / name / model_folder_name(method, plans_name, configuration)
    if not folder.is_dir():
        parent = paths.results_dir() / name
        found = sorted(p.name for p in parent.iterdir() if p.is_dir() and "__" in p.name) if parent.is_dir() else []
        raise FileNotFoundError(f"{folder}: no trained model here; trained models of {name}: {', '.join(found) or 'none'}")
    return folder


def checkpoint_file_name(checkpoint: str) -> str:
    """``final``/``best``/``latest`` or a checkpoint file name (nnU-Net's ``-chk checkpoint_final.pth``)
    -> the file name in ``fold_N/``."""
    if checkpoint in CHECKPOINT_CHOICES:
        return f"checkpoint_{checkpoint}.pth"
    if not checkpoint or Path(checkpoint).name != checkpoint or not checkpoint.endswith(".pth"):
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)} or a file name in fold_N/ "
                         f"ending in .pth (e.g. checkpoint_best.pth), got {checkpoint!r}")
    return checkpoint


def folds_with_checkpoint(model_folder: str | Path, checkpoint: str = "final") -> list[int | str]:
    """The folds of ``model_folder`` that have the checkpoint (``fold_0``.. in order; ``all`` only
    when no numbered fold has it): the default fold ensemble of ``autosam_predict``. An error
    lists what the folds do have when none has it."""
    model_folder = Path(model_folder)
    name = checkpoint_file_name(checkpoint)
    numbered = sorted((int(p.name[5:]) for p in model_folder.glob("fold_*") if p.name[5:].isdigit()))
    folds: list[int | str] = [f for f in numbered if (model_folder / f"fold_{f}" / name).is_file()]
    if not folds and (model_folder / "fold_all" / name).is_file():
        folds = ["all"]
    if not folds:
        have = sorted(f"{p.parent.name}/{p.name}" for p in model_folder.glob("fold_*/checkpoint_*.pth"))
        raise FileNotFoundError(f"{model_folder}: no fold has {name}" + (f"; found: {', '.join(have)}" if have
                                                                         else " (no fold is trained)"))
    return folds


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def load_plans_and_dataset_json(model_folder: Path, plans_name: str) -> tuple[Plans, dict]:
    """The model folder's ``plans.json`` and ``dataset.json``; for a model folder without them, the
    dataset's plans and dataset.json in the preprocessed (or raw) folder."""
    dataset_name = model_folder.parent.name
    plans_path = _first_existing([model_folder / "plans.json"]) or _first_existing(
        [paths.preprocessed_dir() / dataset_name / f"{plans_name}.json"])
    if plans_path is None:
        raise FileNotFoundError(f"{model_folder}: no plans.json, and no {plans_name}.json in the preprocessed folder of {dataset_name}")
    dj_path = _first_existing([model_folder / "dataset.json"]) or _first_existing(
        [paths.preprocessed_dir() / dataset_name / "dataset.json", paths.raw_dir() / dataset_name / "dataset.json"])
    if dj_path is None:
        raise FileNotFoundError(f"{model_folder}: no dataset.json here nor in the preprocessed/raw folders of {dataset_name}")
    return Plans.load(plans_path), read_json(dj_path)


def _parse_folder_name(model_folder: Path) -> tuple[str, str, str]:
    parts = model_folder.name.split("__")
    if len(parts) != 3:
        raise ValueError(f"{model_folder}: model folders are named <method>__<plans>__<configuration>")
    return parts[0], parts[1], parts[2]


def load_trained_model(model_folder: str | Path, folds: Sequence[int | str] = (0,), checkpoint: str = "final",
                       device: str | torch.device | None = None, method_overrides: dict | None = None) -> TrainedModel:
    """Load the networks of ``folds`` (``0``.. or ``"all"``) from ``checkpoint_<checkpoint>.pth``
    (``checkpoint``: final, best, latest, or a file name such as ``checkpoint_best.pth``)."""
    from autosam.training.checkpoint import load_checkpoint, method_entry_for_checkpoint, strip_compile_prefix, unwrap

    model_folder = Path(model_folder).resolve()  # "." names no model: its resolved name does
    checkpoint_name = checkpoint_file_name(checkpoint)
    if not folds:
        raise ValueError("give at least one fold")
    _, plans_name, configuration_name = _parse_folder_name(model_folder)
    device = pick_device(device)  # None: the best available device, as the command line
    if device.type == "cpu":
        from autosam.utils.cpu_allocator import tune_cpu_allocator

        tune_cpu_allocator()
    plans, dataset_json = load_plans_and_dataset_json(model_folder, plans_name)
    configuration = plans.configuration(configuration_name)

    method: Method | None = None
    ctx: MethodContext | None = None
    fold_models: list[FoldModel] = []
    for fold in folds:
        fold_dir = model_folder / f"fold_{fold}"
        path = fold_dir / checkpoint_name
        if not path.is_file():
            available = sorted(p.name for p in fold_dir.glob("checkpoint_*.pth")) if fold_dir.is_dir() else []
            raise FileNotFoundError(f"{path}: checkpoint not found" + (f"; available: {', '.join(available)}" if available
                                                                        else f" (is fold {fold} trained?)"))
        ckpt = load_checkpoint(path, map_location="cpu")
        entry = method_entry_for_checkpoint(ckpt, path)
        if method is None:
            method = entry.obj
            check_label_support(method, plans.label_manager, str(model_folder))  # before anything is written
            # the checkpoint's options are what was trained; command-line overrides go on top
            options = method.make_options(ckpt.get("options") or {}, method_overrides or {})
            ctx = MethodContext(plans=plans, configuration=configuration, dataset_json=dataset_json, options=options,
                                device=device, num_input_channels=plans.num_channels, num_classes=plans.num_classes,
                                fold=fold, output_folder=None)
        elif entry.obj.name != method.name:
            raise ValueError(f"{path}: fold {fold} was trained with method {entry.obj.name!r}, fold {fold_models[0].fold} "
                             f"with {method.name!r}")
        network = method.build_network(ctx)
        try:
            unwrap(network).load_state_dict(strip_compile_prefix(ckpt["network"]))
        except RuntimeError as exc:
            detail = " ".join(str(exc).split()).replace(f"Error(s) in loading state_dict for {type(network).__name__}: ", "")
            raise ValueError(f"{path}: weights do not fit the network built from the plans and options "
                             f"({detail[:400]}{' ...' if len(detail) > 400 else ''})") from None
        network.to(device).eval()
        fold_models.append(FoldModel(fold, network, ckpt.get("method_state") or {}, path, ckpt.get("epoch")))
        del ckpt
    assert method is not None and ctx is not None
    return TrainedModel(method, ctx, fold_models, plans, configuration, dataset_json, model_folder)


def predict_preprocessed_case(method: Method, networks: Sequence[nn.Module | FoldModel], data, properties: dict | None,
                              ctx: MethodContext, use_mirroring: bool = True, progress: bool | Callable = False,
                              boxes: dict[int, list[np.ndarray]] | None = None,
                              predict: Callable[[nn.Module, torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Fold-ensemble probabilities (K x Z x Y x X, float32, CPU) of one preprocessed case.

    ``data`` is the preprocessed image (C x Z x Y x X). Each network predicts through
    ``method.predict_volume`` (on CUDA under autocast in the training precision,
    :func:`autosam.utils.precision.amp_dtype`); the result is the mean of the folds' probabilities. The case's
    properties are visible to the method as ``ctx.extra["case_properties"]`` while it predicts.
    ``boxes`` (label -> boxes on the preprocessed grid) are passed on as box prompts to a method
    with ``accepts_boxes`` (it then skips its own localisation). ``predict(network, data, i)`` replaces
    ``method.predict_volume`` for the ``i``-th network (e.g. ``predict_with_prompts``,
    :mod:`autosam.inference.prompted`).
    """
    if not networks:
        raise ValueError("predict_preprocessed_case needs at least one network")
    if boxes is not None and not method.accepts_boxes:
        raise ValueError(f"method {method.name!r} takes no box prompts")
    box_kw = {} if boxes is None else {"boxes": boxes}
    if isinstance(data, torch.Tensor):
        tensor = data
    else:  # a read-only (memory-mapped) array is copied: torch warns about non-writable arrays
        tensor = torch.from_numpy(np.require(np.asarray(data, dtype=np.float32), requirements=["C", "W"]))
    if tensor.ndim != 4:
        raise ValueError(f"preprocessed data must be C x Z x Y x X, got shape {tuple(tensor.shape)}")
    expected = (ctx.num_classes, *tensor.shape[1:])
    previous = ctx.extra.get("case_properties")
    ctx.extra["case_properties"] = properties
    total: torch.Tensor | None = None
    try:
        for i, item in enumerate(networks):
            network = item.network if isinstance(item, FoldModel) else item
            if isinstance(item, FoldModel):
                method.load_extra_state(item.method_state)
            network.eval()
            with precision.autocast(ctx.device):  # the training precision (bf16 or fp16 on CUDA), for every method
                if predict is not None:
                    probs = predict(network, tensor, i)
                else:
                    probs = method.predict_volume(network, tensor, ctx, use_mirroring=use_mirroring, progress=progress,
                                                  **box_kw)
            probs = probs.detach().to("cpu", torch.float32)
            if tuple(probs.shape) != expected:
                raise ValueError(f"method {method.name!r} predicted shape {tuple(probs.shape)}; expected {expected}")
            if total is None:
                total = probs if len(networks) == 1 else probs.clone()
            else:
                total += probs
    finally:
        ctx.extra["case_properties"] = previous
    if len(networks) > 1:
        total /= len(networks)
    return total


def predict_folder(input_folder: str | Path, output_folder: str | Path, dataset_id: str | int, configuration: str,
                   method: str, folds: Sequence[int | str] | None = None, checkpoint: str = "final",
                   use_mirroring: bool = True, save_probabilities: bool = False, device: str | torch.device | None = None,
                   num_processes: int = 2, plans_name: str = DEFAULT_PLANS_NAME, method_overrides: dict | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   patch_progress: bool | Callable = False, boxes_json: str | Path | None = None,
                   step_size: float = 0.5, num_export_workers: int = 1, num_parts: int = 1, part_id: int = 0,
                   continue_prediction: bool = False, prompts_json: str | Path | None = None) -> list[Path]:
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
                                     prompts_json=prompts_json)


def predict_folder_with_model(model: TrainedModel, input_folder: str | Path, output_folder: str | Path,
                              use_mirroring: bool = True, save_probabilities: bool = False, num_processes: int = 2,
                              progress: Callable[[str, int, int], None] | None = None,
                              patch_progress: bool | Callable = False, boxes_json: str | Path | None = None,
                              step_size: float = 0.5, num_export_workers: int = 1, num_parts: int = 1,
                              part_id: int = 0, continue_prediction: bool = False,
                              prompts_json: str | Path | None = None) -> list[Path]:
    """:func:`predict_folder` with a model already loaded (:func:`load_trained_model`), for example
    from a model folder outside ``AUTOSAM_RESULTS`` (``autosam_predict_from_modelfolder``)."""
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    if not input_folder.is_dir():
        raise FileNotFoundError(f"{input_folder}: input folder does not exist")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    model.ctx.step_size = step_size
    all_cases = list_prediction_inputs(input_folder, model.dataset_json)
    if not all_cases:
        raise FileNotFoundError(f"{input_folder}: no images named <case>_0000{model.dataset_json['file_ending']}")
    ending = model.dataset_json["file_ending"]
    if prompts_json is not None and boxes_json is not None:
        raise ValueError("give --boxes-json or --prompts-json, not both (a boxes file is a prompts file too)")
    user_boxes = _read_user_boxes(boxes_json, model, all_cases) if boxes_json is not None else None
    from autosam.inference.prompted import read_user_prompts

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
    from autosam.inference.prompted import predict_case_with_prompts, prompts_record
    from autosam.preprocessing.preprocessor import preprocess_case

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
                from autosam.inference.box_prompts import to_preprocessed_grid

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


def _read_user_boxes(boxes_json, model: TrainedModel, cases) -> dict:
    """The boxes of ``--boxes-json``, checked against the method, the labels and every input image."""
    import SimpleITK as sitk

    from autosam.inference.box_prompts import check_in_image, read_boxes_json
    from autosam.plugins import get_plugin_system

    if not model.method.accepts_boxes:
        methods = get_plugin_system().methods
        takers = sorted(n for n in methods.names() if methods.get(n).accepts_boxes)
        raise ValueError(f"--boxes-json: method {model.method.name!r} takes no box prompts "
                         f"(methods that do: {', '.join(takers) or 'none installed'})")
    boxes = read_boxes_json(boxes_json, [c.identifier for c in cases], model.dataset_json)
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.images[0]))
        reader.ReadImageInformation()
        check_in_image(boxes_json, case.identifier, boxes[case.identifier], tuple(reversed(reader.GetSize()))[-3:])
    return boxes


def resolve_auto_method(dataset_id: str | int, plans_name: str = DEFAULT_PLANS_NAME, configuration: str | None = None) -> str:
    """``-m auto``: the winner of ``autosam_find_best_configuration`` for this configuration when it
    has been run (for an ensemble winner, its first member), else the plans' default method."""
    from autosam.postprocessing.find_best import best_method_of

    best = best_method_of(dataset_id, plans_name)
    if configuration is not None:
        configuration = normalize_configuration(configuration)
    if best is not None and (configuration is None or best[1] == configuration):
        logger.info("method 'auto': %r, the winner of autosam_find_best_configuration", best[0])
        return best[0]
    method = default_method_of(dataset_id, plans_name, configuration)
    logger.info("method 'auto': the plans' default method is %r", method)
    return method


def default_method_of(dataset_id: str | int, plans_name: str = DEFAULT_PLANS_NAME, configuration: str | None = None) -> str:
    """The plans' default method: from the preprocessed plans, else from a trained model's plans.json."""
    name = dataset_name_from_id(dataset_id)
    candidates = [paths.preprocessed_dir() / name / f"{plans_name}.json"]
    results = paths.results_dir() / name
    if results.is_dir():
        suffix = f"__{plans_name}__{normalize_configuration(configuration)}" if configuration else f"__{plans_name}__"
        candidates += sorted(p / "plans.json" for p in results.iterdir() if suffix in p.name)
    path = _first_existing(candidates)
    if path is None:
        raise FileNotFoundError(f"{candidates[0]}: plans not found; '-m auto' reads the default method from the plans")
    return Plans.load(path).default_method


def _options_dict(options: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(vars(options))


# ------------------------------------------------------------------------------ Python API
class Predictor:
    """Prediction from Python, in the manner of nnU-Net v2's ``nnUNetPredictor``::

        predictor = Predictor(device="cpu")
        predictor.initialize_from_trained_model_folder("results/Dataset004_Hippocampus/unet__autosamPlans__3d")
        seg = predictor.predict_single_npy_array(image, {"spacing": [1.0, 0.8, 0.8]})

    ``image`` is C x Z x Y x X (one channel per input modality, in the order of ``channel_names``),
    ``spacing`` is (z, y, x) in mm, as :func:`autosam.io.image.read_image` returns them. The array
    goes through exactly the steps a file goes through in :func:`predict_folder` (same
    preprocessing, fold ensemble and export), so the same image gives the same mask either way.
    """

    def __init__(self, use_mirroring: bool = True, device: str | torch.device = "cpu", progress: bool = False,
                 step_size: float = 0.5):
        if not 0 < step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {step_size}")
        self.use_mirroring = use_mirroring
        self.device = device
        self.progress = progress
        self.step_size = step_size
        self.model: TrainedModel | None = None

    def initialize_from_trained_model_folder(self, model_folder: str | Path, use_folds: Sequence[int | str] | None = None,
                                             checkpoint_name: str = "checkpoint_final.pth",
                                             method_overrides: dict | None = None) -> "Predictor":
        """Load the folds (default: every fold that has the checkpoint, logged) of a model folder
        ``<method>__<plans>__<configuration>``, anywhere on disk."""
        folds = list(use_folds) if use_folds else folds_with_checkpoint(model_folder, checkpoint_name)
        if not use_folds:
            logger.info("folds with %s in %s: %s", checkpoint_file_name(checkpoint_name), model_folder,
                        ", ".join(map(str, folds)))
        self.model = load_trained_model(model_folder, folds, checkpoint_name, self.device, method_overrides)
        self.model.ctx.step_size = self.step_size
        return self

    def _require_model(self) -> TrainedModel:
        if self.model is None:
            raise RuntimeError("call initialize_from_trained_model_folder first")
        return self.model

    def predict_single_npy_array(self, image: np.ndarray, properties: dict, output_file_truncated: str | Path | None = None,
                                 save_or_return_probabilities: bool = False, prompts: dict | None = None):
        """Segment one image held in memory.

        :param image: C x Z x Y x X array.
        :param properties: ``{"spacing": [z, y, x]}``, optionally ``origin`` and ``direction``
            (SimpleITK convention, used when writing a file), or autosam case properties with ``geometry``.
        :param prompts: label -> :class:`autosam.prompts.LabelPrompts` in voxels of ``image`` (z, y, x), for a
            method that takes them (:meth:`Method.predict_with_prompts`; others refuse with a clear error).
        :param output_file_truncated: when given, write ``<output_file_truncated><file_ending>``
            (and with ``save_or_return_probabilities`` the ``.npz``/``.json`` next to it) and return its path.
        :returns: the label map (Z x Y x X, uint8 or int16) in the image's geometry, or
            ``(label map, probabilities K x Z x Y x X)`` with ``save_or_return_probabilities``.
        """
        from autosam.inference.export import probabilities_to_segmentation
        from autosam.preprocessing.preprocessor import geometry_of_array, preprocess_arrays

        model = self._require_model()
        image = np.asarray(image)
        geometry = geometry_of_array(image, properties)
        if prompts is not None:
            from autosam.inference.prompted import check_method_takes

            check_method_takes(model.method, {"image": prompts}, "prompts")
            for label, p in prompts.items():
                p.validate(tuple(image.shape[1:]), label)
        data, _seg, case_properties = preprocess_arrays(image, geometry, model.plans, model.configuration.name)
        if prompts is not None:
            from autosam.inference.prompted import predict_case_with_prompts

            probs = predict_case_with_prompts(model.method, model.folds, data, case_properties, model.ctx, prompts,
                                              use_mirroring=self.use_mirroring)
        else:
            probs = predict_preprocessed_case(model.method, model.folds, data, case_properties, model.ctx,
                                              self.use_mirroring, progress=self.progress)
        if output_file_truncated is not None:
            out = Path(f"{output_file_truncated}{model.dataset_json['file_ending']}")
            export_prediction(probs, case_properties, model.configuration, out, save_or_return_probabilities,
                              model.ctx.label_manager)
            return out
        return probabilities_to_segmentation(probs, case_properties, model.configuration,
                                             return_probabilities=save_or_return_probabilities,
                                             label_manager=model.ctx.label_manager)

    def predict_from_list_of_npy_arrays(self, images: Sequence[np.ndarray], properties: Sequence[dict],
                                        output_files_truncated: Sequence[str | Path] | None = None,
                                        save_probabilities: bool = False) -> list:
        """:meth:`predict_single_npy_array` for each image (``properties`` one dict per image, or a
        single dict shared by all); returns the label maps, or the written paths when
        ``output_files_truncated`` is given."""
        if isinstance(properties, dict):
            properties = [properties] * len(images)
        if len(properties) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(properties)} properties")
        if output_files_truncated is not None and len(output_files_truncated) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(output_files_truncated)} output file name(s)")
        results = []
        for i, (image, props) in enumerate(zip(images, properties)):
            out = output_files_truncated[i] if output_files_truncated is not None else None
            results.append(self.predict_single_npy_array(image, props, out, save_probabilities))
        return results

    def predict_from_files(self, input_folder: str | Path, output_folder: str | Path, save_probabilities: bool = False,
                           num_processes: int = 2) -> list[Path]:
        """Every case of ``input_folder`` into ``output_folder`` (as ``autosam_predict``)."""
        return predict_folder_with_model(self._require_model(), input_folder, output_folder, self.use_mirroring,
                                         save_probabilities, num_processes, patch_progress=self.progress,
                                         step_size=self.step_size)
