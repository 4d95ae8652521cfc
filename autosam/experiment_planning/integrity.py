"""Dataset integrity check (``--verify_dataset_integrity``).

Checks a raw dataset folder and reports *every* problem at once, each naming the file and what
is wrong: unreadable, truncated or corrupt (compressed stream or NIfTI size), empty, constant or
non-3D images; NaN/inf intensities; missing or
undeclared channels; missing or orphaned label files; image/label (and channel/channel) geometry
mismatches; label values not declared in ``dataset.json``; duplicate case ids (ids that collide
on case-insensitive file systems, ids in both imagesTr and imagesTs, identical scans under two
ids); ``numTraining`` not matching the cases found. It only reads: nothing is written.
"""
from __future__ import annotations

import hashlib
import logging
import multiprocessing
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autosam.io.dataset import DatasetError, load_dataset_json
from autosam.io.labels import LabelManager
from autosam.io.image import SUPPORTED_ENDINGS, ImageGeometry, read_image
from autosam.io.safety import NonFiniteCounter
from autosam.utils.processes import pool_initializer

logger = logging.getLogger(__name__)

GEOMETRY_TOLERANCE = 1e-3  # mm for spacing/origin, absolute for direction cosines


class DatasetIntegrityError(DatasetError):
    """All integrity problems of a dataset; ``problems`` lists them one per entry."""

    def __init__(self, folder: Path, problems: list[str]):
        self.problems = problems
        head = f"{folder}: dataset integrity check found {len(problems)} problem(s):"
        super().__init__("\n  - ".join([head, *problems]))


@dataclass
class _CaseFiles:
    identifier: str
    images: dict[int, Path] = field(default_factory=dict)
    label: Path | None = None


def verify_dataset_integrity(folder: str | Path, num_processes: int = 1, undeclared_labels_to_background: bool = False) -> None:
    """Check the raw dataset ``folder``; raise :class:`DatasetIntegrityError` listing all problems.

    ``undeclared_labels_to_background``: label values missing from ``dataset.json`` are logged
    (preprocessing maps them to background) instead of reported as problems.
    """
    folder = Path(folder)
    problems: list[str] = []
    if not folder.is_dir():
        raise DatasetIntegrityError(folder, [f"{folder}: dataset folder does not exist"])
    try:
        dj = load_dataset_json(folder / "dataset.json")
        declared_labels = set(LabelManager.from_dataset_json(dj, str(folder / "dataset.json")).declared_values)
    except (DatasetError, ValueError) as exc:
        raise DatasetIntegrityError(folder, [str(exc)]) from None
    ending = dj["file_ending"]
    if ending not in SUPPORTED_ENDINGS:
        problems.append(f"{folder / 'dataset.json'}: file_ending {ending!r} is not one of {', '.join(SUPPORTED_ENDINGS)}")
    try:
        n_channels = len(dj["channel_names"])
        channel_ids = sorted(int(k) for k in dj["channel_names"])
        if channel_ids != list(range(n_channels)):
            problems.append(f"{folder / 'dataset.json'}: channel_names keys must be 0..{n_channels - 1}, got {channel_ids}")
    except (TypeError, ValueError):
        problems.append(f"{folder / 'dataset.json'}: channel_names must map '0', '1', ... to names")
        raise DatasetIntegrityError(folder, problems) from None

    train = _collect(folder / "imagesTr", ending, n_channels, problems, required=True)
    _attach_labels(folder / "labelsTr", train, ending, problems)
    test = _collect(folder / "imagesTs", ending, n_channels, problems, required=False)

    if dj.get("numTraining") != len(train):
        problems.append(
            f"{folder / 'dataset.json'}: numTraining is {dj.get('numTraining')!r} but imagesTr holds {len(train)} case(s)"
        )
    _check_duplicate_ids(folder, train, test, problems)

    jobs = [(c, n_channels, declared_labels, undeclared_labels_to_background) for c in train.values()] + [(c, n_channels, None, False) for c in test.values()]
    jobs = [j for j in jobs if len(j[0].images) == n_channels]  # missing channels are already reported
    if num_processes > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(num_processes, len(jobs)), **pool_initializer()) as pool:
            results = pool.map(_check_case, jobs, chunksize=1)
    else:
        results = [_check_case(j) for j in jobs]
    by_digest: dict[str, str] = {}
    for (case, *_), (case_problems, digest) in zip(jobs, results):
        problems.extend(case_problems)
        if digest is not None:
            if digest in by_digest:
                problems.append(
                    f"{case.images[0]}: identical image data as case {by_digest[digest]!r} (duplicate case under two ids)"
                )
            else:
                by_digest[digest] = case.identifier
    if problems:
        raise DatasetIntegrityError(folder, problems)
    logger.info("%s: integrity check passed (%d training, %d test cases)", folder, len(train), len(test))


