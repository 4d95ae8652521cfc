"""Whose is an output folder: prediction commands write only into a folder that is new, empty or
one of their own, so that ``-o`` pointed by mistake at a raw dataset (its ``labelsTs``, its
``dataset.json``) does not overwrite it."""
from __future__ import annotations

from pathlib import Path

#: Written by every prediction into its output folder (before any label file).
PREDICTION_MARKER = "predict_args.json"


def is_prediction_folder(folder: Path) -> bool:
    """True for a folder a prediction wrote (its ``predict_args.json``) or is writing (a lock file
    of autosam's, taken before anything is written)."""
    return (folder / PREDICTION_MARKER).is_file() or any(folder.glob(".autosam*.lock"))


def check_output_folder(folder: str | Path, overwrite: bool = False, flag: str = "--overwrite_output") -> None:
    """Refuse a non-empty folder that autosam did not create as a prediction folder, unless
    ``overwrite``. A missing or empty folder, or a previous prediction's, is fine (a file or an
    unwritable path is left to the write, which names it)."""
    from autosam.io.safety import path_text

    folder = Path(folder)
    if overwrite or not folder.is_dir() or is_prediction_folder(folder):
        return
    entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        return
    shown = ", ".join(path_text(e) for e in entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
    raise ValueError(
        f"{path_text(folder)}: the output folder is not empty and is not a prediction folder (no {PREDICTION_MARKER}; "
        f"it holds {shown}); a prediction would overwrite its dataset.json and same-named label files. Choose a new "
        f"or empty folder, or pass {flag} to write into it anyway")
