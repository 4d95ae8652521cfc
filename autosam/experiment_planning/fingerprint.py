"""Dataset fingerprint extraction (``dataset_fingerprint.json``).

nnU-Net's fields (spacing and shape before/after cropping to the non-zero region, foreground
intensity statistics per channel, median relative size after cropping) plus per-class statistics
(:class:`~autosam.experiment_planning.fingerprint_types.ClassStats`). Cases are measured in
parallel, one case per worker task; a worker returns only the sampled intensities and a few
numbers, so memory stays at about one case per worker plus the intensity samples (at most
``INTENSITY_SAMPLE_BUDGET`` per channel for the whole dataset).
"""
from __future__ import annotations

import logging

import numpy as np

from autosam import paths
from autosam.experiment_planning.fingerprint_stats import (
    CaseMeasure,
    aggregate_class_stats,
    intensity_stats,
    measure_case,
)
from autosam.experiment_planning.fingerprint_types import FINGERPRINT_SCHEMA_VERSION, DatasetFingerprint
from autosam.experiment_planning.integrity import verify_dataset_integrity
from autosam.io.dataset import DatasetError, RawDataset, dataset_name_from_id, open_raw_dataset, undeclared_labels_message
from autosam.utils.files import write_json
from autosam.utils.locks import lock_folder
from autosam.utils.parallel import imap_jobs

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"
# Total number of foreground voxels per channel used for the intensity statistics (nnU-Net: 1e8,
# drawn with replacement). Sampling without replacement, 1e7 gives the 0.5/99.5 percentiles to
# well below the intensity resolution of CT and MR while keeping memory at 40 MB per channel.
INTENSITY_SAMPLE_BUDGET = 10_000_000


def extract_fingerprint(
    dataset_id: int | str,
    num_processes: int = 2,
    verify: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    undeclared_labels_to_background: bool = False,
) -> DatasetFingerprint:
    """Compute (or load) the fingerprint of a raw dataset and write it to the preprocessed folder.

    Writes ``<preprocessed>/<DatasetXXX_Name>/dataset_fingerprint.json`` and a copy of
    ``dataset.json`` there. An existing fingerprint is reused unless ``overwrite`` or its case
    list no longer matches the raw dataset. With ``verify`` the integrity check runs first and
    nothing is written if it fails. Label values that ``dataset.json`` does not declare stop the
    run with one error listing every such file, before anything is written, unless
    ``undeclared_labels_to_background`` (then they are left out of the statistics, and
    preprocessing maps them to background).
    """
    if verify:  # first: it reports every problem, where listing the cases stops at the first
        raw = paths.raw_dir()
        verify_dataset_integrity(raw / dataset_name_from_id(dataset_id, [raw]), num_processes=num_processes,
                                 undeclared_labels_to_background=undeclared_labels_to_background)
    ds = open_raw_dataset(dataset_id)
    out_dir = paths.preprocessed_dir() / ds.name
    with lock_folder(out_dir, "preprocessed dataset folder"):  # one process writes it at a time
        out_file = out_dir / FINGERPRINT_FILE
        identifiers = [c.identifier for c in ds.cases]
        if out_file.is_file() and not overwrite:
            try:
                existing = DatasetFingerprint.load(out_file)
            except ValueError as exc:
                logger.info("recomputing the fingerprint: %s", exc)
            else:
                if existing.case_identifiers == identifiers:
                    logger.info("%s exists; reusing it (overwrite=True recomputes)", out_file)
                    write_json(out_dir / "dataset.json", ds.dataset_json)
                    return existing
                logger.info("%s lists other cases than %s; recomputing", out_file, ds.folder)
        fingerprint = compute_fingerprint(ds, num_processes=num_processes, progress=progress,
                                          undeclared_labels_to_background=undeclared_labels_to_background)
        write_json(out_dir / "dataset.json", ds.dataset_json)
        fingerprint.save(out_file)
        logger.info("wrote %s", out_file)
        return fingerprint


def _measure(job) -> CaseMeasure:
    return measure_case(*job)


def compute_fingerprint(ds: RawDataset, num_processes: int = 2, progress: bool = False,
                        undeclared_labels_to_background: bool = False) -> DatasetFingerprint:
    """Measure every training case of ``ds`` and aggregate (writes nothing). Undeclared label
    values raise :class:`DatasetError` naming every file, unless ``undeclared_labels_to_background``."""
    if not ds.cases:
        raise ValueError(f"{ds.folder / 'imagesTr'}: no training cases found")
    quota = max(1, INTENSITY_SAMPLE_BUDGET // len(ds.cases))
    fg_labels = ds.foreground_labels
    ignore = ds.label_manager.ignore_label  # declared, but not a class: no statistics, not foreground
    jobs = [(c.identifier, c.images, c.label, fg_labels, quota, i, ignore) for i, c in enumerate(ds.cases)]
    measures: dict[str, CaseMeasure] = {}
    for m in imap_jobs(_measure, jobs, num_processes, progress, desc="fingerprint"):
        measures[m.identifier] = m
    cases = [measures[c.identifier] for c in ds.cases]
    undeclared = {c.label: m.undeclared_labels for c, m in zip(ds.cases, cases) if m.undeclared_labels}
    if undeclared:
        declared = set(ds.label_manager.declared_values)
        if not undeclared_labels_to_background:
            raise DatasetError(f"{ds.folder}: " + undeclared_labels_message(undeclared, declared))
        for path, values in undeclared.items():
            logger.warning("%s: label value(s) %s are not declared in dataset.json; mapped to background "
                           "(--undeclared_labels_to_background)", path, values)
    return DatasetFingerprint(
        schema_version=FINGERPRINT_SCHEMA_VERSION,
        case_identifiers=[m.identifier for m in cases],
        spacings=[m.spacing for m in cases],
        shapes_before_crop=[m.shape_before_crop for m in cases],
        shapes_after_crop=[m.shape_after_crop for m in cases],
        median_relative_size_after_crop=float(
            np.median([np.prod(m.shape_after_crop) / np.prod(m.shape_before_crop) for m in cases])
        ),
        foreground_intensity_properties_per_channel=_intensity_properties(cases, ds),
        class_statistics=aggregate_class_stats(cases, ds.label_manager.label_names()),
        num_labelled_cases=sum(1 for c in ds.cases if c.label is not None),
    )


def _intensity_properties(cases: list[CaseMeasure], ds: RawDataset) -> dict:
    use = [m for m in cases if m.from_foreground]
    if not use:
        logger.warning("%s: no case has foreground; intensity statistics use all voxels inside the crop", ds.name)
        use = cases
    out = {}
    for c in range(ds.num_channels):
        values = np.concatenate([m.samples[c] for m in use])
        weights = np.concatenate([np.full(m.samples[c].size, m.weight, dtype=np.float64) for m in use])
        out[str(c)] = intensity_stats(values, weights)
    return out
