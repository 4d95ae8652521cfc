"""Preprocessing: crop to non-zero, normalise, resample, store (one case per worker task).

:func:`preprocess_case` is the single implementation used for training data and at inference.
:func:`preprocess_dataset` runs it over a dataset: configurations that share a ``data_identifier``
(equal spacing) are computed once; workers are started with ``spawn`` so they import only numpy,
scipy and SimpleITK (not torch or the plugins the parent may hold); every file is written
atomically and a case counts as done only once its properties file exists, so a re-run redoes
exactly the incomplete cases. A change of the plans' preprocessing parameters (spacing,
normalisation, resampling) invalidates the folder's cases. Label values that ``dataset.json``
does not declare stop the run before anything is written (or, when asked, become background).
"""
from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from autosam import paths
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME, Plans, normalize_configuration
from autosam.io.dataset import DatasetError, undeclared_label_values, undeclared_labels_message
from autosam.io.image import ImageGeometry, read_case_with_label, read_image
from autosam.preprocessing import storage
from autosam.preprocessing.cropping import crop_to_nonzero, nonzero_mask
from autosam.preprocessing.normalization import ZSCORE_CLIP_PERCENTILES, normalize
from autosam.preprocessing.resampling import compute_new_shape, resample_image, resample_segmentation, separate_axis
from autosam.utils.files import atomic_path, read_json, write_json
from autosam.utils.locks import lock_folder
from autosam.utils.parallel import imap_jobs

logger = logging.getLogger(__name__)

#: Foreground voxels stored per class for oversampling (nnU-Net: 10,000; it also keeps >= 1 %).
CLASS_LOCATIONS_PER_CLASS = 10_000
CONFIG_FILE = "preprocessing_config.json"


# ------------------------------------------------------------------------------ one case
def preprocess_case(image_paths: Sequence[str | Path], plans: Plans, configuration_name: str,
                    label_path: str | Path | None = None, seed_key: str | None = None,
                    undeclared_labels_to_background: bool = False):
    """Read, crop, normalise and resample one case.

    A label value the plans' labels do not declare is a ``ValueError`` naming the label file, or
    with ``undeclared_labels_to_background`` is set to 0 (background).

    :returns: ``(data, seg, properties)``: C x Z x Y x X float32, 1 x Z x Y x X int16 (``None``
        without ``label_path``), and the properties dict described in :mod:`autosam.preprocessing.storage`.
    """
    data, seg, geometry = read_case_with_label(image_paths, label_path)
    if seg is not None:
        declared = set(plans.label_manager.declared_values)
        undeclared = undeclared_label_values(seg, declared)
        if undeclared and not undeclared_labels_to_background:
            raise DatasetError(undeclared_labels_message({label_path: undeclared}, declared))
        if undeclared:
            seg = np.where(np.isin(seg, undeclared), 0, seg)
    if data.shape[0] != plans.num_channels:
        raise ValueError(f"{image_paths[0]}: {data.shape[0]} channel file(s) given, the plans expect {plans.num_channels}")
    return preprocess_arrays(data, geometry, plans, configuration_name, seg, seed_key or str(image_paths[0]))


