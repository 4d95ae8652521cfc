"""Ensembling saved probabilities of several methods/configurations (``autosam_ensemble``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from autosam.io.image import ImageGeometry, write_image
from autosam.io.labels import paint_regions
from autosam.utils.files import read_json, save_npz, write_json

logger = logging.getLogger(__name__)


def probability_cases(folder: Path) -> set[str]:
    """Case identifiers with a ``<case>.npz`` + ``<case>.json`` pair in ``folder``."""
    folder = Path(folder)
    return {p.name[:-4] for p in folder.glob("*.npz") if not p.name.startswith(".") and (folder / f"{p.name[:-4]}.json").is_file()}


def load_probabilities(folder: Path, case: str) -> tuple[np.ndarray, dict]:
    path = Path(folder) / f"{case}.npz"
    try:
        with np.load(path) as f:
            probs = f["probabilities"].astype(np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read saved probabilities ({exc})") from None
    return probs, read_json(Path(folder) / f"{case}.json")


def ensemble_case(folders: Sequence[Path], case: str) -> tuple[np.ndarray, ImageGeometry, dict]:
    """Mean of the probabilities of one case over ``folders`` (all must share geometry and classes)."""
    total = None
    meta0 = None
    for folder in folders:
        probs, meta = load_probabilities(folder, case)
        if total is None:
            total, meta0 = probs, meta
            continue
        if probs.shape != total.shape:
            raise ValueError(f"{Path(folder) / (case + '.npz')}: probabilities of shape {probs.shape} do not match "
                             f"{Path(folders[0]) / (case + '.npz')} ({total.shape})")
        total += probs
    total /= len(folders)
    return total, ImageGeometry.from_dict(meta0["geometry"]), meta0


def ensemble_folders(input_folders: Sequence[str | Path], output_folder: str | Path, file_ending: str = ".nii.gz",
                     save_probabilities: bool = False, progress=None) -> list[str]:
    """Average ``<case>.npz`` probabilities over the input folders, write label maps (original
    geometry) to ``output_folder``. Only cases present in every folder are ensembled; the others
    are reported. Returns the ensembled case ids."""
    folders = [Path(f) for f in input_folders]
    if len(folders) < 2:
        raise ValueError("autosam_ensemble needs at least two input folders")
    sets = []
    for f in folders:
        if not f.is_dir():
            raise FileNotFoundError(f"{f}: input folder does not exist")
        cases = probability_cases(f)
        if not cases:
            raise ValueError(f"{f}: no saved probabilities (<case>.npz + <case>.json); predict or train with --save_probabilities/--npz")
        sets.append(cases)
    common = sorted(set.intersection(*sets))
    missing = sorted(set.union(*sets) - set(common))
    if missing:
        logger.warning("ensemble: %d case(s) not in every folder are skipped, e.g. %s", len(missing), missing[0])
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(common):
        probs, geometry, meta = ensemble_case(folders, case)
        if meta.get("regions_class_order") is not None:  # sigmoid per region: paint in regions_class_order
            seg = paint_regions(probs, meta["regions_class_order"])
        else:
            values = np.asarray(meta.get("class_values", list(range(probs.shape[0]))))
            seg = values[np.argmax(probs, axis=0)].astype(np.uint8 if values.max() < 256 else np.uint16)
        write_image(out / f"{case}{file_ending}", seg, geometry)
        if save_probabilities:
            save_npz(out / f"{case}.npz", probabilities=probs)
            write_json(out / f"{case}.json", {**meta, "label_file": f"{case}{file_ending}", "ensemble_of": [str(f) for f in folders]})
        if progress:
            progress(i + 1, len(common))
    return common
