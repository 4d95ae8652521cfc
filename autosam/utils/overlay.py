"""PNG overlays of label maps on images, for a quick look at a dataset or at predictions
(``autosam_plot_overlay_pngs``).

One PNG per case shows the axial slice (axis 0 of the z, y, x array) where the foreground is
largest, chosen as nnU-Net does: for each label, the fraction of that label's voxels lying in each
slice; the slice with the highest mean fraction over the labels present wins, so a small structure
counts as much as a large one. The image is windowed to its 0.5-99.5 percentiles and shown in grey,
labels are blended over it in fixed colours (label 1 is always the same colour), and the in-plane
spacing sets the aspect ratio. With a prediction, reference and prediction are shown side by side on
the same slice (chosen on the reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from autosam.utils.files import atomic_path

#: Label colours (RGB in [0, 1]); label ``k`` gets ``LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)]``.
LABEL_COLOURS = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.45, 0.95), (0.10, 0.80, 0.25), (1.00, 0.80, 0.00), (0.75, 0.20, 0.85),
    (0.00, 0.85, 0.85), (1.00, 0.50, 0.05), (0.55, 0.35, 0.15), (1.00, 0.45, 0.70), (0.55, 0.80, 0.10),
])


def select_slice(seg: np.ndarray) -> int:
    """Index along axis 0 of the slice with the most foreground (mean over labels of the fraction
    of each label's voxels in the slice); the middle slice when there is no foreground."""
    if seg.ndim != 3:
        raise ValueError(f"select_slice needs a Z x Y x X label map, got shape {seg.shape}")
    labels = [v for v in np.unique(seg) if v > 0]
    if not labels:
        return seg.shape[0] // 2
    score = np.zeros(seg.shape[0])
    for lab in labels:
        per_slice = (seg == lab).sum(axis=(1, 2)).astype(np.float64)
        score += per_slice / per_slice.sum()
    return int(np.argmax(score))


def window(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Grey values in [0, 1]: the image clipped to its ``low``-``high`` percentiles."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros(image.shape)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def overlay_rgb(image2d: np.ndarray, seg2d: np.ndarray, alpha: float = 0.5,
                grey: np.ndarray | None = None) -> np.ndarray:
    """H x W x 3 float image in [0, 1]: ``image2d`` in grey with each label of ``seg2d`` blended
    in its colour (``alpha`` = weight of the colour). ``grey``: the windowed image, if computed already."""
    if image2d.shape != seg2d.shape:
        raise ValueError(f"image slice {image2d.shape} and label slice {seg2d.shape} differ")
    g = window(image2d) if grey is None else grey
    rgb = np.repeat(g[..., None], 3, axis=2)
    for lab in (v for v in np.unique(seg2d) if v > 0):
        mask = seg2d == lab
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * LABEL_COLOURS[(int(lab) - 1) % len(LABEL_COLOURS)]
    return rgb


def write_overlay_png(output_file: str | Path, image: np.ndarray, segs: Sequence[np.ndarray], titles: Sequence[str],
                      spacing: Sequence[float] = (1.0, 1.0, 1.0), slice_from: int = 0, alpha: float = 0.5) -> int:
    """One PNG (written atomically): the chosen slice of ``image`` (Z x Y x X) with each label map
    of ``segs`` over it, side by side, titled. The slice is chosen on ``segs[slice_from]``.
    Returns the slice index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for seg in segs:
        if seg.shape != image.shape:
            raise ValueError(f"{output_file}: label map shape {seg.shape} differs from the image's {image.shape}")
    z = select_slice(segs[slice_from])
    grey = window(image[z])
    aspect = float(spacing[1]) / float(spacing[2])
    height, width = image.shape[1] * aspect, image.shape[2]
    scale = 4.0 / max(height, width)
    fig, axes = plt.subplots(1, len(segs), figsize=(len(segs) * width * scale + 0.2, height * scale + 0.5), squeeze=False)
    for ax, seg, title in zip(axes[0], segs, titles):
        ax.imshow(overlay_rgb(image[z], seg[z], alpha, grey), aspect=aspect, interpolation="nearest")
        ax.set_title(f"{title} (slice {z})", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(output_file, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return z


# ------------------------------------------------------------------------------ datasets and predictions


@dataclass
class OverlayJob:
    """One PNG to draw: ``image`` (a file, or a preprocessed case ``(folder, key)``) and label maps."""

    case: str
    output_file: Path
    image: Path | tuple[Path, str]
    labels: list[Path] = field(default_factory=list)  # label files; empty for a preprocessed case
    titles: list[str] = field(default_factory=list)
    channel: int = 0


def render(job: OverlayJob, alpha: float = 0.5) -> Path:
    """Draw one job's PNG; returns its path."""
    from autosam.io.image import read_image

    if isinstance(job.image, tuple):
        from autosam.preprocessing.storage import load_case

        data, seg, props = load_case(*job.image)
        if seg is None:
            raise FileNotFoundError(f"{job.image[0] / job.image[1]}_seg.npy: the preprocessed case has no segmentation")
        image, segs, spacing = np.asarray(data[job.channel]), [np.maximum(np.asarray(seg[0]), 0)], props["spacing"]
    else:
        image, geometry = read_image(job.image)
        segs, spacing = [read_image(p)[0] for p in job.labels], geometry.spacing
    write_overlay_png(job.output_file, image, segs, job.titles, spacing, alpha=alpha)
    return job.output_file


def preprocessed_jobs(dataset_name: str, configuration: str, plans_name: str, output_folder: Path,
                      channel: int = 0) -> list[OverlayJob]:
    """A job per preprocessed training case of ``configuration`` (what the network is trained on)."""
    from autosam import paths
    from autosam.experiment_planning.plans import Plans
    from autosam.preprocessing.storage import list_cases

    pre = paths.preprocessed_dir() / dataset_name
    plans_file = pre / f"{plans_name}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file}: no plans; preprocess the dataset first, or use --use_raw")
    plans = Plans.load(plans_file)
    if not 0 <= channel < plans.num_channels:
        raise ValueError(f"-channel_idx {channel}: the dataset has {plans.num_channels} channel(s)")
    folder = pre / plans.configuration(configuration).data_identifier
    keys = list_cases(folder)
    if not keys:
        raise FileNotFoundError(f"{folder}: no preprocessed cases of configuration {configuration}; run "
                                f"autosam_preprocess -d {dataset_name} -c {configuration}, or use --use_raw")
    return [OverlayJob(k, output_folder / f"{k}.png", (folder, k), titles=[f"{k} {configuration} preprocessed"],
                       channel=channel) for k in keys]