def geometry_of_array(image: np.ndarray, properties: dict) -> ImageGeometry:
    """The :class:`ImageGeometry` of an in-memory C x Z x Y x X image: ``properties["spacing"]``
    (z, y, x, mm) is required; ``origin`` and ``direction`` (SimpleITK's x, y, z convention) default
    to 0 and the identity (they matter only when the prediction is written to a file). A
    ``properties["geometry"]`` dict (as in autosam's case properties) is used as it is."""
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be C x Z x Y x X (4 axes), got shape {image.shape}")
    if "geometry" in properties:
        geometry = ImageGeometry.from_dict(properties["geometry"])
    else:
        if "spacing" not in properties:
            raise ValueError("properties need 'spacing' (z, y, x in mm) of the image")
        geometry = ImageGeometry(spacing=tuple(float(s) for s in properties["spacing"]),
                                 origin=tuple(float(o) for o in properties.get("origin", (0.0, 0.0, 0.0))),
                                 direction=tuple(float(d) for d in properties.get("direction", (1, 0, 0, 0, 1, 0, 0, 0, 1))),
                                 shape=tuple(int(s) for s in image.shape[1:]))
    if len(geometry.spacing) != 3 or any(not s > 0 for s in geometry.spacing):
        raise ValueError(f"spacing must be three positive numbers (z, y, x), got {list(geometry.spacing)}")
    if tuple(geometry.shape) != tuple(image.shape[1:]):
        raise ValueError(f"properties' geometry shape {list(geometry.shape)} differs from the image's {list(image.shape[1:])}")
    return geometry


def preprocess_arrays(data: np.ndarray, geometry: ImageGeometry | dict, plans: Plans, configuration_name: str,
                      seg: np.ndarray | None = None, seed_key: str = "array"):
    """:func:`preprocess_case` for an image already in memory (C x Z x Y x X, any real dtype) with
    its geometry (an :class:`ImageGeometry`, or properties with ``spacing``, see
    :func:`geometry_of_array`). The same steps as from files, so the same image gives the same
    preprocessed data. ``data`` is not modified."""
    conf = plans.configuration(configuration_name)
    if not isinstance(geometry, ImageGeometry):
        geometry = geometry_of_array(data, geometry)
    if data.ndim != 4:
        raise ValueError(f"image must be C x Z x Y x X (4 axes), got shape {data.shape}")
    if data.shape[0] != plans.num_channels:
        raise ValueError(f"image has {data.shape[0]} channel(s), the plans expect {plans.num_channels}")
    shape_before = [int(s) for s in data.shape[1:]]
    cropped, cseg, bbox = crop_to_nonzero(data, seg)
    data = np.array(cropped, dtype=np.float32)  # own copy; frees the uncropped arrays
    seg = np.array(cseg, dtype=np.int16) if cseg is not None else None
    del cropped, cseg
    shape_after_crop = [int(s) for s in data.shape[1:]]

    mask = nonzero_mask(data) if any(conf.use_mask_for_norm) else None
    normalize(data, conf.normalization_schemes, conf.use_mask_for_norm,
              plans.foreground_intensity_properties_per_channel, mask)
    del mask

    spacing = list(geometry.spacing)
    target = list(conf.spacing)
    new_shape = compute_new_shape(shape_after_crop, spacing, target)
    res = conf.resampling
    axis = separate_axis(spacing, target, res.separate_z_anisotropy_threshold)
    data = resample_image(data, new_shape, axis, res.image_order, res.image_order_z)
    if seg is not None:
        seg = resample_segmentation(seg[0], new_shape, axis, res.label_order_z)[None].astype(np.int16, copy=False)

    properties = {
        "geometry": geometry.to_dict(),
        "shape_before_cropping": shape_before,
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping_and_before_resampling": shape_after_crop,
        "spacing": [float(s) for s in target],
        "separate_axis": axis,
        "class_locations": sample_class_locations(seg[0], seed_key,
                                                  exclude=plans.label_manager.ignore_label) if seg is not None else {},
    }
    return data, seg, properties


def sample_class_locations(seg: np.ndarray, seed_key: str, per_class: int = CLASS_LOCATIONS_PER_CLASS,
                           exclude: int | None = None) -> dict:
    """``{label: [[z, y, x], ...]}``: up to ``per_class`` random voxels of every foreground label
    (not of ``exclude``, the ignore label).

    One pass over the volume (foreground indices grouped by label with a sort), seeded by the case.
    """
    flat = seg.ravel()
    fg = np.flatnonzero((flat > 0) & (flat != exclude)) if exclude is not None else np.flatnonzero(flat > 0)
    if fg.size == 0:
        return {}
    labels = flat[fg]
    order = np.argsort(labels, kind="stable")
    fg, labels = fg[order], labels[order]
    values, starts, counts = np.unique(labels, return_index=True, return_counts=True)
    rng = np.random.default_rng(zlib.crc32(seed_key.encode()))
    out = {}
    for value, start, count in zip(values, starts, counts):
        idx = fg[start:start + count]
        if count > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        out[str(int(value))] = np.stack(np.unravel_index(idx, seg.shape), axis=1).tolist()
    return out


