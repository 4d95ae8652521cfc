"""Reliability under faults: folder locks, OS errors as one line, workers that die with their
parent, undeclared label values in an old preprocessed folder (documentation/reliability.md)."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from autosam.cli.common import describe_os_error
from autosam.utils import locks
from autosam.utils.locks import LOCK_FILE, FolderLockedError, lock_folder
from autosam.utils.processes import process_running
from training_data import NAME, make_tiny_preprocessed

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------ helpers
def _wait_gone(pids, seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if process_running(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if process_running(p)]


def _start(script: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    """A Python child running ``script``; its first stdout line is read by :func:`_first_line`."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)


def _first_line(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise AssertionError(f"no output from the child within {timeout} s: {proc.stderr.read()}")
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"the child ended without output: {proc.stderr.read()}")
    return line.strip()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


HOLD_LOCK = """
import sys, time
from autosam.utils.locks import lock_folder
lock = lock_folder(sys.argv[1], "test folder")
print("locked", flush=True)
time.sleep(600)
"""


# ------------------------------------------------------------------------------ locks
def test_a_live_owner_keeps_the_folder_and_a_killed_one_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "fold_0"
    owner = _start(HOLD_LOCK, str(folder))
    try:
        assert _first_line(owner) == "locked"
        with pytest.raises(FolderLockedError) as err:
            lock_folder(folder, "training fold")
        text = str(err.value)
        assert f"PID {owner.pid} on host {socket.gethostname()}" in text
        assert "this training fold is in use by another autosam run" in text and "command: " in text
        assert "started 20" in text and str(folder / LOCK_FILE) in text
        info = json.loads((folder / LOCK_FILE).read_text())
        assert info["pid"] == owner.pid and info["heartbeat"] <= time.time()
    finally:
        _kill(owner)
    # kill -9 releases the flock with the process: the next run takes over and says whose lock it was
    with caplog.at_level(logging.WARNING, logger="autosam.utils.locks"):
        with lock_folder(folder, "training fold"):
            assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that ended without releasing it (PID {owner.pid}" in caplog.text
    assert not (folder / LOCK_FILE).exists()


def _write_owner(folder: Path, **info) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2020-01-01T00:00:00",
              "command": "autosam_train 1 3d unet 0", "heartbeat": time.time()}
    record.update(info)
    (folder / LOCK_FILE).write_text(json.dumps(record))


def test_stale_owners_are_taken_over_and_a_fresh_one_on_another_host_is_not(tmp_path, caplog, monkeypatch):
    folder = tmp_path / "pre"
    dead = _dead_pid()
    _write_owner(folder, pid=dead)
    with caplog.at_level(logging.WARNING, logger="autosam.utils.locks"):
        lock_folder(folder).release()
    assert f"process {dead} no longer exists" in caplog.text

    # a file system where flock does not reach other hosts: the record of another host counts
    _write_owner(folder, host="node-17", pid=4242, heartbeat=time.time() - 5)
    with pytest.raises(FolderLockedError, match="PID 4242 on host node-17"):
        lock_folder(folder)
    _write_owner(folder, host="node-17", pid=4242, heartbeat=time.time() - locks.STALE_SECONDS - 60)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autosam.utils.locks"):
        lock_folder(folder).release()
    assert "PID 4242 on host node-17" in caplog.text and "no heartbeat for" in caplog.text


def test_a_lock_still_held_by_leftovers_of_a_dead_owner_is_replaced(tmp_path, caplog, monkeypatch):
    """The flock is held (a stuck child of the dead owner, or a dead host's lock on a network file
    system) but the recorded owner is gone: after a short wait the lock file is replaced."""
    folder = tmp_path / "out"
    dead = _dead_pid()
    holder = _start("""
        import fcntl, json, os, socket, sys, time
        folder = sys.argv[1]
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, ".autosam.lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": int(sys.argv[2]), "started": "x",
                                 "command": "autosam_predict", "heartbeat": time.time()}).encode())
        print("held", flush=True)
        time.sleep(600)
    """, str(folder), str(dead))
    try:
        assert _first_line(holder) == "held"
        monkeypatch.setattr(locks, "LEFTOVER_WAIT_SECONDS", 0.5)
        with caplog.at_level(logging.WARNING, logger="autosam.utils.locks"):
            with lock_folder(folder, "prediction output folder"):
                assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
        assert f"PID {dead}" in caplog.text and "it is replaced" in caplog.text
    finally:
        _kill(holder)


