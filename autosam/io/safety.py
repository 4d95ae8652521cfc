"""Checks of an image file before it is read, for hostile or careless input: the file name, the
sizes its header declares (before anything is decompressed or allocated), NaN and infinite voxels;
and :func:`path_text`, a file name fit for a one-line message. Used by :mod:`autosam.io.image`.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

__all__ = ["NonFiniteCounter", "check_file_name", "check_finite", "check_image_header", "nifti_dims", "path_text"]


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(".nii") or path.name.endswith(".nii.gz")


def path_text(path: str | Path) -> str:
    """A path for a one-line message: as is, or as ``repr`` when it holds a newline or another
    character that would split or garble the line (or is not valid UTF-8)."""
    text = str(path)
    if text.isprintable():
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return repr(text)


def check_file_name(path: str | Path) -> None:
    """SimpleITK passes names to C++ as UTF-8 and aborts the process (no Python exception) on a
    name that is not valid UTF-8: such a name is a ``ValueError`` here, before SimpleITK sees it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path_text(path)}: the file name is not valid UTF-8, which the image reader cannot "
                         "open; rename the file") from None


def nifti_dims(header: bytes) -> tuple[int, list[int]] | None:
    """``(ndim, sizes)`` declared by a NIfTI-1/-2 header (sizes as stored, possibly 0 or negative),
    ``None`` if ``header`` is neither."""
    for order in ("<", ">"):
        size = int(np.frombuffer(header[:4], dtype=f"{order}i4")[0]) if len(header) >= 4 else 0
        if size == 348 and len(header) >= 348:
            dims = np.frombuffer(header[40:56], dtype=f"{order}i2").astype(np.int64)
            break
        if size == 540 and len(header) >= 540:
            dims = np.frombuffer(header[16:80], dtype=f"{order}i8").astype(np.int64)
            break
    else:
        return None
    ndim = int(dims[0])
    return ndim, [int(d) for d in dims[1:ndim + 1]] if 0 < ndim <= 7 else []


def _nifti_header(path: Path) -> bytes:
    import gzip

    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read(540)
        with open(path, "rb") as f:
            return f.read(540)
    except (OSError, EOFError, zlib.error):
        return b""  # damaged: verify_image_file names the problem


def check_image_header(path: str | Path) -> tuple[int, ...] | None:
    """Check what an image file declares before anything is decompressed or allocated: a file name
    the reader can open (:func:`check_file_name`), every size at least 1 (SimpleITK reads a NIfTI
    size of 0 or less as 1), and a voxel count within :func:`autosam.io.limits.max_voxels` (a 2 MB
    ``.nii.gz`` may declare 1024 x 1024 x 512). Returns the declared (z, y, x, ...) sizes, or None
    when the header cannot be read (the full read then reports why)."""
    from autosam.io.limits import check_voxels

    path = Path(path)
    check_file_name(path)
    if _is_nifti(path):
        parsed = nifti_dims(_nifti_header(path))
        if parsed is None:
            return None
        ndim, sizes = parsed
        if not sizes:
            raise ValueError(f"{path_text(path)}: the NIfTI header declares {ndim} dimensions (expected 1 to 7); the "
                             "file is damaged or not an image")
        if any(s < 1 for s in sizes):
            raise ValueError(f"{path_text(path)}: the NIfTI header declares sizes {' x '.join(map(str, sizes))} (x, y, "
                             "z, ...); every size must be at least 1. The file is damaged or was written wrongly")
        shape = tuple(reversed(sizes))
    else:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return None
        shape = tuple(reversed(reader.GetSize()))
    check_voxels(path_text(path), shape)
    return shape


def check_finite(path: str | Path, arr: np.ndarray, counted: int = 0) -> None:
    """Refuse an image with NaN or infinite voxels (``counted``: those a :class:`NonFiniteCounter`
    found in the file's bytes, since SimpleITK's NIfTI reader turns them into 0)."""
    bad = counted
    if np.issubdtype(arr.dtype, np.floating):
        bad = max(bad, int(arr.size - np.count_nonzero(np.isfinite(arr))))
    if bad:
        raise ValueError(f"{path_text(path)}: {bad} of {arr.size} voxel(s) are NaN or infinite; autosam does not "
                         "replace them silently. Correct the image (e.g. set them to the background intensity)")


class NonFiniteCounter:
    """``on_data`` callback of :func:`read_image`: counts the NaN/inf voxels of a float NIfTI file
    from its bytes (ITK's NIfTI reader turns them into 0)."""

    def __init__(self) -> None:
        self.count = 0
        self._carry = b""

    def __call__(self, chunk: bytes, layout: "autosam.io.image.NiftiLayout", position: int) -> None:
        kind = {16: "f4", 64: "f8"}.get(layout.datatype)
        if kind is None:
            return
        dtype = np.dtype(layout.byte_order + kind)
        lo = max(layout.data_offset - position, 0)
        hi = min(layout.data_offset + layout.data_bytes - position, len(chunk))
        if hi <= lo:
            return
        buf = self._carry + chunk[lo:hi]
        n = len(buf) // dtype.itemsize * dtype.itemsize
        self.count += int(np.count_nonzero(~np.isfinite(np.frombuffer(buf, dtype=dtype, count=n // dtype.itemsize))))
        self._carry = buf[n:]
