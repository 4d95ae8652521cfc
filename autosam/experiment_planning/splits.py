"""Cross-validation splits (``splits_final.json``, nnU-Net format).

The file is a list with one ``{"train": [...], "val": [...]}`` per fold. It is created once,
seeded (5 folds, seed 12345 by default), and then kept: a user may edit it (other folds, a fixed
hold-out) and autosam uses it as it is, after checking that it names only cases that exist.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from autosam.io.dataset import DatasetError
from autosam.utils.files import read_json, write_json

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"


def make_splits(case_ids, seed: int = 12345, n_folds: int = 5) -> list[dict[str, list[str]]]:
    """Shuffle the sorted case ids with ``seed`` and deal them into ``n_folds`` validation sets.

    With fewer cases than folds, each case is its own validation fold; a single case is used for
    both training and validation (there is nothing else to validate on).
    """
    ids = sorted(set(str(c) for c in case_ids))
    if not ids:
        raise ValueError("make_splits: no case ids")
    if n_folds < 1:
        raise ValueError(f"make_splits: n_folds must be >= 1, got {n_folds}")
    if len(ids) == 1:
        logger.warning("only one case: fold 0 trains and validates on %s", ids[0])
        return [{"train": list(ids), "val": list(ids)}]
    if len(ids) < n_folds:
        logger.warning("%d cases < %d folds: using %d folds", len(ids), n_folds, len(ids))
        n_folds = len(ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    splits = []
    for val_idx in np.array_split(order, n_folds):
        val = sorted(ids[i] for i in val_idx)
        vset = set(val)
        splits.append({"train": [c for c in ids if c not in vset], "val": val})
    return splits


def load_splits(path: str | Path, case_ids=None) -> list[dict[str, list[str]]]:
    """Read and validate a splits file; unknown case ids raise :class:`DatasetError` naming them."""
    path = Path(path)
    try:
        splits = read_json(path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    if not isinstance(splits, list) or not splits:
        raise DatasetError(f"{path}: expected a non-empty list of {{'train': [...], 'val': [...]}} (one per fold)")
    for i, fold in enumerate(splits):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            raise DatasetError(f"{path}: fold {i} must be an object with 'train' and 'val' lists")
        for key in ("train", "val"):
            if not isinstance(fold[key], list) or not all(isinstance(c, str) for c in fold[key]):
                raise DatasetError(f"{path}: fold {i} '{key}' must be a list of case ids (strings)")
        if not fold["train"]:
            raise DatasetError(f"{path}: fold {i} has no training cases")
    if case_ids is not None:
        known = set(str(c) for c in case_ids)
        for i, fold in enumerate(splits):
            unknown = sorted(set(fold["train"]) - known) + sorted(set(fold["val"]) - known)
            if unknown:
                raise DatasetError(
                    f"{path}: fold {i} names case id(s) that are not in the dataset: {unknown[:10]}"
                    + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
                    + "; fix or delete the file (it is re-created when missing)"
                )
        covered = set().union(*(set(f["train"]) | set(f["val"]) for f in splits))
        unused = sorted(known - covered)
        if unused:
            logger.warning("%s: %d case(s) appear in no fold: %s", path, len(unused), unused[:10])
    for i, fold in enumerate(splits):
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both and len(fold["train"]) > 1:
            logger.warning("%s: fold %d trains and validates on the same case(s) %s", path, i, both[:10])
    return splits


def get_or_create_splits(preprocessed_dataset_folder, case_ids, seed: int = 12345, n_folds: int = 5):
    """Return the splits of ``<folder>/splits_final.json``, creating the file when missing.

    An existing (possibly user-edited) file is kept as it is, after validation against ``case_ids``.
    """
    path = Path(preprocessed_dataset_folder) / SPLITS_FILE
    if path.is_file():
        splits = load_splits(path, case_ids)
        logger.info("using existing %s (%d folds)", path, len(splits))
        return splits
    splits = make_splits(case_ids, seed=seed, n_folds=n_folds)
    write_json(path, splits)
    logger.info("created %s (%d folds, seed %d)", path, len(splits), seed)
    return splits
