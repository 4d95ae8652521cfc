"""nnU-Net v2 raw dataset format: locating datasets, reading dataset.json, listing cases."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autosam import paths
from autosam.io.labels import LabelError, LabelManager
from autosam.io.safety import path_text
from autosam.utils.files import read_json

DATASET_RE = re.compile(r"^Dataset(\d{3})_(.+)\Z")  # \Z: "$" would let a trailing newline through
#: A dataset name from an untrusted source (a model zip), matched with ``fullmatch``.
SAFE_DATASET_RE = re.compile(r"Dataset(\d{3})_[A-Za-z0-9][A-Za-z0-9_.\-]*")
logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A problem with a dataset; the message names the file and the problem."""


def dataset_name_from_id(dataset: str | int, search_in: list[Path] | None = None) -> str:
    """Resolve ``17``, ``"17"`` or ``"Dataset017_Liver"`` to ``"Dataset017_Liver"``.

    Looks in the raw, preprocessed and results folders (in that order) for a matching name.
    """
    text = str(dataset)
    if DATASET_RE.match(text):
        return text
    if not text.isdigit():
        raise DatasetError(f"dataset {text!r}: give an integer id (17) or a full name (Dataset017_Name)")
    prefix = f"Dataset{int(text):03d}_"
    folders = search_in if search_in is not None else [paths.raw_dir(), paths.preprocessed_dir(), paths.results_dir()]
    found = set()
    for folder in folders:
        if Path(folder).is_dir():
            found.update(p.name for p in Path(folder).iterdir() if p.name.startswith(prefix) and p.is_dir())
    if not found:
        raise DatasetError(f"no dataset with id {int(text)} ({prefix}*) in {', '.join(str(f) for f in folders)}")
    if len(found) > 1:
        raise DatasetError(f"dataset id {int(text)} is ambiguous: {sorted(found)}")
    return found.pop()


@dataclass
class RawCase:
    identifier: str
    images: list[Path]  # one per channel, in channel order
    label: Path | None


