"""Reading and writing medical images through SimpleITK.

Arrays are numpy in (z, y, x) order; ``spacing`` in the returned properties is in the same
(z, y, x) order. ``origin`` and ``direction`` are kept in SimpleITK's (x, y, z) convention so a
written image has exactly the geometry of the one it came from.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from autosam.io.safety import NonFiniteCounter, _is_nifti, check_finite, check_image_header, path_text
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


def read_image(path: str | Path, on_data: Callable[[bytes, "NiftiLayout", int], None] | None = None
               ) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D image. Raises ``ValueError`` naming the file when it is unreadable, incomplete
    (truncated or corrupt, see :func:`verify_image_file`, which gets ``on_data``) or not 3D.

    Every image and label autosam reads (integrity check, fingerprint, preprocessing, prediction,
    evaluation, postprocessing) goes through this function."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path_text(path)}: file does not exist")
    check_image_header(path)
    verify_image_file(path, on_data)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path_text(path)}: cannot be read as an image ({_itk_reason(exc)})") from None
    if img.GetDimension() != 3:
        raise ValueError(f"{path_text(path)}: expected a 3D image, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path_text(path)}: expected a single-component image, got {img.GetNumberOfComponentsPerPixel()} components")
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

    All channels must share the geometry of the first one. NaN or infinite voxels are an error
    naming the file and how many (:func:`check_finite`), never silently replaced.
    """
    arrays = []
    first: ImageGeometry | None = None
    for p in paths:
        nonfinite = NonFiniteCounter()
        arr, geom = read_image(p, on_data=nonfinite)
        check_finite(p, arr, nonfinite.count)
        if first is None:
            first = geom
        elif not first.matches(geom):
            raise ValueError(f"{path_text(p)}: geometry {geom.shape}/{geom.spacing} differs from channel 0 ({path_text(paths[0])}: {first.shape}/{first.spacing})")
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
            raise ValueError(f"{path_text(label_path)}: label shape {seg_arr.shape} differs from image shape {data.shape[1:]}")
        seg = seg_arr[None]
    return data, seg, geometry


def read_label(path: str | Path) -> tuple[np.ndarray, ImageGeometry]:
    """Read a label map as an integer array.

    Label files stored as floating point (some tools write float32 masks) are accepted when every
    value is a whole number, and cast to the smallest integer type that holds them; a value that is
    not a whole number (or not finite) is a ``ValueError`` naming the file and the value.
    """
    nonfinite = NonFiniteCounter()  # SimpleITK's NIfTI reader turns NaN/inf into 0: counted in the bytes
    arr, geom = read_image(path, on_data=nonfinite)
    if nonfinite.count:
        raise ValueError(f"{path_text(path)}: label values must be whole numbers; found {nonfinite.count} NaN or "
                         "infinite voxel(s)")
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
        raise ValueError(f"{path_text(path)}: label values must be whole numbers; found {shown}")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype)
    raise ValueError(f"{path_text(path)}: label values {lo:g}..{hi:g} do not fit a 32-bit integer")


def _itk_reason(exc: RuntimeError) -> str:
    """The informative line of an ITK read error. ITK appends ``Reason: <strerror>`` from a stale
    ``errno`` (``No such file or directory`` for a file that exists but is truncated), so that
    line is left out when another one says more."""
    lines = [re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", ln.strip()) for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Exception thrown") and not ln.endswith(":")]
    useful = [ln for ln in lines if not ln.startswith("Reason:")] or lines
    return useful[-1] if useful else type(exc).__name__


def write_image(path: str | Path, array: np.ndarray, geometry: ImageGeometry) -> None:
    """Write a (z, y, x) array with the given geometry, atomically."""
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"{path_text(path)}: array shape {array.shape} does not match geometry shape {geometry.shape}")
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




# ------------------------------------------------------------------------------ stream integrity
#: Compressed bytes fed to zlib per step when checking a gzip stream.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI file's voxel data lies in the (decompressed) stream."""

    byte_order: str  # "<" or ">"
    datatype: int  # NIfTI datatype code
    data_offset: int  # vox_offset
    data_bytes: int  # product of the dimensions times bytes per voxel


