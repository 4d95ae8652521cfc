"""One process at a time per folder: ``<folder>/.autosam.lock``.

A training fold folder, a preprocessed dataset folder and a prediction output folder are each
owned by one process while it writes there. :func:`lock_folder` takes the folder's lock file:

- an exclusive ``fcntl.flock`` on ``.autosam.lock``, held while the lock is held. The kernel
  releases it when the process ends in any way, ``kill -9`` included, so a dead owner never
  blocks the next run on the same host;
- the owner, as JSON in that file: host, PID, start time, command line, and a heartbeat time that
  a daemon thread refreshes every :data:`HEARTBEAT_SECONDS`. A second run exits with
  :class:`FolderLockedError` naming the owner. On a cluster file system where ``flock`` does not
  reach other hosts (or is not supported), the recorded owner still counts: a live heartbeat from
  another host keeps the folder locked.

A stale lock is taken over with a warning that names the previous owner: a recorded owner on this
host whose PID no longer exists, or an owner on another host whose heartbeat is older than
:data:`STALE_SECONDS`. The lock is reentrant within a process (``plan_and_preprocess`` holds the
preprocessed folder through its three steps) and is released (the file removed) when the
``with`` block or :meth:`FolderLock.release` ends it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".autosam.lock"
#: Seconds between two refreshes of the owner's heartbeat.
HEARTBEAT_SECONDS = float(os.environ.get("AUTOSAM_LOCK_HEARTBEAT_S", "30"))
#: An owner on another host whose heartbeat is older than this (seconds) is taken to be gone.
STALE_SECONDS = float(os.environ.get("AUTOSAM_LOCK_STALE_S", "600"))
#: Seconds to wait for a lock still held by the leftovers of an owner that is gone (its worker
#: processes end within about a second of their parent, see :mod:`autosam.utils.processes`).
LEFTOVER_WAIT_SECONDS = 10.0


class FolderLockedError(RuntimeError):
    """The folder is owned by another live process; the message names it."""

    def __init__(self, folder: Path, owner: dict | None, what: str = "folder", lock_name: str | None = None):
        self.folder, self.owner = Path(folder), owner
        who = describe_owner(owner) if owner else "another process (its owner information is not readable)"
        super().__init__(
            f"{folder}: this {what} is in use by another autosam run: {who}. Two runs writing the same folder "
            f"would mix their files; wait for that run to end or stop it (a lock whose process has ended is taken "
            f"over automatically; lock file {Path(folder) / (lock_name or LOCK_FILE)})")


def describe_owner(info: dict) -> str:
    age = time.time() - float(info.get("heartbeat", 0) or 0)
    return (f"PID {info.get('pid')} on host {info.get('host')}, started {info.get('started')}, "
            f"command: {info.get('command')} (last heartbeat {age:.0f} s ago)")


def _command_line() -> str:
    """This process's command line as typed: ``autosam_train 4 3d unet 0``, ``python -m autosam.cli.train ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    prog = f"python -m {name.removesuffix('.__main__')}" if name else Path(sys.argv[0]).name if sys.argv else "python"
    return " ".join([prog, *sys.argv[1:]])


def _this_host() -> str:
    return socket.gethostname()


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists but belongs to someone else (or unreadable): assume alive
    return True


def owner_gone(info: dict, now: float | None = None) -> str | None:
    """Why the recorded owner ``info`` is gone, or None while it may still run."""
    if not info:
        return None
    if info.get("host") == _this_host():
        return None if _pid_alive(info.get("pid")) else f"process {info.get('pid')} no longer exists"
    age = (now or time.time()) - float(info.get("heartbeat", 0) or 0)
    if age > STALE_SECONDS:
        return f"no heartbeat for {age:.0f} s (more than {STALE_SECONDS:.0f} s)"
    return None


