"""Cross-validation figures of the interactive protocol for ``autosam_find_best_configuration --rank-by dsc_auc``.

They come from ``<model folder>/fold_N/interactive/summary.json``, written by
``autosam_evaluate_interactive -d ID -c CONFIG -m METHOD -f N`` (without ``-o``). Over the folds, each
figure is the mean over every validation case of the folds (each fold's mean weighted by its number
of cases), as the automatic ranking pools the folds' cases.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autosam.interactive.evaluator import INTERACTIVE_FOLDER, SUMMARY_FILE, read_summary

FIGURES = ("dsc_auc", "nsd_auc", "final_dice", "final_nsd")


def interactive_summary_path(model_folder: str | Path, fold: int | str) -> Path:
    return Path(model_folder) / f"fold_{fold}" / INTERACTIVE_FOLDER / SUMMARY_FILE


def crossval_interactive(model_folder: str | Path, folds: Sequence[int | str]) -> dict | None:
    """The folds' interactive figures pooled over their cases, or None when a fold has no summary.
    Folds evaluated with other settings (number of clicks, tolerance) are an error naming them."""
    paths = [interactive_summary_path(model_folder, f) for f in folds]
    if not all(p.is_file() for p in paths):
        return None
    summaries = [read_summary(p) for p in paths]
    keys = {(s["num_clicks"], s["tolerance_mm"], s["mode"]) for s in summaries}
    if len(keys) > 1:
        raise ValueError(f"{model_folder}: the folds' interactive summaries differ in clicks, tolerance or mode "
                         f"({sorted(keys)}); evaluate them with the same settings")
    weights = [max(1, s["num_cases"] - s.get("num_cases_without_structure", 0)) for s in summaries]
    total = sum(weights)

    def pooled(values):
        return sum(w * v for w, v in zip(weights, values)) / total

    out = {k: pooled([s[k] for s in summaries]) for k in FIGURES}
    out["dice_per_step"] = [pooled(col) for col in zip(*[s["dice_per_step"] for s in summaries])]
    out.update(mode=summaries[0]["mode"], num_clicks=summaries[0]["num_clicks"], num_cases=sum(s["num_cases"] for s in summaries),
               summaries=[str(p) for p in paths])
    return out
