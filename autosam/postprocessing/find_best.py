"""``autosam_find_best_configuration``: pick the best method/configuration (or pairwise ensemble)
by cross-validation foreground-mean Dice, determine post-processing, and say how to reproduce it.

``rank_by="dsc_auc"`` ranks the single models instead by the interactive protocol's DSC_AUC over the
folds' validation cases, read from ``<model>/fold_N/interactive/summary.json``
(``autosam_evaluate_interactive``; :mod:`autosam.interactive.ranking`); the result goes to
``find_best_configuration_dsc_auc.json``, so that ``-m auto`` keeps following the automatic ranking."""
from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from autosam import paths
from autosam.evaluation.evaluate import evaluate_folder
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, normalize_configuration
from autosam.experiment_planning.splits import SPLITS_FILE
from autosam.interactive.ranking import crossval_interactive, interactive_summary_path
from autosam.io.dataset import dataset_name_from_id
# RESULT_FILE and best_method_of (the winner, read by -m auto) live in results_folder; re-exported here
from autosam.results_folder import RESULT_FILE, best_method_of, find_model_folder, parse_model_folder_name  # noqa: F401
from autosam.utils.files import read_json, write_json

from .ensemble import ensemble_folders, probability_cases
from .postprocess import determine_postprocessing
from .report import write_report

logger = logging.getLogger(__name__)
RANK_BY = ("dice", "dsc_auc")


@dataclass
class TrainedEntry:
    method: str
    plans: str
    configuration: str
    folder: Path  # <results>/<dataset>/<method>__<plans>__<config>

    @property
    def key(self) -> str:
        return f"{self.method}__{self.plans}__{self.configuration}"


def discover(results_ds: Path, methods: Sequence[str] | None, configurations: Sequence[str] | None,
             plans_name: str, folds: Sequence[int]) -> list[TrainedEntry]:
    """Trained (method, configuration)s whose every requested fold has validation predictions."""
    entries = []
    if configurations:
        configurations = [normalize_configuration(c) for c in configurations]
    for d in sorted(p for p in results_ds.iterdir() if p.is_dir() and p.name.count("__") == 2):
        method, plans, config = parse_model_folder_name(d)
        if plans != plans_name or (methods and method not in methods) or (configurations and config not in configurations):
            continue
        incomplete = [f for f in folds if not (d / f"fold_{f}" / "validation" / "summary.json").is_file()]
        if incomplete:
            logger.warning("%s: folds %s have no validation results; skipped", d, incomplete)
            continue
        entries.append(TrainedEntry(method, plans, config, d))
    return entries


