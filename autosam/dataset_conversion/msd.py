"""Medical Segmentation Decathlon (MSD) layout -> autosam's (nnU-Net v2's) raw format.

What nnU-Net v2's ``nnUNetv2_convert_MSD_dataset`` does, with the checks users need:

- ``TaskNN_Name`` becomes ``DatasetNNN_Name`` in ``$AUTOSAM_RAW`` (another id with ``overwrite_id``);
- every case file gets the channel suffix: ``imagesTr/case.nii.gz`` -> ``imagesTr/case_0000.nii.gz``;
  a 4D multi-modal image (e.g. Task01 BrainTumour, 4 MR sequences) is split into one 3D file per
  channel, ``case_0000`` ... ``case_0003``, each keeping the spacing, origin and direction of the
  first three axes; ``imagesTs`` is converted the same way;
- labels keep their geometry; a label file stored as floating point is cast to an integer type when
  every value is a whole number (a value like 1.5 is an error naming the file and the value);
- ``dataset.json`` is rewritten: ``channel_names`` from ``modality``, ``labels`` from id -> name to
  name -> id, ``numTraining`` (the cases converted), ``file_ending`` ``.nii.gz``; the ``training`` and
  ``test`` lists are dropped (the folders are the list), the descriptive keys are kept.

Images are otherwise copied as they are (uint8 next to float32 is fine: readers cast to float32).
The dataset is written into a hidden temporary folder beside the target and renamed into place at
the end, so an interrupted conversion never leaves a half-converted dataset behind. An existing
target is refused unless ``overwrite`` is set (then it is replaced only once the new one is complete).
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autosam import paths
from autosam.io.dataset import DATASET_RE, DatasetError
from autosam.io.image import ImageGeometry, as_integer_labels, write_image
from autosam.utils.files import atomic_path, read_json, write_json
from autosam.utils.parallel import imap_jobs

logger = logging.getLogger(__name__)

TASK_RE = re.compile(r"^Task(\d+)_(.+)$")
ENDING = ".nii.gz"
MSD_REQUIRED_KEYS = ("modality", "labels")


@dataclass(frozen=True)
class _Job:
    kind: str  # "image" or "label"
    source: str
    target_folder: str
    case: str


def parse_task_name(folder: Path) -> tuple[int, str]:
    """``Task04_Hippocampus`` -> ``(4, "Hippocampus")``; anything else is a ``DatasetError``."""
    m = TASK_RE.match(folder.name)
    if not m:
        raise DatasetError(f"{folder}: an MSD task folder is named TaskNN_Name (e.g. Task04_Hippocampus), "
                           f"got {folder.name!r}")
    return int(m.group(1)), m.group(2)


def convert_msd_dataset(source: str | Path, overwrite_id: int | None = None, num_processes: int = 2,
                        raw_root: str | Path | None = None, overwrite: bool = False,
                        progress: bool = False) -> Path:
    """Convert the MSD task folder ``source``; returns the new raw dataset folder.

    :param overwrite_id: dataset id to use instead of the task number.
    :param raw_root: raw folder to write into (default ``$AUTOSAM_RAW``).
    :param overwrite: replace an existing dataset folder of the same name (else refused).
    """
    source = Path(source).expanduser().resolve()
    if not source.is_dir():
        raise DatasetError(f"{source}: folder does not exist")
    task_id, name = parse_task_name(source)
    dataset_id = task_id if overwrite_id is None else int(overwrite_id)
    if not 0 <= dataset_id <= 999:
        raise DatasetError(f"dataset id {dataset_id}: must lie in 0..999")
    target_name = f"Dataset{dataset_id:03d}_{name}"
    if not DATASET_RE.match(target_name):
        raise DatasetError(f"{source}: cannot build a dataset name from {source.name!r}")
    root = Path(raw_root).expanduser() if raw_root is not None else paths.raw_dir()
    target = root / target_name
    _check_target(root, target, dataset_id, overwrite)

    msd_json = _load_msd_json(source / "dataset.json")
    dataset_json = convert_dataset_json(msd_json, source / "dataset.json")
    n_channels = len(dataset_json["channel_names"])
    train_images = _list_nifti(source / "imagesTr", required=True)
    if not train_images:
        raise DatasetError(f"{source / 'imagesTr'}: no {ENDING} images")
    _check_training_list(msd_json, source, train_images)
    test_images = _list_nifti(source / "imagesTs", required=False)

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_name}.partial-", dir=root))
    try:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test_images else ()):
            (staging / sub).mkdir()
        jobs = []
        for img in train_images:
            case = img.name[: -len(ENDING)]
            label = source / "labelsTr" / img.name
            if not label.is_file():
                raise DatasetError(f"{label}: label file of training image {img} is missing")
            jobs.append(_Job("image", str(img), str(staging / "imagesTr"), case))
            jobs.append(_Job("label", str(label), str(staging / "labelsTr"), case))
        jobs += [_Job("image", str(img), str(staging / "imagesTs"), img.name[: -len(ENDING)]) for img in test_images]
        for job, channels in imap_jobs(_convert_file, jobs, num_processes, progress, desc="convert", unit="file"):
            if job.kind == "image" and channels != n_channels:
                raise DatasetError(f"{job.source}: has {channels} channel(s); dataset.json modality declares {n_channels}")
        dataset_json["numTraining"] = len(train_images)
        write_json(staging / "dataset.json", dataset_json)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: %d training case(s), %d test case(s), %d channel(s)", target, len(train_images),
                len(test_images), n_channels)
    return target


def convert_dataset_json(msd_json: dict, path: Path) -> dict:
    """The MSD ``dataset.json`` rewritten for the raw format (``numTraining`` from the ``training`` list)."""
    out = {k: v for k, v in msd_json.items() if k not in ("modality", "labels", "training", "test", "numTest")}
    modality = msd_json["modality"]
    try:
        out["channel_names"] = {str(int(k)): str(v) for k, v in sorted(modality.items(), key=lambda kv: int(kv[0]))}
    except (ValueError, AttributeError):
        raise DatasetError(f"{path}: 'modality' must map channel numbers to names, got {modality!r}") from None
    if list(out["channel_names"]) != [str(i) for i in range(len(out["channel_names"]))]:
        raise DatasetError(f"{path}: 'modality' channels must be numbered 0..N-1, got {sorted(modality)}")
    labels: dict[str, int] = {}
    for key, label_name in msd_json["labels"].items():
        try:
            value = int(key)
        except ValueError:
            raise DatasetError(f"{path}: label id {key!r} is not an integer") from None
        if label_name in labels:
            raise DatasetError(f"{path}: label name {label_name!r} is used for ids {labels[label_name]} and {value}")
        labels[str(label_name)] = value
    if 0 not in labels.values():
        raise DatasetError(f"{path}: 'labels' has no id 0 (background)")
    out["labels"] = dict(sorted(labels.items(), key=lambda kv: kv[1]))
    out["numTraining"] = len(msd_json.get("training", []))
    out["file_ending"] = ENDING
    return out


def _load_msd_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: dataset.json is missing (an MSD task folder has dataset.json, imagesTr, labelsTr)")
    dj = read_json(path)
    if "channel_names" in dj and "modality" not in dj:
        raise DatasetError(f"{path}: already in the raw format (has 'channel_names', no 'modality'); nothing to convert")
    missing = [k for k in MSD_REQUIRED_KEYS if k not in dj]
    if missing:
        raise DatasetError(f"{path}: missing MSD key(s) {missing}")
    return dj


def _list_nifti(folder: Path, required: bool) -> list[Path]:
    """The case images of ``folder``: ``*.nii.gz`` without macOS ``._`` resource files and hidden files."""
    if not folder.is_dir():
        if required:
            raise DatasetError(f"{folder}: folder is missing")
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith(ENDING) and not p.name.startswith("."))


def _check_training_list(msd_json: dict, source: Path, images: list[Path]) -> None:
    listed = {Path(str(e.get("image", ""))).name for e in msd_json.get("training", []) if isinstance(e, dict)}
    if not listed:
        return
    present = {p.name for p in images}
    missing = sorted(listed - present)
    if missing:
        raise DatasetError(f"{source / 'dataset.json'}: {len(missing)} training image(s) listed but not in imagesTr, "
                           f"e.g. {missing[:3]}")
    extra = sorted(present - listed)
    if extra:
        logger.warning("%s: %d image(s) not in dataset.json's training list are converted too, e.g. %s",
                       source / "imagesTr", len(extra), extra[:3])


def _check_target(root: Path, target: Path, dataset_id: int, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: already exists; pass --overwrite to replace it, or -overwrite_id to use another id")
    if root.is_dir():
        others = sorted(p.name for p in root.iterdir()
                        if p.is_dir() and p.name.startswith(f"Dataset{dataset_id:03d}_") and p.name != target.name)
        if others:
            raise DatasetError(f"{root}: dataset id {dataset_id} is taken by {others[0]}; choose another with -overwrite_id")


def _move_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f".{target.name}.replaced-{staging.name.rsplit('-', 1)[-1]}")
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _convert_file(job: _Job) -> tuple[_Job, int]:
    """Convert one image (-> one file per channel) or label; returns the job and its channel count."""
    source = Path(job.source)
    try:
        img = sitk.ReadImage(str(source))
    except RuntimeError as exc:
        raise DatasetError(f"{source}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from None
    folder = Path(job.target_folder)
    dim = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{source}: vector images ({img.GetNumberOfComponentsPerPixel()} components per voxel) "
                           "are not supported; store channels along a 4th axis")
    if job.kind == "label":
        if dim != 3:
            raise DatasetError(f"{source}: a label map must be 3D, got {dim}D")
        arr = sitk.GetArrayFromImage(img)
        try:
            cast = as_integer_labels(arr, source)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        if cast is arr:
            _copy(source, folder / source.name)
        else:
            logger.info("%s: float label values cast to %s", source, cast.dtype)
            write_image(folder / source.name, cast, _geometry(img, cast.shape))
        return job, 1
    if dim == 3:
        _copy(source, folder / f"{job.case}_0000{ENDING}")
        return job, 1
    if dim != 4:
        raise DatasetError(f"{source}: expected a 3D image or a 4D multi-channel image, got {dim}D")
    arr = sitk.GetArrayFromImage(img)  # (C, z, y, x)
    geometry = _geometry(img, arr.shape[1:])
    for c in range(arr.shape[0]):
        write_image(folder / f"{job.case}_{c:04d}{ENDING}", np.ascontiguousarray(arr[c]), geometry)
    return job, int(arr.shape[0])


def _geometry(img: sitk.Image, shape: tuple[int, ...]) -> ImageGeometry:
    """The 3D geometry of ``img``: for a 4D image, the first three axes' spacing, origin and direction."""
    dim = img.GetDimension()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    return ImageGeometry(
        spacing=tuple(float(s) for s in img.GetSpacing()[:3][::-1]),
        origin=tuple(float(o) for o in img.GetOrigin()[:3]),
        direction=tuple(float(d) for d in direction.ravel()),
        shape=tuple(int(s) for s in shape),
    )


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target, ENDING) as tmp:
        shutil.copyfile(source, tmp)
