"""On-disk layout of one preprocessed case.

``<folder>/<case>.npy``      image, float32, C x Z x Y x X (memory-mappable)
``<folder>/<case>_seg.npy``  segmentation, int16, 1 x Z x Y x X (-1 outside the non-zero crop is not used)
``<folder>/<case>_locations.npz``  ``class_locations`` below, one int32 N x 3 array per label
``<folder>/<case>.json``     properties (written last: a case without it is incomplete and redone)

Properties: ``geometry`` (the original image's :class:`~autosam.io.image.ImageGeometry` as dict),
``shape_before_cropping``, ``bbox_used_for_cropping`` ([[z0, z1], [y0, y1], [x0, x1]], half-open),
``shape_after_cropping_and_before_resampling``, ``spacing`` (after resampling, z y x),
``class_locations`` ({label: [[z, y, x], ...]} sampled foreground voxels for oversampling).

The class locations (up to 10,000 voxels per label) are kept out of the JSON file: as JSON they made
it as large as the image and took half of a small dataset's preprocessing time to write. The JSON
file names their file (``class_locations_file``) and labels (``class_location_labels``), and
:func:`load_case` puts them back as ``class_locations`` ({label: N x 3 array}). Folders written
before keep them in the JSON file and load as they are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autosam.utils.files import atomic_path, read_json, save_npy, write_json


def case_paths(folder: Path, key: str) -> tuple[Path, Path, Path]:
    folder = Path(folder)
    return folder / f"{key}.npy", folder / f"{key}_seg.npy", folder / f"{key}.json"


def locations_path(folder: Path, key: str) -> Path:
    return Path(folder) / f"{key}_locations.npz"


def save_case(folder: Path, key: str, data: np.ndarray, seg: np.ndarray | None, properties: dict) -> None:
    """Write one case atomically; the properties file is written last and marks completion."""
    img_p, seg_p, prop_p = case_paths(folder, key)
    Path(folder).mkdir(parents=True, exist_ok=True)
    prop_p.unlink(missing_ok=True)  # a re-write invalidates the case until it is complete again
    save_npy(img_p, np.ascontiguousarray(data, dtype=np.float32))
    if seg is not None:
        save_npy(seg_p, np.ascontiguousarray(seg, dtype=np.int16))
    properties = dict(properties)
    locations = properties.pop("class_locations", None)
    if isinstance(locations, dict):
        arrays = {str(label): np.asarray(v, dtype=np.int32).reshape(-1, 3) for label, v in locations.items()}
        with atomic_path(locations_path(folder, key), ".npz") as tmp:
            np.savez(tmp, **arrays)
        properties["class_locations_file"] = locations_path(folder, key).name
        properties["class_location_labels"] = sorted(arrays, key=int)
    write_json(prop_p, properties)


def read_properties(folder: Path, key: str, locations: bool = True) -> dict:
    """The properties of a case, with ``class_locations`` ({label: N x 3 int32 array}) when asked."""
    prop_p = case_paths(folder, key)[2]
    props = read_json(prop_p)
    name = props.get("class_locations_file")
    if locations and name:
        try:
            with np.load(Path(folder) / name) as npz:
                props["class_locations"] = {label: npz[label] for label in npz.files}
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{Path(folder) / name}: class locations of case {key!r} unreadable ({exc}); re-run "
                             "autosam_preprocess") from None
    return props


def is_complete(folder: Path, key: str, needs_seg: bool = True) -> bool:
    img_p, seg_p, prop_p = case_paths(folder, key)
    return prop_p.is_file() and img_p.is_file() and (seg_p.is_file() or not needs_seg)


def load_case(folder: Path, key: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict]:
    img_p, seg_p, prop_p = case_paths(folder, key)
    if not prop_p.is_file():
        raise FileNotFoundError(f"{prop_p}: preprocessed case {key!r} is missing or incomplete; re-run autosam_preprocess")
    mode = "r" if mmap else None
    data = np.load(img_p, mmap_mode=mode)
    seg = np.load(seg_p, mmap_mode=mode) if seg_p.is_file() else None
    return data, seg, read_properties(folder, key)


def list_cases(folder: Path) -> list[str]:
    """Identifiers of the complete cases in a preprocessed folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    keys = [p.name[: -len(".json")] for p in folder.glob("*.json") if not p.name.startswith(".")]
    return sorted(k for k in keys if (folder / f"{k}.npy").is_file())


def undeclared_values_of_cases(folder: Path, keys, declared) -> dict[str, list[int]]:
    """``{segmentation file: values}`` for the cases of ``keys`` whose stored segmentation holds
    label values outside ``declared`` (a folder written before undeclared labels were refused).

    Cheap: the properties' ``class_locations`` name every foreground value present (up to a few
    thousand voxels each); a case whose properties lack them is read once."""
    from autosam.io.dataset import undeclared_label_values

    declared = {int(v) for v in declared}
    found: dict[str, list[int]] = {}
    for key in keys:
        _, seg_p, prop_p = case_paths(folder, key)
        props = read_json(prop_p)
        locations = props.get("class_locations")
        if isinstance(props.get("class_location_labels"), list):
            values = sorted(int(v) for v in props["class_location_labels"] if int(v) not in declared)
        elif isinstance(locations, dict):
            values = sorted(int(v) for v in locations if int(v) not in declared)
        elif seg_p.is_file():
            values = undeclared_label_values(np.load(seg_p, mmap_mode="r"), declared | {-1})
        else:
            values = []
        if values:
            found[str(seg_p)] = values
    return found
