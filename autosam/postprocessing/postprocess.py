"""Post-processing: keep the largest connected component, determined on cross-validation as nnU-Net
does (kept only where the foreground-mean Dice rises and no class drops)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from autosam.evaluation.evaluate import evaluate_folder
from autosam.io.image import read_image, write_image
from autosam.io.labels import LabelManager
from autosam.utils.files import read_json, write_json

logger = logging.getLogger(__name__)
STRUCTURE = ndimage.generate_binary_structure(3, 3)  # 26-connectivity, as in the fingerprint


def keep_largest_component(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Remove every connected component of the union of ``labels`` except the largest one
    (removed voxels become background)."""
    mask = np.isin(seg, list(labels))
    comp, n = ndimage.label(mask, structure=STRUCTURE)
    if n <= 1:
        return seg
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    out = seg.copy()
    out[(comp != int(np.argmax(sizes))) & mask] = 0
    return out


def apply_rules(seg: np.ndarray, rules: list[list[int]]) -> np.ndarray:
    for labels in rules:
        seg = keep_largest_component(seg, labels)
    return seg


def apply_postprocessing_folder(input_folder: str | Path, output_folder: str | Path, rules: list[list[int]],
                                file_ending: str = ".nii.gz") -> list[Path]:
    """Apply ``rules`` (each a label group whose largest component is kept) to every label map."""
    src, dst = Path(input_folder), Path(output_folder)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: input folder does not exist")
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for p in sorted(src.glob(f"*{file_ending}")):
        if p.name.startswith("."):
            continue
        seg, geom = read_image(p)
        write_image(dst / p.name, apply_rules(seg, rules), geom)
        written.append(dst / p.name)
    return written


def _dice_by_label(summary: dict) -> dict[str, float]:
    return {k: (v.get("Dice") if v.get("Dice") is not None else float("nan")) for k, v in summary["mean"].items()}


def _better(new: dict, old: dict, new_fg: float, old_fg: float, only: Sequence[str] | None = None) -> bool:
    """nnU-Net's rule: the foreground mean rises and no class drops (``only``: the classes that must rise)."""
    if only is not None:
        return all(new[k] > old[k] for k in only if not np.isnan(old[k])) and all(new[k] >= old[k] - 1e-9 for k in new if not np.isnan(old[k]))
    return new_fg > old_fg and all(new[k] >= old[k] - 1e-9 for k in new if not np.isnan(old[k]))


def determine_postprocessing(pred_folder: str | Path, ref_folder: str | Path, dataset_json_path: str | Path,
                             work_folder: str | Path | None = None, num_processes: int = 1) -> dict:
    """Try keep-largest-component for all foreground as one region, then for each class alone;
    keep each step only where cross-validation Dice improves and no class drops. Returns (and
    writes ``postprocessing.json`` into ``pred_folder``) ``{"rules": [[labels], ...], ...}``."""
    pred_folder, ref_folder = Path(pred_folder), Path(ref_folder)
    dj = read_json(dataset_json_path)
    ending = dj["file_ending"]
    label_manager = LabelManager.from_dataset_json(dj, str(dataset_json_path))
    fg = label_manager.foreground_labels  # never the ignore label
    work = Path(work_folder) if work_folder else pred_folder.parent / f".{pred_folder.name}_pp_work"
    base = evaluate_folder(ref_folder, pred_folder, dataset_json_path, num_processes=num_processes, compute_hd95=False)
    best_dice, best_fg = _dice_by_label(base), base["foreground_mean"]["Dice"]
    rules: list[list[int]] = []
    log = [{"step": "none", "foreground_mean_dice": best_fg}]
    candidates: list[tuple[list[int], Sequence[str] | None]] = []
    if len(fg) > 1:
        candidates.append((fg, None))
    # a region-based dataset is scored per region, not per label: no per-label "must rise" condition
    candidates += [([lab], None if label_manager.has_regions else [str(lab)]) for lab in fg]
    current = pred_folder
    for labels, only in candidates:
        trial = work / f"trial_{'_'.join(map(str, labels))}"
        apply_postprocessing_folder(current, trial, [labels], ending)
        s = evaluate_folder(ref_folder, trial, dataset_json_path, num_processes=num_processes, compute_hd95=False)
        dice, fgm = _dice_by_label(s), s["foreground_mean"]["Dice"]
        kept = _better(dice, best_dice, fgm, best_fg, only)
        log.append({"step": f"largest component of {labels}", "foreground_mean_dice": fgm, "kept": kept})
        if kept:
            rules.append(labels)
            best_dice, best_fg, current = dice, fgm, trial
    result = {"rules": rules, "foreground_mean_dice_before": base["foreground_mean"]["Dice"],
              "foreground_mean_dice_after": best_fg, "trials": log}
    write_json(pred_folder / "postprocessing.json", result)
    shutil.rmtree(work, ignore_errors=True)
    return result