@dataclass
class RawDataset:
    """A raw dataset folder with its parsed ``dataset.json``."""

    folder: Path
    dataset_json: dict
    cases: list[RawCase] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def label_manager(self) -> LabelManager:
        return LabelManager.from_dataset_json(self.dataset_json, str(self.folder / "dataset.json"))

    @property
    def labels(self) -> dict[str, int | tuple[int, ...]]:
        return self.label_manager.label_dict

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background and ``ignore`` (those inside regions included)."""
        return self.label_manager.foreground_labels


REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


def labels_of(dataset_json: dict, source: str = "dataset.json") -> dict[str, int | tuple[int, ...]]:
    """Label name -> integer value, or a tuple of values for a region (see :mod:`autosam.io.labels`)."""
    try:
        return LabelManager.from_dataset_json(dataset_json, source).label_dict
    except LabelError as exc:
        raise DatasetError(str(exc)) from None


def load_dataset_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json is missing")
    dj = read_json(path)
    missing = [k for k in REQUIRED_KEYS if k not in dj]
    if missing:
        raise DatasetError(f"{path}: missing required key(s) {missing}")
    labels_of(dj, str(path))  # validates labels, regions_class_order and the ignore label
    return dj


def open_raw_dataset(dataset: str | int, raw_root: Path | None = None) -> RawDataset:
    """Find a raw dataset by id or name and list its training cases (imagesTr + labelsTr).

    No case is dropped silently: files in ``imagesTr`` that are not named
    ``<case>_<4-digit channel><ending>`` and label files without an image are reported with a
    warning, and when the number of cases differs from ``numTraining`` a :class:`DatasetError`
    lists those files (the cases at fault) and stops.
    """
    root = Path(raw_root) if raw_root else paths.raw_dir()
    name = dataset_name_from_id(dataset, [root])
    folder = root / name
    dj = load_dataset_json(folder / "dataset.json")
    ds = RawDataset(folder, dj)
    strays: list[str] = []
    ds.cases = list_cases(folder / "imagesTr", dj, folder / "labelsTr", strays=strays)
    if dj["numTraining"] != len(ds.cases):
        found = ", ".join(c.identifier for c in ds.cases[:20]) + (", ..." if len(ds.cases) > 20 else "")
        problems = strays or [f"{folder / 'imagesTr'}: no stray file; the cases found are {found or 'none'}"]
        raise DatasetError(
            f"{folder / 'dataset.json'}: numTraining is {dj['numTraining']!r} but {len(ds.cases)} training case(s) "
            f"were found; cases at fault:\n  - " + "\n  - ".join(problems)
            + "\nRename or remove these files, or correct numTraining."
        )
    return ds


def list_cases(images_dir: Path, dataset_json: dict, labels_dir: Path | None = None,
               strays: list[str] | None = None) -> list[RawCase]:
    """Group ``<case>_<CCCC><ending>`` files into cases. Missing channels raise ``DatasetError``.

    Files that belong to no case (misnamed images, label files without an image in ``labels_dir``)
    are logged as a warning and, when ``strays`` is given, appended to it, one message each.
    """
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: folder is missing")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    by_case: dict[str, dict[int, Path]] = {}
    skipped: list[str] = []
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        m = pattern.match(p.name)
        if not m:
            skipped.append(f"{path_text(p)}: ignored, not named <case>_<4-digit channel>{ending} "
                           f"(e.g. {path_text(_example_name(p.name, ending))})")
            continue
        by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
    cases = []
    for ident, channels in sorted(by_case.items()):
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            raise DatasetError(
                f"{images_dir}: case {ident!r} is missing channel(s) "
                + ", ".join(f"{ident}_{c:04d}{ending}" for c in missing)
            )
        extra = sorted(set(channels) - set(range(n_channels)))
        if extra:
            raise DatasetError(f"{channels[extra[0]]}: channel {extra[0]} not declared in dataset.json channel_names")
        label = None
        if labels_dir is not None:
            label = labels_dir / f"{ident}{ending}"
            if not label.is_file():
                raise DatasetError(f"{label}: label file for case {ident!r} is missing")
        cases.append(RawCase(ident, [channels[c] for c in range(n_channels)], label))
    if labels_dir is not None and labels_dir.is_dir():
        for p in sorted(labels_dir.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            ident = p.name[: -len(ending)] if p.name.endswith(ending) else None
            if ident not in by_case:
                skipped.append(f"{path_text(p)}: ignored, label without image (no {path_text(ident or p.name)}_0000{ending} "
                               f"in {path_text(images_dir)})")
    for message in skipped:
        logger.warning("%s", message)
    if strays is not None:
        strays.extend(skipped)
    return cases


def _example_name(name: str, ending: str) -> str:
    stem = name[: -len(ending)] if name.endswith(ending) else name.split(".")[0]
    return f"{stem}_0000{ending}"


def list_prediction_inputs(folder: Path, dataset_json: dict) -> list[RawCase]:
    """Cases of an inference input folder (same naming as imagesTr, no labels). Each image's name
    and header are checked here, before a prediction writes anything
    (:func:`autosam.io.safety.check_image_header`: a name the reader can open, sizes of at least 1,
    a voxel count within the limit)."""
    from autosam.io.safety import check_image_header

    cases = list_cases(Path(folder), dataset_json, None)
    for case in cases:
        for image in case.images:
            check_image_header(image)
    return cases


# ------------------------------------------------------------------------------ label values
def undeclared_label_values(seg: np.ndarray, declared: set[int]) -> list[int]:
    """Values present in the label map ``seg`` that ``declared`` lacks (sorted)."""
    if seg.size == 0:
        return []
    if np.issubdtype(seg.dtype, np.integer):
        lo, hi = int(seg.min()), int(seg.max())
        if hi - lo < 1 << 20:  # counting is much faster than sorting the volume; in pieces, to bound memory
            seen = np.zeros(hi - lo + 1, dtype=bool)
            flat = seg.reshape(-1)
            for start in range(0, flat.size, 1 << 22):
                piece = flat[start:start + (1 << 22)].astype(np.intp)
                piece -= lo
                seen |= np.bincount(piece, minlength=seen.size).astype(bool)
            present = np.flatnonzero(seen) + lo
        else:
            present = np.unique(seg)
    else:
        present = np.unique(seg[np.isfinite(seg)])
    return sorted(v for v in (int(x) for x in present) if v not in declared)


def undeclared_labels_message(found: dict, declared: set[int]) -> str:
    """One error for ``{label file: undeclared values}``: what is wrong and the ways out."""
    lines = [f"{path}: label value(s) {values} are not declared in dataset.json labels" for path, values in found.items()]
    return (f"{len(found)} label file(s) hold values that dataset.json does not declare (declared: {sorted(declared)}):\n  - "
            + "\n  - ".join(lines)
            + "\nDeclare them in dataset.json 'labels', correct the files, or pass --undeclared_labels_to_background "
            "to map them to background (0).")