# ------------------------------------------------------------------------------ dataset
def preprocessing_signature(plans: Plans, configuration_name: str) -> dict:
    """Everything the stored data depends on; a change invalidates the preprocessed folder."""
    conf = plans.configuration(configuration_name)
    sig = {
        "spacing": conf.spacing,
        "normalization_schemes": conf.normalization_schemes,
        "use_mask_for_norm": conf.use_mask_for_norm,
        "zscore_clip_percentiles": ZSCORE_CLIP_PERCENTILES,
        "resampling": vars(conf.resampling),
        "image_resampling_clipped": True,  # resample_image clips each channel to its input range
        "intensity": plans.foreground_intensity_properties_per_channel,
        "class_locations_per_class": CLASS_LOCATIONS_PER_CLASS,
    }
    sig["hash"] = hashlib.sha1(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()
    return sig


def _run_job(job) -> str:
    plans_dict, configuration_name, folder, key, images, label, to_background = job
    from autosam.utils.typed_json import from_jsonable

    plans = from_jsonable(Plans, plans_dict) if isinstance(plans_dict, dict) else plans_dict
    data, seg, props = preprocess_case(images, plans, configuration_name, label, seed_key=key,
                                       undeclared_labels_to_background=to_background)
    storage.save_case(Path(folder), key, data, seg, props)
    return key


def _undeclared_in(job) -> tuple[str, list[int]]:
    label, declared = job
    seg, _ = read_image(label)
    return label, undeclared_label_values(seg, declared)


def check_label_values(label_files: Sequence[str | Path], declared: set[int], num_processes: int = 2,
                       progress: bool = False) -> None:
    """Raise :class:`DatasetError` listing every file of ``label_files`` that holds a value not in ``declared``."""
    jobs = [(str(p), declared) for p in label_files]
    found = {label: values for label, values in imap_jobs(_undeclared_in, jobs, num_processes, progress, "check labels")
             if values}
    if found:
        raise DatasetError(undeclared_labels_message(dict(sorted(found.items())), declared))


def preprocess_dataset(dataset_id: int | str, plans_name: str = DEFAULT_PLANS_NAME,
                       configurations: Iterable[str] | None = ("2d", "3d"), num_processes: int = 2,
                       progress: bool = False, undeclared_labels_to_background: bool = False,
                       labels_checked: bool = False) -> dict[str, Path]:
    """Preprocess the training cases for ``configurations`` (``None``: all in the plans).

    Also writes ``gt_segmentations/``, ``dataset.json`` and ``splits_final.json`` (kept if present).
    Returns ``{configuration: data folder}``. Before anything is written, the label files of the
    cases still to do are checked for values the plans do not declare: one :class:`DatasetError`
    lists them all, unless ``undeclared_labels_to_background`` (they become background) or
    ``labels_checked`` (the caller has just checked them, e.g. a fingerprint computed in the same run).
    """
    from autosam.experiment_planning.splits import get_or_create_splits
    from autosam.io.dataset import open_raw_dataset

    ds = open_raw_dataset(dataset_id)
    pre = paths.preprocessed_dir() / ds.name
    plans_file = pre / f"{plans_name}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file}: no plans {plans_name!r}; run autosam_plan_experiment -d {ds.name} first")
    plans = Plans.load(plans_file)
    wanted = list(plans.configurations) if configurations is None else [normalize_configuration(c) for c in configurations]
    missing = [c for c in wanted if c not in plans.configurations]
    if missing:
        # 3d_lowres exists only when the planner's rule calls for it; asking for it is not an error then
        absent_lowres = [c for c in missing if c == "3d_lowres"]
        if absent_lowres:
            logger.info("plans %s have no 3d_lowres configuration (not needed for this dataset); skipping it", plans_name)
        missing = [c for c in missing if c != "3d_lowres"]
        if missing:
            raise ValueError(f"plans {plans_file} have no configuration(s) {missing}; available: {sorted(plans.configurations)}")
        wanted = [c for c in wanted if c in plans.configurations]

    with lock_folder(pre, "preprocessed dataset folder"):  # one process writes it at a time
        if not (undeclared_labels_to_background or labels_checked):  # labels of the cases still needed
            folders_wanted = {pre / plans.configurations[c].data_identifier for c in wanted}
            to_check = [c.label for c in ds.cases if c.label is not None
                        and not all(storage.is_complete(f, c.identifier, needs_seg=True) for f in folders_wanted)]
            check_label_values(to_check, set(plans.label_manager.declared_values), num_processes, progress)

        write_json(pre / "dataset.json", ds.dataset_json)
        _copy_ground_truth(ds, pre / "gt_segmentations")
        get_or_create_splits(pre, [c.identifier for c in ds.cases])

        folders: dict[str, Path] = {}
        done_identifiers: set[str] = set()
        plans_dict = json.loads(json.dumps(_plans_to_dict(plans)))
        for cname in wanted:
            conf = plans.configurations[cname]
            folder = pre / conf.data_identifier
            folders[cname] = folder
            if conf.data_identifier in done_identifiers:
                logger.info("%s shares %s with an earlier configuration; nothing to do", cname, conf.data_identifier)
                continue
            done_identifiers.add(conf.data_identifier)
            _check_signature(folder, preprocessing_signature(plans, cname))
            todo = [c for c in ds.cases if not storage.is_complete(folder, c.identifier, needs_seg=c.label is not None)]
            logger.info("%s -> %s: %d of %d cases to do", cname, folder, len(todo), len(ds.cases))
            jobs = [(plans_dict, cname, str(folder), c.identifier, [str(p) for p in c.images],
                     str(c.label) if c.label is not None else None, undeclared_labels_to_background) for c in todo]
            _run_jobs(jobs, num_processes, progress, desc=f"preprocess {conf.data_identifier}")
        return folders


