"""``autosam_evaluate_interactive``: the interactive protocol (:mod:`autosam.interactive.protocol`) over
the validation cases of a trained fold or a folder of images with references, per case JSON,
``summary.json`` and the plot of Dice against interaction step.

Output folder::

    summary.json          dice_per_step, nsd_per_step (mean over cases of the mean over their structures),
                          dsc_auc, nsd_auc, final_dice, final_nsd, seconds_per_step, encode_seconds, ...
    cases/<case>.json     the case's record: clicks, Dice and NSD per structure and step, seconds
    dice_per_step.png     Dice against interaction step

A case whose JSON exists with the same settings is read back instead of evaluated again (an
interrupted run resumes); ``overwrite`` evaluates every case again. For a fold of a trained model
the default output folder is ``<model folder>/fold_N/interactive`` (:data:`INTERACTIVE_FOLDER`), where
``autosam_find_best_configuration --rank-by dsc_auc`` reads it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from autosam import paths
from autosam.inference.predictor import TrainedModel
from autosam.inference.prompted import accepted_prompt_kinds
from autosam.interactive.metrics import DEFAULT_TOLERANCE_MM, auc, nanmean
from autosam.interactive.protocol import NUM_CLICKS, evaluation_mode, first_prompt_kind, run_case, step_names
from autosam.io.image import read_image
from autosam.utils.files import read_json, write_json
from autosam.utils.locks import lock_folder

logger = logging.getLogger(__name__)

INTERACTIVE_FOLDER = "interactive"  # fold_N/interactive/summary.json
SUMMARY_FILE = "summary.json"
PLOT_FILE = "dice_per_step.png"
PROTOCOL = ("CVPR 2025 Foundation Models for Interactive 3D Biomedical Image Segmentation: per structure, step 0 = "
            "the 2D box on the middle slice of the reference structure plus its z range, then one click per step "
            "at the centre (maximum of the Euclidean distance transform, mm) of the largest 26-connected error "
            "component (missed foreground: positive, false positive: negative), earlier clicks and the box kept, "
            "the previous prediction passed back as previous_mask; the image encoded once per case")
AUC_FORMULA = "trapezoid over steps 0..n with unit spacing: v0/2 + v1 + ... + v(n-1) + vn/2 (0..n; n = number of clicks)"


@dataclass
class EvalCase:
    """One case to evaluate: ``load()`` gives the preprocessed ``(data, properties)``."""

    identifier: str
    load: Callable[[], tuple]
    reference: Path


def fold_cases(model: TrainedModel, fold: int | str, preprocessed_folder: Path | None = None) -> list[EvalCase]:
    """The validation cases of ``fold`` (``splits_final.json`` of the preprocessed dataset; every
    case for ``all``): the preprocessed data of the model's configuration when it is there, else the
    raw ``imagesTr`` images preprocessed here; references from ``gt_segmentations`` (else ``labelsTr``)."""
    from autosam.experiment_planning.splits import SPLITS_FILE, load_splits
    from autosam.preprocessing.storage import load_case
    from autosam.training.validation import reference_folder

    name = model.model_folder.parent.name
    pre_ds = Path(preprocessed_folder) if preprocessed_folder else paths.preprocessed_dir() / name
    refs = reference_folder(pre_ds)
    ending = model.dataset_json["file_ending"]
    if str(fold) == "all":
        keys = sorted(p.name[: -len(ending)] for p in refs.glob(f"*{ending}") if not p.name.startswith("."))
    else:
        splits_file = pre_ds / SPLITS_FILE
        if not splits_file.is_file():
            raise FileNotFoundError(f"{splits_file}: no splits; the validation cases of fold {fold} are unknown")
        splits = load_splits(splits_file)
        if not 0 <= int(fold) < len(splits):
            raise ValueError(f"fold {fold} does not exist; {splits_file} has {len(splits)} folds")
        keys = list(splits[int(fold)]["val"])
    data_folder = pre_ds / model.configuration.data_identifier
    raw_images = paths.raw_dir() / name / "imagesTr"
    cases = []
    for key in keys:
        reference = refs / f"{key}{ending}"
        if not reference.is_file():
            raise FileNotFoundError(f"{reference}: no reference for validation case {key!r}")
        if (data_folder / f"{key}.json").is_file():
            def load(key=key):
                data, _seg, props = load_case(data_folder, key)
                return data, props
        else:
            images = sorted(raw_images.glob(f"{key}_[0-9][0-9][0-9][0-9]{ending}"))
            if not images:
                raise FileNotFoundError(f"{data_folder / (key + '.npy')}: case {key!r} is not preprocessed and "
                                        f"{raw_images} has no image of it")
            load = _raw_loader(images, model)
        cases.append(EvalCase(key, load, reference))
    return cases


def _raw_loader(images: Sequence[Path], model: TrainedModel):
    def load():
        from autosam.preprocessing.preprocessor import preprocess_case

        data, _seg, props = preprocess_case([str(p) for p in images], model.plans, model.configuration.name)
        return data, props

    return load


def folder_cases(model: TrainedModel, images_folder: Path, references_folder: Path) -> list[EvalCase]:
    """Every case of ``images_folder`` (``<case>_0000<ending>``...) with its reference
    ``references_folder/<case><ending>``; a case without reference is an error naming it."""
    from autosam.io.dataset import list_prediction_inputs

    images_folder, references_folder = Path(images_folder), Path(references_folder)
    for folder, what in ((images_folder, "image"), (references_folder, "reference")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: {what} folder does not exist")
    ending = model.dataset_json["file_ending"]
    found = list_prediction_inputs(images_folder, model.dataset_json)
    if not found:
        raise FileNotFoundError(f"{images_folder}: no images named <case>_0000{ending}")
    missing = [c.identifier for c in found if not (references_folder / f"{c.identifier}{ending}").is_file()]
    if missing:
        raise FileNotFoundError(f"{references_folder}: no reference for {len(missing)} case(s), e.g. "
                                f"{missing[0]}{ending}")
    return [EvalCase(c.identifier, _raw_loader(c.images, model), references_folder / f"{c.identifier}{ending}")
            for c in found]


def settings_of(model: TrainedModel, num_clicks: int, tolerance_mm: float, use_mirroring: bool) -> dict:
    method = model.method
    kinds = accepted_prompt_kinds(method)
    return {
        "method": method.name, "model_folder": str(model.model_folder), "configuration": model.configuration.name,
        "folds": [str(f.fold) for f in model.folds],
        "checkpoint": model.folds[0].checkpoint.name if model.folds[0].checkpoint else None,
        # a retrained fold (another epoch or file time) is evaluated again
        "checkpoint_versions": {str(f.fold): [f.epoch, int(f.checkpoint.stat().st_mtime) if f.checkpoint else None]
                                for f in model.folds},
        "mode": evaluation_mode(method), "prompt_kinds": sorted(kinds),
        "first_prompt": first_prompt_kind(kinds) if evaluation_mode(method) == "prompted" else None,
        "num_clicks": int(num_clicks), "tolerance_mm": float(tolerance_mm), "use_mirroring": bool(use_mirroring),
    }


def evaluate_interactive(model: TrainedModel, cases: Sequence[EvalCase], output_folder: str | Path, *,
                         num_clicks: int = NUM_CLICKS, tolerance_mm: float = DEFAULT_TOLERANCE_MM,
                         use_mirroring: bool = False, overwrite: bool = False, progress: bool = True,
                         source: dict | None = None) -> dict:
    """Run the protocol on ``cases`` (module docstring); returns and writes ``summary.json``."""
    if model.ctx.label_manager.has_regions:
        raise ValueError(f"{model.model_folder}: region-based labels: the interactive protocol prompts one label "
                         "value per structure; not supported for regions")
    if num_clicks < 1:
        raise ValueError(f"the protocol needs at least 1 click, got {num_clicks}")
    if not cases:
        raise ValueError("no case to evaluate")
    output_folder = Path(output_folder)
    settings = settings_of(model, num_clicks, tolerance_mm, use_mirroring)
    records: list[dict] = []
    with lock_folder(output_folder, "interactive evaluation output folder"):
        (output_folder / "cases").mkdir(parents=True, exist_ok=True)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(cases), desc=f"interactive {model.method.name}", unit="case")
        try:
            for case in cases:
                records.append(_evaluate_case(model, case, output_folder, settings, overwrite, num_clicks,
                                              tolerance_mm, use_mirroring))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{case.identifier}: Dice {_fmt(records[-1]['dice_per_step'][0])} -> "
                                        f"{_fmt(records[-1]['dice_per_step'][-1])}")
        finally:
            if bar is not None:
                bar.close()
        summary = summarize(records, settings, source or {})
        write_json(output_folder / SUMMARY_FILE, summary)
        plot_dice_per_step([summary], output_folder / PLOT_FILE)
    return summary


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _evaluate_case(model: TrainedModel, case: EvalCase, output_folder: Path, settings: dict, overwrite: bool,
                   num_clicks: int, tolerance_mm: float, use_mirroring: bool) -> dict:
    out = output_folder / "cases" / f"{case.identifier}.json"
    if out.is_file() and not overwrite:
        try:
            previous = read_json(out)
            if previous.get("settings") == settings:
                return previous
        except ValueError:
            pass  # unreadable: evaluated again
    reference, geometry = read_image(case.reference)
    data, properties = case.load()
    image_spacing = properties["geometry"]["spacing"]
    if not np.allclose(image_spacing, geometry.spacing, rtol=1e-3, atol=1e-4):
        raise ValueError(f"{case.reference}: spacing {list(geometry.spacing)} differs from the image's {image_spacing}")
    record = run_case(model, data, properties, reference, geometry.spacing, num_clicks=num_clicks,
                      tolerance_mm=tolerance_mm, use_mirroring=use_mirroring)
    record = {"case": case.identifier, "reference_file": str(case.reference), "settings": settings, **record}
    write_json(out, record)
    return record


def summarize(records: Sequence[dict], settings: dict, source: dict) -> dict:
    """``summary.json``: the case curves averaged over the cases that have a structure."""
    scored = [r for r in records if r["labels"]]
    n_steps = settings["num_clicks"] + 1
    dice_curve = [nanmean([r["dice_per_step"][k] for r in scored]) for k in range(n_steps)]
    nsd_curve = [nanmean([r["nsd_per_step"][k] for r in scored]) for k in range(n_steps)]
    labels = sorted({lab for r in scored for lab in r["per_label"]}, key=int)
    per_label = {}
    for lab in labels:
        curves = [r["per_label"][lab] for r in scored if lab in r["per_label"]]
        d = [nanmean([c["dice_per_step"][k] for c in curves]) for k in range(n_steps)]
        n = [nanmean([c["nsd_per_step"][k] for c in curves]) for k in range(n_steps)]
        per_label[lab] = {"num_cases": len(curves), "dice_per_step": d, "nsd_per_step": n, "dsc_auc": auc(d),
                          "nsd_auc": auc(n)}
    automatic = settings["mode"] == "automatic"
    return {
        **settings,
        "mode_note": ("automatic: the method takes no prompts; its one prediction without prompts scores every step "
                      "(the no-prompt reference)") if automatic else
                     f"prompted: step 0 gives the method the {settings['first_prompt']} prompt, steps 1.. the clicks",
        "protocol": PROTOCOL, "auc": AUC_FORMULA, "source": source,
        "steps": step_names(settings["num_clicks"]),
        "num_cases": len(records), "num_cases_without_structure": len(records) - len(scored),
        "dice_per_step": dice_curve, "nsd_per_step": nsd_curve,
        "dsc_auc": auc(dice_curve), "nsd_auc": auc(nsd_curve),
        "final_dice": dice_curve[-1], "final_nsd": nsd_curve[-1],
        "seconds_per_step": [nanmean([r["seconds_per_step"][k] for r in records]) for k in range(n_steps)],
        "encode_seconds": nanmean([r["encode_seconds"] for r in records]),
        "per_label": per_label,
        "cases": [{"case": r["case"], "dice_per_step": r["dice_per_step"], "dsc_auc": r["dsc_auc"],
                   "nsd_auc": r["nsd_auc"]} for r in records],
    }


def summary_label(summary: dict) -> str:
    name = summary.get("method", "?")
    return f"{name} (automatic)" if summary.get("mode") == "automatic" else name


def plot_dice_per_step(summaries: Sequence[dict], output_file: str | Path, title: str | None = None) -> Path:
    """Dice against interaction step, one line per summary (method); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autosam.utils.files import atomic_path

    if not summaries:
        raise ValueError("nothing to plot: no summary")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n_max = 0
    for s in summaries:
        curve = s["dice_per_step"]
        n_max = max(n_max, len(curve))
        ax.plot(range(len(curve)), curve, marker="o", linestyle="--" if s.get("mode") == "automatic" else "-",
                label=f"{summary_label(s)}: DSC_AUC {_fmt(s.get('dsc_auc'))}")
    ax.set_xticks(range(n_max))
    ax.set_xticklabels(step_names(n_max - 1), rotation=0, fontsize=8)
    ax.set_xlabel("interaction step")
    ax.set_ylabel("Dice (mean over cases and structures)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Interactive protocol ({sum(s.get('num_cases', 0) for s in summaries[:1])} cases)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output_file, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return output_file


def read_summary(path: str | Path) -> dict:
    """An evaluator ``summary.json`` (a folder: its summary.json); a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("dice_per_step"), list):
        raise ValueError(f"{path}: not a summary of autosam_evaluate_interactive (no dice_per_step)")
    return data