def nifti_layout(header: bytes) -> NiftiLayout | None:
    """Parse a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header; ``None`` if ``header`` is neither."""
    for order in ("<", ">"):
        if len(header) >= 4:
            size = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0])
            if size == 348 and len(header) >= 348:
                dims = np.frombuffer(header[40:56], dtype=f"{order}i2").astype(np.int64)
                datatype = int(np.frombuffer(header[70:72], dtype=f"{order}i2")[0])
                bitpix = int(np.frombuffer(header[72:74], dtype=f"{order}i2")[0])
                offset = int(np.frombuffer(header[108:112], dtype=f"{order}f4")[0])
                break
            if size == 540 and len(header) >= 540:
                datatype = int(np.frombuffer(header[12:14], dtype=f"{order}i2")[0])
                bitpix = int(np.frombuffer(header[14:16], dtype=f"{order}i2")[0])
                dims = np.frombuffer(header[16:80], dtype=f"{order}i8").astype(np.int64)
                offset = int(np.frombuffer(header[168:176], dtype=f"{order}i8")[0])
                break
    else:
        return None
    ndim = int(dims[0])
    if not 0 < ndim <= 7 or bitpix <= 0 or np.any(dims[1:ndim + 1] < 0):
        return None
    count = int(np.prod(dims[1:ndim + 1]))
    return NiftiLayout(order, datatype, max(offset, size), count * bitpix // 8)


def verify_image_file(path: str | Path, on_data: Callable[[bytes, NiftiLayout, int], None] | None = None) -> None:
    """Raise ``ValueError`` naming ``path`` when its byte stream is incomplete or corrupt.

    SimpleITK's NIfTI reader fills whatever a truncated file lacks with zeros and reports nothing,
    so before every read: a gzip-compressed file (``.gz``) is decompressed in full and must end
    with its end-of-stream marker, CRC-32 and length; a NIfTI file (``.nii`` or ``.nii.gz``) must
    hold as many voxel bytes as its header promises. Other formats are left to SimpleITK, whose
    MetaImage and NRRD readers report missing data themselves.

    ``on_data(chunk, layout, position)``, for NIfTI files, receives the decompressed stream piece
    by piece (``position``: offset of ``chunk`` in the stream), for checks that need the raw voxels.
    """
    path = Path(path)
    gz, nifti = path.name.endswith(".gz"), _is_nifti(path)
    if not gz and not nifti:
        return
    head = b""  # the stream's first bytes, kept until the NIfTI header is parsed
    layout: NiftiLayout | None = None
    total = 0

    def consume(chunk: bytes) -> None:
        nonlocal head, layout, total
        start, total = total, total + len(chunk)
        if not nifti:
            return
        if layout is None:
            if len(head) >= 540:
                return  # not a NIfTI header this code knows
            head += chunk
            if len(head) >= 348:
                layout = nifti_layout(head[:540])
                if layout is not None and on_data is not None:
                    on_data(head, layout, 0)
            return
        if on_data is not None:
            on_data(chunk, layout, start)

    with open(path, "rb") as f:
        if gz:
            _inflate_gzip(path, f, consume)
        elif on_data is None:  # an uncompressed file: its size says how much it holds
            consume(f.read(540))
            total = path.stat().st_size
        else:
            while chunk := f.read(_CHUNK):
                consume(chunk)
    if not nifti:
        return
    if layout is None:
        if len(head) < 348:
            raise ValueError(f"{path_text(path)}: truncated: {total} byte(s), shorter than a NIfTI header")
        return  # not a NIfTI header this code knows: SimpleITK reports what it makes of it
    expected = layout.data_offset + layout.data_bytes
    if total < expected:
        raise ValueError(
            f"{path_text(path)}: truncated: holds {max(total - layout.data_offset, 0)} of the {layout.data_bytes} bytes of "
            "voxel data its header promises (the file is incomplete or damaged; replace it)"
        )


def _inflate_gzip(path: Path, f, consume: Callable[[bytes], None]) -> None:
    """Decompress every gzip member of ``f``; errors on a corrupt or unterminated stream."""
    d = zlib.decompressobj(wbits=31)
    pending = f.read(_CHUNK)
    if not pending:
        raise ValueError(f"{path_text(path)}: file is empty")
    try:
        while pending:
            out = d.decompress(pending)
            if out:
                consume(out)
            if d.eof:  # a complete member (CRC-32 and length checked); more members may follow
                rest = d.unused_data
                if not rest.strip(b"\0"):
                    rest = rest + f.read(_CHUNK)
                    while rest and not rest.strip(b"\0"):  # zero padding after the last member is allowed
                        rest = f.read(_CHUNK)
                    if not rest:
                        return
                d = zlib.decompressobj(wbits=31)
                pending = rest
                continue
            pending = f.read(_CHUNK)
        tail = d.flush()
        if tail:
            consume(tail)
    except zlib.error as exc:
        raise ValueError(f"{path_text(path)}: corrupt gzip stream ({exc}); the file is damaged, replace it") from None
    raise ValueError(f"{path_text(path)}: truncated gzip stream (it ends before its end-of-stream marker); "
                     "the file is incomplete, replace it")