def _plans_to_dict(plans: Plans) -> dict:
    from autosam.utils.typed_json import to_jsonable

    return to_jsonable(plans)


def _check_signature(folder: Path, signature: dict) -> None:
    path = folder / CONFIG_FILE
    if path.is_file():
        try:
            old = read_json(path).get("hash")
        except ValueError:
            old = None
        if old == signature["hash"]:
            return
        removed = 0
        for p in folder.glob("*.json"):
            if p.name != CONFIG_FILE:
                p.unlink()
                removed += 1
        logger.warning("%s: preprocessing parameters changed; redoing its %d case(s)", folder, removed)
    elif any(folder.glob("*.json")):
        for p in folder.glob("*.json"):
            p.unlink()
        logger.warning("%s: no %s; redoing its cases", folder, CONFIG_FILE)
    write_json(path, signature)


def _run_jobs(jobs: list, num_processes: int, progress: bool, desc: str) -> None:
    for _ in imap_jobs(_run_job, jobs, num_processes, progress, desc=desc):
        pass


def _copy_ground_truth(ds, folder: Path) -> None:
    """Copy the raw label files (evaluation references), skipping identical existing copies."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for case in ds.cases:
        if case.label is None:
            continue
        target = folder / case.label.name
        if target.is_file() and target.stat().st_size == case.label.stat().st_size:
            continue
        with atomic_path(target) as tmp:
            shutil.copyfile(case.label, tmp)