def merge_folds(entry: TrainedEntry, folds: Sequence[int], target: Path, file_ending: str) -> bool:
    """Copy every fold's validation predictions (and probabilities) into one cross-validation folder.
    Returns whether probabilities exist for every case."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    has_probs = True
    for f in folds:
        val = entry.folder / f"fold_{f}" / "validation"
        labels = [p for p in val.glob(f"*{file_ending}") if not p.name.startswith(".")]
        for p in labels:
            shutil.copy2(p, target / p.name)
        cases = {p.name[: -len(file_ending)] for p in labels}
        probs = probability_cases(val)
        has_probs &= cases <= probs
        for c in cases & probs:
            shutil.copy2(val / f"{c}.npz", target / f"{c}.npz")
            shutil.copy2(val / f"{c}.json", target / f"{c}.json")
    return has_probs


def expected_cases(pre_ds: Path, gt: Path, folds: Sequence[int], ending: str) -> set[str]:
    """Validation cases of ``folds`` per ``splits_final.json``; every reference case when there is no
    splits file (or it has fewer folds), as when all folds were trained on a custom split."""
    references = {p.name[: -len(ending)] for p in gt.glob(f"*{ending}") if not p.name.startswith(".")}
    splits_file = pre_ds / SPLITS_FILE
    if splits_file.is_file():
        splits = read_json(splits_file)
        if all(0 <= f < len(splits) for f in folds):
            return {c for f in folds for c in splits[f]["val"]} & references
    return references


def check_complete(folder: Path, expected: set[str], ending: str, folds: Sequence[int]) -> None:
    """Every validation case of the requested folds must have a prediction in ``folder``."""
    present = {p.name[: -len(ending)] for p in folder.glob(f"*{ending}") if not p.name.startswith(".")}
    missing = sorted(expected - present)
    if missing:
        raise ValueError(f"{folder}: no prediction for {len(missing)} validation case(s) of folds {list(folds)}, "
                         f"e.g. {missing[0]}{ending}")


def _accumulate(entry: TrainedEntry, folds: Sequence[int], target: Path, gt: Path, dj_path: Path, expected: set[str],
                ending: str, num_processes: int) -> tuple[dict, bool]:
    """Merge the folds' validation predictions into ``target``, check every expected case is there,
    evaluate (``target/summary.json``). Returns the summary and whether probabilities are complete."""
    has_probs = merge_folds(entry, folds, target, ending)
    check_complete(target, expected, ending, folds)
    return evaluate_folder(gt, target, dj_path, target / "summary.json", num_processes=num_processes), has_probs


def accumulate_crossval_results(dataset_id, configuration: str, method: str, folds: Sequence[int] = (0, 1, 2, 3, 4),
                                plans_name: str = DEFAULT_PLANS_NAME, output_folder: str | Path | None = None,
                                num_processes: int = 1) -> tuple[Path, dict]:
    """nnU-Net's ``accumulate_crossval_results``: copy the validation predictions of ``folds`` of one
    trained model into one folder (default ``<model>/crossval_results_folds_0_1_2_3_4``), with the
    dataset's ``dataset.json`` and the model's ``plans.json``, and evaluate them against
    ``gt_segmentations`` (``summary.json`` there). Returns the folder and the summary."""
    dataset = dataset_name_from_id(dataset_id)
    folder = find_model_folder(dataset, method, configuration, plans_name)
    pre_ds = paths.preprocessed_dir() / dataset
    dj_path, gt = pre_ds / "dataset.json", pre_ds / "gt_segmentations"
    for p in (gt, dj_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; the references come from the preprocessed dataset (autosam_preprocess)")
    incomplete = [f for f in folds if not (folder / f"fold_{f}" / "validation").is_dir()]
    if incomplete:
        raise FileNotFoundError(f"{folder}: folds {incomplete} have no validation predictions (train them to the end, "
                                "or run autosam_train --val)")
    ending = read_json(dj_path)["file_ending"]
    target = Path(output_folder) if output_folder else folder / f"crossval_results_folds_{'_'.join(map(str, folds))}"
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / "summary.json").is_file()):
        # the folder is replaced as a whole: never one that holds something else
        raise FileExistsError(f"{target}: exists and is not a cross-validation folder written by this command; "
                              "give a new or empty folder")
    entry = TrainedEntry(method, plans_name, configuration, folder)
    summary, _ = _accumulate(entry, folds, target, gt, dj_path, expected_cases(pre_ds, gt, folds, ending), ending,
                             num_processes)
    write_json(target / "dataset.json", read_json(dj_path))
    if (folder / "plans.json").is_file():
        shutil.copyfile(folder / "plans.json", target / "plans.json")
    return target, summary


def predict_command(dataset: str, entry_key: str, folds: Sequence[int], probs: bool) -> str:
    method, plans, config = entry_key.split("__")
    plans_flag = f" --plans {plans}" if plans != DEFAULT_PLANS_NAME else ""
    return (f"autosam_predict -i INPUT_FOLDER -o OUTPUT_{method}_{config} -d {dataset} -c {config} -m {method} "
            f"-f {' '.join(map(str, folds))}{plans_flag}{' --save_probabilities' if probs else ''}")


def find_best_configuration(dataset_id, methods: Sequence[str] | None = None, configurations: Sequence[str] | None = None,
                            folds: Sequence[int] = (0, 1, 2, 3, 4), plans_name: str = DEFAULT_PLANS_NAME,
                            allow_ensembling: bool = True, num_processes: int = 1, rank_by: str = "dice") -> dict:
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    dataset = dataset_name_from_id(dataset_id)
    results_ds = paths.results_dir() / dataset
    pre_ds = paths.preprocessed_dir() / dataset
    dj_path = pre_ds / "dataset.json"
    gt = pre_ds / "gt_segmentations"
    for p in (results_ds, gt, dj_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; plan/preprocess and train the dataset first")
    ending = read_json(dj_path)["file_ending"]
    entries = discover(results_ds, methods, configurations, plans_name, folds)
    if not entries:
        raise ValueError(f"{results_ds}: no trained method/configuration with validation results for folds {list(folds)}")
    interactive: dict[str, dict] = {}
    if rank_by == "dsc_auc":
        entries, interactive = _with_interactive_results(entries, folds)
        allow_ensembling = False  # the protocol evaluates single models
    cv_root = results_ds / "crossval"
    candidates: dict[str, dict] = {}
    prob_ok: dict[str, bool] = {}
    expected = expected_cases(pre_ds, gt, folds, ending)
    for e in entries:
        target = cv_root / e.key
        summary, prob_ok[e.key] = _accumulate(e, folds, target, gt, dj_path, expected, ending, num_processes)
        candidates[e.key] = {"kind": "single", "members": [e.key], "folder": str(target), "summary": summary}
    if allow_ensembling:
        for a, b in itertools.combinations(sorted(candidates), 2):
            if not (prob_ok[a] and prob_ok[b]):
                logger.info("ensemble %s + %s skipped: probabilities missing (train with --npz)", a, b)
                continue
            key = f"ensemble__{a}--{b}"
            target = cv_root / key
            if target.exists():
                shutil.rmtree(target)
            ensemble_folders([cv_root / a, cv_root / b], target, ending)
            check_complete(target, expected, ending, folds)
            summary = evaluate_folder(gt, target, dj_path, target / "summary.json", num_processes=num_processes)
            candidates[key] = {"kind": "ensemble", "members": [a, b], "folder": str(target), "summary": summary}
    for key, figures in interactive.items():
        candidates[key]["interactive"] = figures
    if rank_by == "dsc_auc":
        ranking = sorted(candidates, key=lambda k: (-candidates[k]["interactive"]["dsc_auc"], -_fg_dice(candidates[k])))
    else:
        ranking = sorted(candidates, key=lambda k: -_fg_dice(candidates[k]))
    best = ranking[0]
    pp = determine_postprocessing(candidates[best]["folder"], gt, dj_path, num_processes=num_processes)
    pp_file = Path(candidates[best]["folder"]) / "postprocessing.json"
    result = {
        "dataset": dataset, "folds": list(folds), "plans": plans_name, "rank_by": rank_by,
        "ranking": [{"name": k, "kind": candidates[k]["kind"], "members": candidates[k]["members"],
                     "foreground_mean_dice": _fg_dice(candidates[k]), "folder": candidates[k]["folder"],
                     **({"interactive": candidates[k]["interactive"]} if "interactive" in candidates[k] else {})}
                    for k in ranking],
        "best": {"name": best, **{k: v for k, v in candidates[best].items() if k != "summary"},
                 "foreground_mean_dice": _fg_dice(candidates[best]),
                 "postprocessing": pp, "postprocessing_file": str(pp_file)},
    }
    result["commands"] = reproduction_commands(dataset, candidates[best], folds, pp, pp_file, ending, gt, dj_path)
    if rank_by == "dsc_auc":
        figures = candidates[best]["interactive"]
        result["commands"]["text"].insert(0, f"# Ranked by the interactive protocol's DSC_AUC: {best} {figures['dsc_auc']:.4f} "
                                             f"(Dice after the box {figures['dice_per_step'][0]:.4f}, after "
                                             f"{figures['num_clicks']} clicks {figures['final_dice']:.4f})")
        write_json(results_ds / f"{Path(RESULT_FILE).stem}_dsc_auc.json", result)
        return result
    write_json(results_ds / RESULT_FILE, result)
    (results_ds / "inference_instructions.txt").write_text("\n".join(result["commands"]["text"]) + "\n")
    write_report(results_ds, {k: v["summary"] for k, v in candidates.items()}, ranking)
    return result


def reproduction_commands(dataset: str, best: dict, folds, pp: dict, pp_file: Path, ending: str, gt: Path, dj: Path) -> dict:
    members = best["members"]
    lines = [f"# Best for {dataset}: {' + '.join(members)} (cross-validation foreground-mean Dice "
             f"{_fg_dice(best):.4f}, after post-processing {pp['foreground_mean_dice_after']:.4f})", "",
             "## Reproduce the reported cross-validation Dice from the fold predictions:"]
    cv = [str(Path(best["folder"]).parent / m) for m in members]
    fe = "" if ending == ".nii.gz" else f" --file_ending {ending}"
    reproduce = []
    if len(members) == 2:
        reproduce.append(f"autosam_ensemble -i {cv[0]} {cv[1]} -o CV_ENSEMBLE{fe}")
        src = "CV_ENSEMBLE"
    else:
        src = cv[0]
    reproduce.append(f"autosam_apply_postprocessing -i {src} -o CV_POSTPROCESSED -pp {pp_file}{fe}")
    reproduce.append(f"autosam_evaluate_folder -ref {gt} -pred CV_POSTPROCESSED -djfile {dj}")
    predict = [predict_command(dataset, m, folds, len(members) == 2) for m in members]
    if len(members) == 2:
        a, b = (f"OUTPUT_{m.split('__')[0]}_{m.split('__')[2]}" for m in members)
        predict.append(f"autosam_ensemble -i {a} {b} -o OUTPUT_ENSEMBLE{fe}")
        last = "OUTPUT_ENSEMBLE"
    else:
        last = f"OUTPUT_{members[0].split('__')[0]}_{members[0].split('__')[2]}"
    predict.append(f"autosam_apply_postprocessing -i {last} -o OUTPUT_FINAL -pp {pp_file}{fe}")
    lines += reproduce + ["", "## Predict new cases (INPUT_FOLDER in imagesTs layout):"] + predict
    return {"reproduce_crossval": reproduce, "predict": predict, "text": lines}


def _with_interactive_results(entries: list[TrainedEntry], folds: Sequence[int]) -> tuple[list[TrainedEntry], dict]:
    """The entries whose every fold has an interactive summary, and their pooled figures."""
    kept, figures = [], {}
    for e in entries:
        pooled = crossval_interactive(e.folder, folds)
        if pooled is None:
            missing = [f for f in folds if not interactive_summary_path(e.folder, f).is_file()]
            logger.warning("%s: folds %s have no interactive summary (autosam_evaluate_interactive -d ... -c %s -m %s "
                           "-f N); skipped", e.folder, missing, e.configuration, e.method)
            continue
        kept.append(e)
        figures[e.key] = pooled
    if not kept:
        raise ValueError(f"--rank-by dsc_auc: no trained model has interactive results for folds {list(folds)} "
                         f"(<model>/fold_N/interactive/summary.json); run autosam_evaluate_interactive -d ID -c CONFIG "
                         f"-m METHOD -f N for each fold first")
    return kept, figures


def _fg_dice(candidate: dict) -> float:
    v = candidate["summary"]["foreground_mean"].get("Dice")
    return float("-inf") if v is None else float(v)
