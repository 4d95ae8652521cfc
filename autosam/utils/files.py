"""Atomic file writes: write to a temporary file in the same folder, then rename.

An interrupted run therefore never leaves a half-written file that a later run trusts.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np

logger = logging.getLogger(__name__)

#: Set to 1 to load ``torch.save`` files that pickle Python objects besides tensors and plain
#: types (old autosam checkpoints, some SAM training checkpoints). Unpickling can run any code:
#: trusted files only.
ENV_TRUST_PICKLE = "AUTOSAM_TRUST_CHECKPOINT_PICKLE"


class UntrustedPickleError(ValueError):
    """A ``torch.save`` file holds Python objects that only full unpickling (which can run code) restores."""


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    ``suffix`` defaults to the target's suffix(es), for writers that choose a format by extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    except OSError as exc:  # name the file being written, not its temporary name
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        full = _disk_full_error(exc, path)
        if full is not None:
            raise full from exc
        raise


#: Errors of a write that ran out of room: the disk, the user's quota, the file size limit.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _disk_full_error(exc: BaseException, path: Path) -> OSError | None:
    """A write into ``path`` failed: the error to raise instead, naming ``path``, or None to keep it.

    ``write()`` reports a full disk as ``OSError(ENOSPC)`` without a file name; SimpleITK and
    ``torch.save`` report it as a ``RuntimeError`` ("file write failed"). Both become an
    ``OSError(ENOSPC)`` naming the file being written, which the commands print as one line."""
    if isinstance(exc, OSError):
        if exc.errno in _NO_ROOM and exc.filename is None:
            return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
        return None
    if isinstance(exc, RuntimeError):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            return None
        if free < 1 << 20:  # less than 1 MiB left: the write failed for want of space
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    with atomic_path(path, ".pth") as tmp:
        torch.save(obj, tmp)


def torch_load(path: str | os.PathLike, map_location: Any = "cpu", trust: bool | None = None,
               safe_types: tuple = ()) -> Any:
    """Read a ``torch.save`` file with ``torch.load(weights_only=True)``: tensors, plain Python
    types and ``safe_types`` only, so that loading never runs code from the file.

    A file that needs full unpickling raises :class:`UntrustedPickleError` unless ``trust`` is
    true (``None``: true when the environment variable ``AUTOSAM_TRUST_CHECKPOINT_PICKLE`` is
    ``1``); then it is loaded with ``weights_only=False`` and a warning. Other read errors are
    ``ValueError`` naming the file.
    """
    import torch

    path = Path(path)
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow(list(safe_types)) if allow is not None and safe_types else nullcontext(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a raw pickle: refused below
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives; this is something else
            raise ValueError(f"{path}: cannot be read as a PyTorch file: not in torch.save's zip format (a raw pickle "
                             f"or a file of PyTorch before 1.6) and not loadable without unpickling "
                             f"({_unpickler_reason(exc)})") from None
        if trust is None:
            trust = os.environ.get(ENV_TRUST_PICKLE) == "1"
        if not trust:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
            found = re.search(r"GLOBAL ([\w.]+)", text)
            first = (f"the global {found.group(1)}" if found
                     else text.splitlines()[0].rstrip(" .") if text else type(exc).__name__)
            raise UntrustedPickleError(
                f"{path}: holds Python objects besides tensors and plain types ({first}); loading it would unpickle "
                f"them, which can run any code, so it is refused. If you trust the file and where it came from, set "
                f"{ENV_TRUST_PICKLE}=1"
            ) from None
        logger.warning("%s: loading with full unpickling (trusted: %s=1 or trust=True)", path, ENV_TRUST_PICKLE)
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # zip/format errors have many types
        raise ValueError(f"{path}: cannot be read as a PyTorch file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())})") from None


def _unpickler_reason(exc: BaseException) -> str:
    """The one informative line of torch's many-line ``weights_only`` error."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    reason = found.group(1) if found else text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return " ".join(reason.split()).split(". Please use")[0].rstrip(".")


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
