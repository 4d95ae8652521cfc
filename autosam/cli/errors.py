"""The ``@command`` wrapper of every console script: user errors as one line, ``--verbose`` tracebacks,
the thread count of the commands that compute."""
from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from autosam.utils.locks import FolderLockedError
from autosam.utils.precision import OOM_HINT, is_oom
from autosam.utils.threads import configure_threads


def error_text(exc: BaseException) -> str:
    """The message of an error for the command line; out-of-memory errors get a hint."""
    return f"{exc}\nhint: {OOM_HINT}" if is_oom(exc) else str(exc)


def _first_file_in_path(path: Path) -> Path | None:
    """The first component of ``path`` that exists and is not a folder (for ENOTDIR)."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def describe_os_error(exc: OSError) -> str:
    """One line for an :class:`OSError`: the path and the problem in words.

    ``disk full while writing X``, ``no permission to write in Y``, ``X exists and is a file, not a
    folder``, ``X is not a folder (the file F is in its path)``, ``read-only file system: cannot
    write X``, ... An error raised by autosam with its own message (no ``errno``) keeps it."""
    if exc.errno is None or not exc.strerror:
        return str(exc)
    name = exc.filename2 if exc.errno == errno.EXDEV and exc.filename2 else exc.filename
    path = Path(os.fsdecode(name)) if name is not None else None
    code, where = exc.errno, f" {path}" if path is not None else ""
    if code == errno.ENOSPC:
        return f"disk full while writing{where} (no space left on the device)"
    if code == getattr(errno, "EDQUOT", -1):
        return f"disk quota exceeded while writing{where}"
    if code == errno.EFBIG:
        return f"file too large while writing{where} (the file system's or the process's file size limit)"
    if code == errno.EROFS:
        return f"read-only file system: cannot write{where}"
    if path is None:
        return f"{exc.strerror} (errno {errno.errorcode.get(code, code)})"
    if code in (errno.EACCES, errno.EPERM):
        if path.is_dir():
            return f"no permission to write in {path}"
        if path.exists():
            return f"no permission to {'read' if not os.access(path, os.R_OK) else 'write'} {path}"
        return f"no permission to write in {path.parent}"
    if code == errno.EEXIST:
        return f"{path} exists and is a file, not a folder" if path.is_file() else f"{path} already exists"
    if code == errno.ENOTDIR:
        blocker = _first_file_in_path(path)
        if blocker == path:
            return f"{path} is a file, not a folder"
        return f"{path} is not a folder (a file is in the path: {blocker})" if blocker else f"{path} is not a folder"
    if code == errno.ENOENT:
        return f"{path}: no such file or folder"
    if code == errno.EISDIR:
        return f"{path} is a folder, not a file"
    if code == errno.ENAMETOOLONG:
        return f"{path}: file name too long"
    if code == errno.EIO:
        return f"input/output error on {path} (a failing disk or network file system)"
    return f"{path}: {exc.strerror}"


#: Commands whose torch thread count follows the free cores (:mod:`autosam.utils.threads`).
THREADED_COMMANDS = frozenset({"autosam_train", "autosam_predict", "autosam_predict_from_modelfolder",
                               "autosam_segment_box", "autosam_evaluate_interactive"})


def command(prog: str, status: int = 2, errors: tuple[type[BaseException], ...] = ()):
    """Decorator for the ``main`` function of a console script ``prog``.

    Errors become one line on stderr, ``<prog>: error: <message>``, and exit status ``status``:

    - every :class:`OSError` (a missing, unwritable or full output, a file where a folder should
      be, ...), in words by :func:`describe_os_error`;
    - a folder owned by another run (:class:`autosam.utils.locks.FolderLockedError`);
    - the user errors ``errors`` the command lists (``ValueError``, ...), by :func:`error_text`.

    ``--verbose`` (every command's :class:`Parser` has it) adds the Python traceback. Anything
    else is a bug and keeps its traceback. The commands in :data:`THREADED_COMMANDS` first set their
    torch thread count to their share of the free cores (:func:`autosam.utils.threads.configure_threads`)."""
    def wrap(fn: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> int:
            tokens = list(sys.argv[1:] if argv is None else argv)
            verbose = "--verbose" in (tokens[:tokens.index("--")] if "--" in tokens else tokens)
            try:
                if prog in THREADED_COMMANDS and not {"-h", "--help"} & set(tokens):
                    configure_threads(prog)
                return fn(argv)
            except OSError as exc:  # one line by design: a newline in it comes from a path, shown escaped
                error, message = exc, "".join(c if c.isprintable() else repr(c)[1:-1] for c in describe_os_error(exc))
            except (FolderLockedError, *errors) as exc:
                error, message = exc, error_text(exc)
            if verbose:
                traceback.print_exception(error)
            print(f"{prog}: error: {message}", file=sys.stderr)
            return status

        main.autosam_command = prog
        return main

    return wrap