def raw_jobs(dataset_name: str, output_folder: Path, channel: int = 0) -> list[OverlayJob]:
    """A job per raw training case (imagesTr channel ``channel`` with labelsTr)."""
    from autosam.io.dataset import open_raw_dataset

    ds = open_raw_dataset(dataset_name)
    if not 0 <= channel < ds.num_channels:
        raise ValueError(f"-channel_idx {channel}: the dataset has {ds.num_channels} channel(s)")
    return [OverlayJob(c.identifier, output_folder / f"{c.identifier}.png", c.images[channel], [c.label],
                       [f"{c.identifier} reference"], channel) for c in ds.cases]


def prediction_jobs(dataset_name: str, prediction_folder: Path, output_folder: Path, channel: int = 0) -> list[OverlayJob]:
    """A job per predicted case of ``prediction_folder``: the raw image (imagesTr or imagesTs), the
    reference (labelsTr, labelsTs or the preprocessed gt_segmentations) when there is one, and the prediction."""
    from autosam import paths
    from autosam.io.dataset import load_dataset_json

    raw = paths.raw_dir() / dataset_name
    dataset_json = load_dataset_json(raw / "dataset.json")
    ending = dataset_json["file_ending"]
    if not 0 <= channel < len(dataset_json["channel_names"]):
        raise ValueError(f"-channel_idx {channel}: the dataset has {len(dataset_json['channel_names'])} channel(s)")
    if not prediction_folder.is_dir():
        raise FileNotFoundError(f"{prediction_folder}: prediction folder does not exist")
    predictions = sorted(p for p in prediction_folder.iterdir() if p.name.endswith(ending) and not p.name.startswith("."))
    if not predictions:
        raise FileNotFoundError(f"{prediction_folder}: no predictions ending with {ending}")
    reference_folders = [raw / "labelsTr", raw / "labelsTs", paths.preprocessed_dir() / dataset_name / "gt_segmentations"]
    jobs = []
    for pred in predictions:
        case = pred.name[: -len(ending)]
        image_name = f"{case}_{channel:04d}{ending}"
        image = next((f / image_name for f in (raw / "imagesTr", raw / "imagesTs") if (f / image_name).is_file()), None)
        if image is None:
            raise FileNotFoundError(f"{pred}: no image {image_name} in {raw / 'imagesTr'} or {raw / 'imagesTs'}")
        reference = next((f / pred.name for f in reference_folders if (f / pred.name).is_file()), None)
        if reference is None:
            jobs.append(OverlayJob(case, output_folder / f"{case}.png", image, [pred], [f"{case} prediction (no reference)"], channel))
        else:
            jobs.append(OverlayJob(case, output_folder / f"{case}.png", image, [reference, pred],
                                   [f"{case} reference", "prediction"], channel))
    return jobs
