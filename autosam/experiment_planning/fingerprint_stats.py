"""Per-case fingerprint measurements and their aggregation over a dataset.

:func:`measure_case` runs in a worker on one case and returns only small things: geometry, the
sampled foreground intensities and per-class measurements. Intensity statistics weigh every case
equally, as nnU-Net's (which draws the same number of samples, with replacement, from each case):
a case contributes at most ``quota`` foreground voxels (drawn without replacement, seed 1234),
each weighted ``quota / taken``. Cases with fewer foreground voxels than the quota therefore enter
with all of them, exactly, instead of as a noisy resample.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from autosam.experiment_planning.fingerprint_types import ClassStats, IntensityStats
from autosam.io.dataset import undeclared_label_values
from autosam.io.image import read_case_with_label
from autosam.preprocessing.cropping import crop_to_nonzero

INTENSITY_SEED = 1234
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass
class ClassMeasure:
    voxels: int
    component_voxels: list[int]
    bbox_extent_vox: list[int]  # (z, y, x)
    slices_spanned: int


@dataclass
class CaseMeasure:
    identifier: str
    spacing: list[float]
    shape_before_crop: list[int]
    shape_after_crop: list[int]
    samples: list[np.ndarray]  # per channel, float32
    weight: float  # per sample, so that every case weighs the same
    from_foreground: bool = True  # False: no foreground, samples are from the whole cropped image
    classes: dict[int, ClassMeasure] = field(default_factory=dict)
    undeclared_labels: list[int] = field(default_factory=list)


def measure_case(identifier, image_paths, label_path, foreground_labels, quota: int, case_index: int,
                 ignore_label: int | None = None) -> CaseMeasure:
    """Geometry, sampled foreground intensities and per-class measurements of one case. Voxels of
    ``ignore_label`` (unannotated) are not foreground."""
    data, seg, geom = read_case_with_label(image_paths, label_path)
    cropped, cseg, _ = crop_to_nonzero(data, seg)
    m = CaseMeasure(
        identifier=identifier,
        spacing=[float(s) for s in geom.spacing],
        shape_before_crop=[int(s) for s in data.shape[1:]],
        shape_after_crop=[int(s) for s in cropped.shape[1:]],
        samples=[np.zeros(0, np.float32) for _ in range(data.shape[0])],
        weight=0.0,
    )
    s = np.asarray(cseg[0]) if cseg is not None else None
    fg = None if s is None else (s > 0) if ignore_label is None else (s > 0) & (s != ignore_label)
    n_fg = int(np.count_nonzero(fg)) if fg is not None else 0
    if n_fg == 0:  # used only when no case of the dataset has foreground
        m.from_foreground = False
        fg = np.ones(cropped.shape[1:], dtype=bool)
        n_fg = fg.size
    rng = np.random.default_rng([INTENSITY_SEED, case_index])
    take = None if n_fg <= quota else np.sort(rng.choice(n_fg, size=quota, replace=False))
    for c in range(cropped.shape[0]):
        values = cropped[c][fg]
        m.samples[c] = (values if take is None else values[take]).astype(np.float32)
    m.weight = quota / min(n_fg, quota)
    if s is not None:
        m.classes, _ = measure_classes(s, foreground_labels)
        # the whole label map, not only the crop: a value outside the image's non-zero box counts too
        declared = {0, *(int(v) for v in foreground_labels), *([] if ignore_label is None else [int(ignore_label)])}
        m.undeclared_labels = undeclared_label_values(seg, declared)
    return m


def measure_classes(seg: np.ndarray, foreground_labels) -> tuple[dict[int, ClassMeasure], list[int]]:
    """Per-class measurements of one (cropped) segmentation (Z, Y, X)."""
    present = np.unique(seg)
    wanted = set(int(v) for v in foreground_labels)
    undeclared = sorted(int(v) for v in present if v != 0 and int(v) not in wanted)
    out: dict[int, ClassMeasure] = {}
    seg_int = seg if np.issubdtype(seg.dtype, np.integer) else seg.astype(np.int32)
    use_find_objects = len(present) and int(present.min()) >= 0 and int(present.max()) < 100_000
    objects = ndimage.find_objects(seg_int) if use_find_objects else None
    for v in sorted(int(x) for x in present if int(x) in wanted):
        if objects is not None:
            box = objects[v - 1]
        else:
            box = tuple(slice(lo, hi) for lo, hi in _bbox(seg == v))
        sub = seg[box] == v
        comp, n = ndimage.label(sub, structure=_CONNECTIVITY)
        sizes = np.bincount(comp.ravel())[1:]
        out[v] = ClassMeasure(
            voxels=int(sizes.sum()),
            component_voxels=[int(x) for x in sizes],
            bbox_extent_vox=[int(sl.stop - sl.start) for sl in box],
            slices_spanned=int(np.count_nonzero(sub.any(axis=(1, 2)))),
        )
    return out, undeclared


def _bbox(mask):
    idx = np.nonzero(mask)
    return [(int(i.min()), int(i.max()) + 1) for i in idx]


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, q) -> np.ndarray:
    """Percentiles of samples with weights >= 1 (scaled so the smallest is 1).

    Equivalent to ``np.percentile`` (linear) of the samples repeated ``weight`` times, extended to
    fractional weights: sample ``i`` occupies the positions ``[B_i, B_i + w_i - 1]`` of the expanded
    sorted array (``B_i`` = total weight before it). Equal weights give ``np.percentile`` exactly.
    """
    order = np.argsort(values, kind="stable")
    v = values[order].astype(np.float64)
    w = weights[order].astype(np.float64)
    w = w / w.min()
    if v.size == 1:
        return np.full(np.shape(q), v[0])
    before = np.concatenate([[0.0], np.cumsum(w)[:-1]])
    xp = np.stack([before, before + w - 1.0], axis=1).ravel()
    fp = np.repeat(v, 2)
    total = before[-1] + w[-1]
    return np.interp(np.asarray(q, dtype=np.float64) / 100.0 * (total - 1.0), xp, fp)


def intensity_stats(values: np.ndarray, weights: np.ndarray) -> IntensityStats:
    if values.size == 0:
        raise ValueError("intensity_stats: no samples")
    w = weights.astype(np.float64)
    mean = float(np.sum(values * w) / np.sum(w))
    std = float(np.sqrt(np.sum(w * (values.astype(np.float64) - mean) ** 2) / np.sum(w)))
    p005, median, p995 = weighted_percentiles(values, weights, [0.5, 50, 99.5])
    return IntensityStats(
        mean=mean, median=float(median), std=std, min=float(values.min()), max=float(values.max()),
        percentile_00_5=float(p005), percentile_99_5=float(p995),
    )


def aggregate_class_stats(cases: list[CaseMeasure], labels: dict[str, int]) -> dict[str, ClassStats]:
    """ClassStats per foreground label: medians over the cases where the class is present."""
    out = {}
    for name, value in sorted(labels.items(), key=lambda kv: kv[1]):
        if value == 0:
            continue
        fractions, comps, extents, slices, comp_mm3, per_case = [], [], [], [], [], []
        for c in cases:
            cm = c.classes.get(value)
            per_case.append(len(cm.component_voxels) if cm else 0)
            if cm is None:
                continue
            voxel_mm3 = float(np.prod(c.spacing))
            fractions.append(cm.voxels / float(np.prod(c.shape_after_crop)))
            comps.append(len(cm.component_voxels))
            extents.append([e * s for e, s in zip(cm.bbox_extent_vox, c.spacing)])
            slices.append(cm.slices_spanned)
            comp_mm3.extend(v * voxel_mm3 for v in cm.component_voxels)
        present = len(fractions)
        out[str(value)] = ClassStats(
            label=value,
            name=name,
            cases_present=present,
            volume_fraction=float(np.median(fractions)) if present else 0.0,
            components_per_case=float(np.median(comps)) if present else 0.0,
            component_volume_mm3=float(np.median(comp_mm3)) if present else 0.0,
            bbox_extent_mm=[float(x) for x in np.median(extents, axis=0)] if present else [0.0, 0.0, 0.0],
            slices_spanned=float(np.median(slices)) if present else 0.0,
            per_case_components=per_case,
        )
    return out