def _read_info(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _read_info_settled(path: Path, tries: int = 10) -> dict | None:
    """The owner information, retried briefly: a new owner writes it right after locking."""
    for _ in range(tries):
        info = _read_info(path)
        if info:
            return info
        time.sleep(0.05)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: held by another process; None: the file system does not support it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


class FolderLock:
    """A held lock on a folder (see the module's description). Use :func:`lock_folder`."""

    def __init__(self, folder: Path, what: str, name: str = LOCK_FILE):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.count = 0
        self.fd: int | None = None
        self.info: dict = {}
        self.created_folder = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- acquire
    def _acquire(self, command: str | None) -> None:
        self.created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        leftover_deadline = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            keep = False
            try:
                got = _try_flock(fd)
                if got is not False and not _same_file(fd, self.path):
                    continue  # removed or replaced by its previous owner meanwhile: open the new one
                if got is not False:
                    previous = _read_info(self.path)
                    if previous and previous.get("pid") != os.getpid():
                        reason = owner_gone(previous)
                        if reason is None and (got is None or previous.get("host") != _this_host()):
                            # no flock on this file system, or flock does not reach the other host: the
                            # recorded owner is alive (same host) or its heartbeat is fresh (another host)
                            raise FolderLockedError(self.folder, previous, self.what, self.path.name)
                        logger.warning("%s: taking over the lock of a run that ended without releasing it (%s: %s)",
                                       self.folder, describe_owner(previous), reason or "its lock was free, so its process has ended")
                        # the temporary files of the killed run, when it owned the whole folder
                        removed = remove_partial_files(self.folder) if self.path.name == LOCK_FILE else 0
                        if removed:
                            logger.warning("%s: removed %d unfinished temporary file(s) of that run", self.folder,
                                           removed)
                    self.fd = fd
                    try:
                        self._write_owner(command)
                    except OSError as exc:  # disk full, file size limit: name the file, leave no lock behind
                        self.path.unlink(missing_ok=True)
                        if self.created_folder:
                            try:
                                self.folder.rmdir()
                            except OSError:
                                pass
                        if exc.filename is not None or exc.errno is None:
                            raise
                        raise OSError(exc.errno, exc.strerror, str(self.path)) from None
                    keep = True
                    return
                # held: by the recorded owner, or by leftovers of an owner that is gone
                info = _read_info_settled(self.path)
                reason = owner_gone(info) if info else None
                if reason is None:
                    raise FolderLockedError(self.folder, info, self.what, self.path.name)
                now = time.monotonic()
                if leftover_deadline is None:
                    leftover_deadline = now + LEFTOVER_WAIT_SECONDS
                if now < leftover_deadline:
                    time.sleep(0.2)
                    continue
                # still held after the wait (a dead host's lock on a network file system, or a stuck
                # child of the dead owner): the old lock file goes, a fresh one is taken
                logger.warning("%s: taking over the lock of %s (%s); the old lock file is still held by another "
                               "process, it is replaced", self.folder, describe_owner(info), reason)
                if _same_file(fd, self.path):
                    self.path.unlink(missing_ok=True)
                leftover_deadline = None
            finally:
                if not keep:
                    self.fd = None
                    os.close(fd)

    def _write_owner(self, command: str | None) -> None:
        now = time.time()
        self.info = {
            "host": _this_host(), "pid": os.getpid(),
            "started": datetime.now().isoformat(timespec="seconds"),
            "command": command or _command_line(),
            "what": self.what, "heartbeat": now,
        }
        self._write_info()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="autosam-lock-heartbeat", daemon=True)
        self._thread.start()

    def _write_info(self) -> None:
        data = (json.dumps(self.info) + "\n").encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.info["heartbeat"] = time.time()
                self._write_info()
            except (OSError, TypeError):  # released meanwhile, or the disk is full: the flock still holds
                pass

    # -------------------------------------------------------------- release
    def release(self) -> None:
        """Drop one hold; the last one removes the lock file and frees the folder."""
        with _registry_lock:
            self.count -= 1
            if self.count > 0:
                return
            _held.pop(_key(self.folder, self.path.name), None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)
        if self.created_folder:  # a run that wrote nothing leaves nothing behind
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_held: dict[str, FolderLock] = {}
_registry_lock = threading.Lock()


def _key(folder: Path, name: str) -> tuple[str, str]:
    return os.path.realpath(folder), name


def _forget_after_fork() -> None:
    # a forked child (a data-loader worker) does not own its parent's folders
    global _registry_lock
    _held.clear()
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def lock_folder(folder: str | os.PathLike, what: str = "folder", command: str | None = None,
                lock_name: str = LOCK_FILE) -> FolderLock:
    """Take the lock of ``folder`` (created if missing) for this process, or raise
    :class:`FolderLockedError` naming the live owner. Use as ``with lock_folder(path, "..."):``
    or call :meth:`FolderLock.release`. ``what`` names the folder in messages ("training fold").
    Reentrant: a folder this process holds already is held once more. ``lock_name``: another lock
    file than :data:`LOCK_FILE` for jobs that share a folder by design, each owning its part
    (prediction with ``-num_parts``); a takeover then leaves the folder's temporary files alone."""
    folder = Path(folder)
    with _registry_lock:
        held = _held.get(_key(folder, lock_name)) if folder.exists() else None
        if held is not None:
            held.count += 1
            return held
    lock = FolderLock(folder, what, lock_name)
    lock._acquire(command)
    with _registry_lock:
        lock.count = 1
        _held[_key(folder, lock_name)] = lock
    return lock


#: The temporary files of :func:`autosam.utils.files.atomic_path` (``.<name>.<8 random>.partial<suffix>``).
PARTIAL_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.partial(\.[^/]*)?$")


def remove_partial_files(folder: Path) -> int:
    """Remove the temporary files that atomic writes of a killed run left in ``folder`` (and its
    subfolders); returns how many. Only the folder's new owner calls it: no writer is active."""
    removed = 0
    for path in Path(folder).rglob(".*.partial*"):
        if PARTIAL_FILE.match(path.name) and path.is_file():
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def read_owner(folder: str | os.PathLike) -> dict | None:
    """The owner recorded in ``folder``'s lock file, or None when there is none."""
    return _read_info(Path(folder) / LOCK_FILE)


__all__ = ["FolderLock", "FolderLockedError", "LOCK_FILE", "lock_folder", "read_owner", "owner_gone",
           "describe_owner"]