def test_lock_is_reentrant_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "new" / "folder"
    outer = lock_folder(folder)
    inner = lock_folder(folder)
    assert inner is outer and (folder / LOCK_FILE).is_file()
    inner.release()
    assert (folder / LOCK_FILE).is_file()  # still held by the outer hold
    outer.release()
    assert not folder.exists()  # created for the lock, nothing written: removed again
    kept = tmp_path / "kept"
    with lock_folder(kept):
        (kept / "result.txt").write_text("x")
    assert sorted(p.name for p in kept.iterdir()) == ["result.txt"]


def test_two_trainings_of_the_same_fold(autosam_dirs, capsys, caplog):
    """The second run exits with one line naming the first; nothing of it is written. After the
    first is killed, the next run takes the fold over."""
    from autosam.cli.train import main as train_main

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    fold_dir = autosam_dirs["results"] / NAME / "unet__autosamPlans__3d" / "fold_0"
    first = subprocess.Popen([sys.executable, "-m", "autosam.cli.train", NAME, "3d", "unet", "0", "--epochs", "1000",
                              "--iters-per-epoch", "2", "--device", "cpu", "--num-workers", "0", "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (fold_dir / "metadata.json").is_file():  # the owner writes it right after taking the lock
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first training did not start"
            time.sleep(0.2)
        logs = sorted(fold_dir.glob("training_log_*.txt"))
        assert train_main([NAME, "3d", "unet", "0", "--epochs", "1", "--device", "cpu", "--num-workers", "0",
                           "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"autosam_train: error: {fold_dir}: this training fold is in use by another autosam "
                              f"run: PID {first.pid} on host {socket.gethostname()}")
        assert "Traceback" not in err and "autosam.cli.train" in err  # the owner's command line
        assert sorted(fold_dir.glob("training_log_*.txt")) == logs  # the second run wrote nothing
    finally:
        _kill(first)
    with caplog.at_level(logging.WARNING, logger="autosam.utils.locks"):
        assert train_main([NAME, "3d", "unet", "0", "--epochs", "1", "--iters-per-epoch", "1", "--device", "cpu",
                           "--num-workers", "0", "--quiet"]) == 0
    assert f"(PID {first.pid} on host" in caplog.text
    assert not (fold_dir / LOCK_FILE).exists()


def test_log_file_names_are_unique_per_run(tmp_path):
    from autosam.training.run_support import attach_log_file

    handlers = [attach_log_file(tmp_path) for _ in range(3)]  # within the same second
    try:
        names = sorted(p.name for p in tmp_path.glob("training_log_*.txt"))
        assert len(names) == 3
        assert all(re.fullmatch(rf"training_log_\d{{4}}(_\d\d){{5}}_\d{{6}}_pid{os.getpid()}\.txt", n) for n in names)
    finally:
        for h in handlers:
            for name in ("autosam", "autosam_plugins"):
                logging.getLogger(name).removeHandler(h)
            h.close()


# ------------------------------------------------------------------------------ OS errors
def _os_error(code: int, path: Path | None = None) -> OSError:
    return OSError(code, os.strerror(code), *([str(path)] if path is not None else []))


def test_describe_os_error_names_path_and_problem(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert describe_os_error(_os_error(errno.ENOSPC, file)) == f"disk full while writing {file} (no space left on the device)"
    assert describe_os_error(_os_error(errno.ENOSPC)).startswith("disk full while writing (no space")
    assert describe_os_error(_os_error(errno.EDQUOT, file)) == f"disk quota exceeded while writing {file}"
    assert describe_os_error(_os_error(errno.EROFS, file)) == f"read-only file system: cannot write {file}"
    assert describe_os_error(_os_error(errno.EACCES, folder)) == f"no permission to write in {folder}"
    assert describe_os_error(_os_error(errno.EACCES, folder / "new.json")) == f"no permission to write in {folder}"
    assert describe_os_error(_os_error(errno.EEXIST, file)) == f"{file} exists and is a file, not a folder"
    assert describe_os_error(_os_error(errno.ENOTDIR, file / "sub" / "x")) == (
        f"{file / 'sub' / 'x'} is not a folder (a file is in the path: {file})")
    assert describe_os_error(_os_error(errno.ENOENT, tmp_path / "nope")) == f"{tmp_path / 'nope'}: no such file or folder"
    assert describe_os_error(_os_error(errno.EIO, file)).startswith(f"input/output error on {file}")
    assert describe_os_error(FileNotFoundError(f"{file}: model folder does not exist")) == (
        f"{file}: model folder does not exist")  # autosam's own message is kept


@pytest.fixture
def trained(autosam_dirs, tmp_path):
    """A one-iteration model of the tiny dataset and one image to predict."""
    from autosam.io.image import ImageGeometry, write_image
    from autosam.training.trainer import run_training

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    run_training(NAME, "3d", "unet", 0, epochs=1, iters_per_epoch=1, device="cpu", num_workers=0, validate=False)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    geometry = ImageGeometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (20, 24, 24))
    write_image(images / "ct_0000.nii.gz", rng.normal(0, 1, (20, 24, 24)).astype(np.float32), geometry)
    return images


def _predict(images: Path, out: Path, *extra: str) -> int:
    from autosam.cli.predict import main

    return main(["-i", str(images), "-o", str(out), "-d", NAME, "-c", "3d", "-m", "unet", "-f", "0", "--disable_tta",
                 "-device", "cpu", "-npp", "1", "--quiet", *extra])


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _read_only(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Every file or folder created under ``folder`` fails as on a read-only file system (or
    with ``code``), as the kernel reports it: an OSError naming the path."""
    real_open, real_mkdir = os.open, os.mkdir
    folder = str(folder)

    def inside(path) -> bool:
        return os.path.abspath(os.fsdecode(path)).startswith(folder)

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_prediction_output_errors_are_one_line(trained, tmp_path, capsys):
    from autosam.io.image import read_image

    images = trained
    a_file = tmp_path / "taken.txt"
    a_file.write_text("keep me")
    assert _predict(images, a_file) == 2
    assert _one_line(capsys.readouterr().err) == f"autosam_predict: error: {a_file} exists and is a file, not a folder"
    assert _predict(images, a_file / "sub") == 2
    assert _one_line(capsys.readouterr().err) == (
        f"autosam_predict: error: {a_file / 'sub'} is not a folder (a file is in the path: {a_file})")
    assert a_file.read_text() == "keep me"

    # --verbose adds the traceback, the last line stays the same
    assert _predict(images, a_file, "--verbose") == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "FileExistsError" in err
    assert err.rstrip().splitlines()[-1] == f"autosam_predict: error: {a_file} exists and is a file, not a folder"

    # a finished prediction, then a full disk on the next run: one line, the earlier files intact
    out = tmp_path / "pred"
    assert _predict(images, out) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import SimpleITK as sitk

    def no_space(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: ... Could not write file")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sitk, "WriteImage", no_space)
        mp.setattr("autosam.utils.files.shutil.disk_usage", lambda p: type("U", (), {"free": 0})())
        assert _predict(images, out) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"autosam_predict: error: disk full while writing {out / 'ct.nii.gz'} (no space left on the device)")

    def json_no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no file name

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("autosam.utils.files.json.dump", json_no_space)
        assert _predict(images, out) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"autosam_predict: error: disk full while writing {out / 'dataset.json'} (no space left on the device)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing damaged, no partial file left
    assert read_image(out / "ct.nii.gz")[0].shape == (20, 24, 24)

    # a folder one may not write in (the kernel's answer, simulated so that it also holds for root)
    locked_out = tmp_path / "no_write"
    locked_out.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        _read_only(mp, locked_out, errno.EACCES)
        assert _predict(images, locked_out) == 2
    assert _one_line(capsys.readouterr().err) == f"autosam_predict: error: no permission to write in {locked_out}"


@pytest.mark.skipif(IS_ROOT, reason="root may write in any folder")
def test_output_folder_without_write_permission(trained, tmp_path, capsys):
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert _predict(trained, out) == 2
        assert _one_line(capsys.readouterr().err) == f"autosam_predict: error: no permission to write in {out}"
    finally:
        out.chmod(0o755)


def _raw_dataset(raw: Path) -> Path:
    from raw_dataset_builder import write_raw_dataset

    rng = np.random.default_rng(1)
    cases = {}
    for i in range(3):
        label = np.zeros((8, 12, 12), np.uint8)
        label[2:6, 3:9, 3:9] = 1
        cases[f"c{i}"] = ([rng.normal(0, 1, label.shape).astype(np.float32) + label], label)
    return write_raw_dataset(raw, "Dataset302_Small", cases)


def test_read_only_preprocessed_folder_is_one_line(autosam_dirs, capsys):
    from autosam.cli.plan_and_preprocess import main_fingerprint, main_plan

    _raw_dataset(autosam_dirs["raw"])
    assert main_fingerprint(["-d", "302", "-np", "1", "--no_pbar"]) == 0
    pre = autosam_dirs["preprocessed"] / "Dataset302_Small"
    before = {p.name: p.read_bytes() for p in pre.iterdir()}
    with pytest.MonkeyPatch.context() as mp:
        _read_only(mp, pre)
        assert main_plan(["-d", "302", "--target", "cpu"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"autosam_plan_experiment: error: read-only file system: cannot write {pre / LOCK_FILE}")
    if not IS_ROOT:  # the real thing: the folder's permissions
        pre.chmod(0o555)
        try:
            assert main_fingerprint(["-d", "302", "-np", "1", "--no_pbar", "--clean"]) == 2
            assert _one_line(capsys.readouterr().err) == (
                f"autosam_extract_fingerprint: error: no permission to write in {pre}")
        finally:
            pre.chmod(0o755)
    assert {p.name: p.read_bytes() for p in pre.iterdir()} == before


def test_every_console_script_turns_os_errors_into_one_line():
    import configparser
    import importlib

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    for line in cfg["options.entry_points"]["console_scripts"].splitlines():
        if not line.strip():
            continue
        name, target = (part.strip() for part in line.split("=", 1))
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        assert getattr(main, "autosam_command", None) == name, f"{target} is not wrapped by @command({name!r})"


# ------------------------------------------------------------------------------ orphaned workers
def test_data_loader_workers_die_with_their_parent(tmp_path):
    make_tiny_preprocessed(tmp_path / "pre", num_cases=2)
    parent = _start("""
        import sys, time
        from autosam.training.dataloading import PreprocessedDataset, make_loader
        ds = PreprocessedDataset(sys.argv[1])
        loader = make_loader(ds, 2, [16, 32, 32], None, train=True, num_workers=2, seed=1)
        next(loader)
        print(" ".join(str(p.pid) for p in loader._processes), flush=True)
        time.sleep(600)
    """, str(tmp_path / "pre" / NAME / "autosamPlans_3d"))
    workers = [int(p) for p in _first_line(parent).split()]
    assert len(workers) == 2 and all(process_running(p) for p in workers)
    _kill(parent)
    assert _wait_gone(workers) == []


def test_pool_workers_die_with_their_parent():
    parent = _start("""
        import multiprocessing, threading, time
        from autosam.utils.parallel import imap_jobs

        def report():
            while len(multiprocessing.active_children()) < 2:
                time.sleep(0.05)
            time.sleep(0.5)  # the workers run their initializer
            print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)

        if __name__ == "__main__":
            threading.Thread(target=report, daemon=True).start()
            list(imap_jobs(time.sleep, [600, 600], 2))
    """)
    workers = [int(p) for p in _first_line(parent).split()]
    assert len(workers) >= 2
    _kill(parent)
    assert _wait_gone(workers) == []


def test_exit_with_parent_ends_a_worker_whose_parent_is_gone_already():
    # the worker's recorded parent is not its parent: it ends at once, with status 1
    code = subprocess.run([sys.executable, "-c", "import os, time\nfrom autosam.utils.processes import "
                           "exit_with_parent\nexit_with_parent(os.getppid() + 1000000)\ntime.sleep(30)"],
                          timeout=60).returncode
    assert code == 1


# ------------------------------------------------------------------------------ old preprocessed folder
def test_undeclared_values_in_an_old_preprocessed_folder_stop_training_before_anything_is_written(autosam_dirs,
                                                                                                  capsys):
    """A folder preprocessed before undeclared label values were refused: one error naming the case
    files, before the model folder exists (never an IndexError mid-training)."""
    from autosam.cli.train import main as train_main
    from autosam.preprocessing.storage import case_paths
    from autosam.utils.files import read_json, save_npy, write_json

    folder = make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4) / "autosamPlans_3d"
    # case_000: properties name the value (what the preprocessor has always recorded)
    _, seg_p, prop_p = case_paths(folder, "case_000")
    seg = np.load(seg_p)
    seg[0, 0, 0, :2] = 7
    save_npy(seg_p, seg)
    props = read_json(prop_p)  # an old folder kept the class locations in the JSON file
    labels = props.pop("class_location_labels")
    props.pop("class_locations_file")
    props["class_locations"] = {**{label: [[1, 1, 1]] for label in labels}, "7": [[0, 0, 0], [0, 0, 1]]}
    write_json(prop_p, props)
    # case_003: properties without class_locations; the segmentation is read
    _, seg_p3, prop_p3 = case_paths(folder, "case_003")
    seg = np.load(seg_p3)
    seg[0, 5, 5, 5] = 5
    save_npy(seg_p3, seg)
    props = read_json(prop_p3)
    for key in ("class_locations", "class_locations_file", "class_location_labels"):
        props.pop(key, None)
    write_json(prop_p3, props)

    assert train_main([NAME, "3d", "unet", "0", "--epochs", "1", "--device", "cpu", "--num-workers", "0",
                       "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 preprocessed segmentation(s)" in err and "hold label values that dataset.json does not declare" in err
    assert f"{seg_p}: label value(s) [7]" in err and f"{seg_p3}: label value(s) [5]" in err
    assert f"Remove {folder} and run autosam_preprocess -d {NAME} -c 3d" in err
    assert "Traceback" not in err
    assert not (autosam_dirs["results"] / NAME).exists()


# ------------------------------------------------------------------------------ resume at the very end
def test_a_stop_between_the_last_epoch_and_the_final_checkpoint_is_finished_by_resume(autosam_dirs, monkeypatch):
    """Found by benchmarks/reliability/fault_injection.py: killed after checkpoint_latest.pth of the last epoch,
    the rerun must still run after_training, write checkpoint_final.pth and remove the latest one."""
    from autosam.training import checkpoint as ckpt_io
    from autosam.training import trainer
    from autosam.training.trainer import run_training

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    kw = dict(epochs=2, iters_per_epoch=1, device="cpu", num_workers=0, validate=False)

    class Killed(BaseException):
        pass

    def killed(self):
        raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer._Loop, "finish", killed)
        with pytest.raises(Killed):
            run_training(NAME, "3d", "unet", 0, **kw)
    fold_dir = autosam_dirs["results"] / NAME / "unet__autosamPlans__3d" / "fold_0"
    assert not (fold_dir / "checkpoint_final.pth").exists()
    latest = ckpt_io.load_checkpoint(fold_dir / "checkpoint_latest.pth")
    assert latest["epoch"] == 2

    calls = []
    original = trainer._Loop.finish
    monkeypatch.setattr(trainer._Loop, "finish", lambda self: (calls.append(self.start_epoch), original(self)))
    run_training(NAME, "3d", "unet", 0, resume=True, **kw)
    assert calls == [2]
    final = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")
    assert final["epoch"] == 2 and final["logger"]["train_loss"] == latest["logger"]["train_loss"]
    assert not (fold_dir / "checkpoint_latest.pth").exists()

    # stopped between writing the final checkpoint and removing the latest one: only the removal is left
    import shutil

    shutil.copyfile(fold_dir / "checkpoint_final.pth", fold_dir / "checkpoint_latest.pth")
    before = (fold_dir / "checkpoint_final.pth").read_bytes()
    run_training(NAME, "3d", "unet", 0, resume=True, **kw)
    assert calls == [2] and (fold_dir / "checkpoint_final.pth").read_bytes() == before
    assert not (fold_dir / "checkpoint_latest.pth").exists()


# ------------------------------------------------------------------------------ shared folders by design
def test_prediction_parts_share_an_output_folder_but_not_a_part(tmp_path):
    """-num_parts jobs write into one folder, each owning its part's lock file."""
    folder = tmp_path / "pred"
    owner = _start("""
        import sys, time
        from autosam.utils.locks import lock_folder
        lock = lock_folder(sys.argv[1], "prediction output folder", lock_name=".autosam.part0of2.lock")
        print("locked", flush=True)
        time.sleep(600)
    """, str(folder))
    try:
        assert _first_line(owner) == "locked"
        with lock_folder(folder, "prediction output folder", lock_name=".autosam.part1of2.lock"):
            pass  # another part: free
        with pytest.raises(FolderLockedError, match=re.escape(str(folder / ".autosam.part0of2.lock"))):
            lock_folder(folder, "prediction output folder", lock_name=".autosam.part0of2.lock")
    finally:
        _kill(owner)


def test_under_ddp_every_rank_stops_when_rank_0_cannot_take_the_fold(tmp_path, monkeypatch):
    from autosam.training import distributed, trainer

    owner = {"host": "node-3", "pid": 77, "started": "2020-01-01T00:00:00", "command": "autosam_train 4 3d unet 0",
             "heartbeat": time.time()}
    sent = []
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: (sent.append(obj), owner)[1])
    with pytest.raises(FolderLockedError, match="PID 77 on host node-3"):
        trainer._lock_fold(tmp_path / "fold_0", main=False, world_size=2)  # rank 1 hears of rank 0's failure
    assert sent == [None] and not (tmp_path / "fold_0").exists()  # rank 1 neither locks nor writes
    monkeypatch.setattr(distributed, "broadcast_object", lambda obj, src=0: obj)
    lock = trainer._lock_fold(tmp_path / "fold_0", main=True, world_size=2)  # rank 0, fold free
    assert lock is not None and (tmp_path / "fold_0" / LOCK_FILE).is_file()
    lock.release()
