"""Reading and writing medical images through SimpleITK.

Arrays are numpy in (z, y, x) order; ``spacing`` in the returned properties is in the same
(z, y, x) order. ``origin`` and ``direction`` are kept in SimpleITK's (x, y, z) convention so a
written image has exactly the geometry of the one it came from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from autosam.utils.files import atomic_path

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class ImageGeometry:
    """Geometry of an image on disk (what export needs to restore it)."""

    spacing: tuple[float, ...]  # (z, y, x) in mm
    origin: tuple[float, ...]  # SimpleITK (x, y, z)
    direction: tuple[float, ...]  # SimpleITK row-major 3x3
    shape: tuple[int, ...]  # (z, y, x)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageGeometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]), tuple(int(s) for s in d["shape"]))

    def matches(self, other: "ImageGeometry", tol: float = 1e-3) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def read_image(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D image. Raises ``ValueError`` naming the file when it is unreadable or not 3D."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file does not exist")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from None
    if img.GetDimension() != 3:
        raise ValueError(f"{path}: expected a 3D image, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path}: expected a single-component image, got {img.GetNumberOfComponentsPerPixel()} components")
    arr = sitk.GetArrayFromImage(img)
    geom = ImageGeometry(
        spacing=tuple(float(s) for s in img.GetSpacing()[::-1]),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(float(d) for d in img.GetDirection()),
        shape=tuple(int(s) for s in arr.shape),
    )
    return arr, geom


def read_case(paths: Sequence[str | Path]) -> tuple[np.ndarray, ImageGeometry]:
    """Read the channels of one case and stack them to (C, z, y, x) float32.

    All channels must share the geometry of the first one.
    """
    arrays = []
    first: ImageGeometry | None = None
    for p in paths:
        arr, geom = read_image(p)
        if first is None:
            first = geom
        elif not first.matches(geom):
            raise ValueError(f"{p}: geometry {geom.shape}/{geom.spacing} differs from channel 0 ({paths[0]}: {first.shape}/{first.spacing})")
        arrays.append(arr.astype(np.float32, copy=False))
    if first is None:
        raise ValueError("read_case: no files given")
    return np.stack(arrays), first


def read_case_with_label(image_paths: Sequence[str | Path], label_path: str | Path | None
                         ) -> tuple[np.ndarray, np.ndarray | None, ImageGeometry]:
    """:func:`read_case` plus the label map as 1 x Z x Y x X (None without ``label_path``);
    a label whose shape differs from the image's is an error naming the label file."""
    data, geometry = read_case(image_paths)
    seg = None
    if label_path is not None:
        seg_arr, _ = read_label(label_path)
        if seg_arr.shape != data.shape[1:]:
            raise ValueError(f"{label_path}: label shape {seg_arr.shape} differs from image shape {data.shape[1:]}")
        seg = seg_arr[None]
    return data, seg, geometry


def read_label(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map as an integer array.

    Label files stored as floating point (some tools write float32 masks) are accepted when every
    value is a whole number, and cast to the smallest integer type that holds them; a value that is
    not a whole number (or not finite) is a ``ValueError`` naming the file and the value.
    """
    arr, geom = read_image(path)
    return as_integer_labels(arr, path), geom


def as_integer_labels(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """``arr`` unchanged when it is an integer array, else cast after checking the values are whole
    numbers (see :func:`read_label`); ``path`` names the file in the error."""
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr
    values = np.unique(arr)
    bad = values[~np.isfinite(values) | (values != np.round(values))]
    if bad.size:
        shown = ", ".join(f"{float(v):g}" for v in bad[:5]) + (f" (and {bad.size - 5} more)" if bad.size > 5 else "")
        raise ValueError(f"{path}: label values must be whole numbers; found {shown}")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype)
    raise ValueError(f"{path}: label values {lo:g}..{hi:g} do not fit a 32-bit integer")


def write_image(path: str | Path, array: np.ndarray, geometry: ImageGeometry) -> None:
    """Write a (z, y, x) array with the given geometry, atomically."""
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"{path}: array shape {array.shape} does not match geometry shape {geometry.shape}")
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(tuple(geometry.origin))
    img.SetDirection(tuple(geometry.direction))
    ending = file_ending_of(path)
    with atomic_path(path, ending) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=ending in (".nii.gz", ".mha", ".nrrd"))


def file_ending_of(path: str | Path) -> str:
    name = str(path)
    for ending in sorted(SUPPORTED_ENDINGS, key=len, reverse=True):
        if name.endswith(ending):
            return ending
    return Path(name).suffix