def _collect(images_dir: Path, ending: str, n_channels: int, problems: list[str], required: bool) -> dict[str, _CaseFiles]:
    if not images_dir.is_dir():
        if required:
            problems.append(f"{images_dir}: folder is missing")
        return {}
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, _CaseFiles] = {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        m = pattern.match(p.name)
        if not m or not p.is_file():
            problems.append(f"{p}: not named <case>_<4-digit channel>{ending}")
            continue
        ident, ch = m.group(1), int(m.group(2))
        if ch >= n_channels:
            problems.append(f"{p}: channel {ch} is not declared in dataset.json channel_names ({n_channels} channel(s))")
            continue
        cases.setdefault(ident, _CaseFiles(ident)).images[ch] = p
    for ident, case in cases.items():
        for ch in range(n_channels):
            if ch not in case.images:
                problems.append(f"{images_dir / f'{ident}_{ch:04d}{ending}'}: missing channel {ch} of case {ident!r}")
    return cases


def _attach_labels(labels_dir: Path, cases: dict[str, _CaseFiles], ending: str, problems: list[str]) -> None:
    if not labels_dir.is_dir():
        problems.append(f"{labels_dir}: folder is missing")
        return
    for p in sorted(labels_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if not p.name.endswith(ending) or not p.is_file():
            problems.append(f"{p}: label files must end with {ending}")
            continue
        ident = p.name[: -len(ending)]
        if ident not in cases:
            problems.append(f"{p}: label without image (no {ident}_0000{ending} in imagesTr)")
            continue
        cases[ident].label = p
    for ident, case in cases.items():
        if case.label is None:
            problems.append(f"{labels_dir / f'{ident}{ending}'}: label file of case {ident!r} is missing")


def _check_duplicate_ids(folder: Path, train: dict, test: dict, problems: list[str]) -> None:
    for name, cases in (("imagesTr", train), ("imagesTs", test)):
        seen: dict[str, str] = {}
        for ident in sorted(cases):
            key = ident.lower()
            if key in seen:
                problems.append(
                    f"{folder / name}: case ids {seen[key]!r} and {ident!r} differ only in letter case "
                    "(duplicates on case-insensitive file systems)"
                )
            seen[key] = ident
    for ident in sorted(set(train) & set(test)):
        problems.append(f"{test[ident].images.get(0, folder / 'imagesTs')}: case id {ident!r} is used in both imagesTr and imagesTs")


def _describe_geometry_mismatch(a: ImageGeometry, b: ImageGeometry) -> str | None:
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {tuple(b.shape)} != {tuple(a.shape)}"
    for name in ("spacing", "origin", "direction"):
        va, vb = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if not np.allclose(va, vb, atol=GEOMETRY_TOLERANCE, rtol=0):
            return f"{name} {tuple(round(float(v), 4) for v in vb)} != {tuple(round(float(v), 4) for v in va)}"
    return None


def _check_case(job) -> tuple[list[str], str | None]:
    """Read one case and return its problems and a digest of channel 0 (None if unreadable)."""
    case, n_channels, declared_labels, to_background = job
    problems: list[str] = []
    reference: ImageGeometry | None = None
    digest = None
    for ch in range(n_channels):
        path = case.images[ch]
        nonfinite = NonFiniteCounter()
        try:
            arr, geom = read_image(path, on_data=nonfinite)
        except (ValueError, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        if arr.size == 0:
            problems.append(f"{path}: image is empty (shape {arr.shape})")
            continue
        if np.issubdtype(arr.dtype, np.floating):
            # ITK's NIfTI reader turns NaN/inf into 0, so NIfTI files are also checked byte-wise
            bad = max(int(np.count_nonzero(~np.isfinite(arr))), nonfinite.count)
            if bad:
                problems.append(f"{path}: {bad} voxel(s) are NaN or infinite")
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        if lo == hi:
            problems.append(f"{path}: image is constant (every voxel is {float(lo):g})")
        if ch == 0:
            reference = geom
            digest = hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()
        elif reference is not None:
            mismatch = _describe_geometry_mismatch(reference, geom)
            if mismatch:
                problems.append(f"{path}: geometry differs from channel 0 ({case.images[0].name}): {mismatch}")
    if declared_labels is not None and case.label is not None:
        problems.extend(_check_label(case.label, reference, case.images[0].name, declared_labels, to_background))
    return problems, digest


def _check_label(path: Path, reference: ImageGeometry | None, ref_name: str, declared: set[int],
                 to_background: bool = False) -> list[str]:
    nonfinite = NonFiniteCounter()  # NaN/inf in a NIfTI label file read as 0 otherwise
    try:
        arr, geom = read_image(path, on_data=nonfinite)
    except (ValueError, FileNotFoundError) as exc:
        return [str(exc)]
    problems = [f"{path}: label values must be integers, found {nonfinite.count} NaN or infinite voxel(s)"] \
        if nonfinite.count else []
    if reference is not None:
        mismatch = _describe_geometry_mismatch(reference, geom)
        if mismatch:
            problems.append(f"{path}: label geometry differs from its image ({ref_name}): {mismatch}")
    values = np.unique(arr)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            problems.append(f"{path}: label values must be integers, found {[float(v) for v in values[values != np.round(values)][:5]]}")
            return problems
    undeclared = sorted(int(v) for v in values if int(v) not in declared)
    if undeclared and to_background:
        logger.warning("%s: label value(s) %s are not declared in dataset.json; preprocessing maps them to background",
                       path, undeclared)
    elif undeclared:
        problems.append(
            f"{path}: label value(s) {undeclared} are not declared in dataset.json labels (declared: {sorted(declared)})"
        )
    return problems
