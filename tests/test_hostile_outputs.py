"""Careless output folders (issue: hostile input): ``autosam_predict -o`` pointed at a raw dataset's
folder must not overwrite it; ``-m .`` names the model folder one is in."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from autosam.cli.predict import main as predict_main
from autosam.cli.predict_modelfolder import main as modelfolder_main
from autosam.utils.files import write_json
from model_helpers import tiny_model_folder, write_images
from training_data import DATASET_JSON, NAME


def _predict(images, out, *extra):
    return predict_main(["-i", str(images), "-o", str(out), "-d", NAME, "-c", "3d", "-m", "unet", "-f", "0",
                         "-device", "cpu", "--quiet", "-npp", "1", "--disable_tta", *extra])


def test_predict_refuses_a_foreign_non_empty_output_folder(autosam_dirs, tmp_path, capsys):
    tiny_model_folder(autosam_dirs["results"], folds=(0,))
    images = tmp_path / "images"
    write_images(images, n=1, shape=(14, 20, 16))
    raw = autosam_dirs["raw"] / NAME
    labels_ts = raw / "labelsTs"
    labels_ts.mkdir(parents=True)
    write_json(raw / "dataset.json", {**DATASET_JSON, "description": "the user's own"})
    (labels_ts / "img_000.nii.gz").write_bytes(b"the user's reference label")
    before = {p: p.read_bytes() for p in (raw / "dataset.json", labels_ts / "img_000.nii.gz")}
    for out in (labels_ts, raw):
        assert _predict(images, out) == 2
        err = capsys.readouterr().err
        assert "not a prediction folder" in err and "--overwrite_output" in err and "Traceback" not in err
        assert {p: p.read_bytes() for p in before} == before  # nothing overwritten
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no lock left
    # a new folder, then the same folder again (a prediction folder), are fine
    assert _predict(images, tmp_path / "pred") == 0
    assert _predict(images, tmp_path / "pred") == 0
    # asked to, it writes into the foreign folder
    assert _predict(images, labels_ts, "--overwrite_output") == 0
    assert (labels_ts / "img_000.nii.gz").read_bytes() != before[labels_ts / "img_000.nii.gz"]


def test_predict_from_modelfolder_accepts_dot(autosam_dirs, tmp_path, monkeypatch, capsys):
    model = tiny_model_folder(autosam_dirs["results"], folds=(0,))
    images = tmp_path / "images"
    write_images(images, n=1, shape=(14, 20, 16))
    monkeypatch.chdir(model)
    assert modelfolder_main(["-i", str(images), "-o", str(tmp_path / "pred"), "-m", ".", "-f", "0", "-device", "cpu",
                             "--quiet", "-npp", "1", "--disable_tta"]) == 0, capsys.readouterr().err
    assert (tmp_path / "pred" / "img_000.nii.gz").is_file()


def test_an_os_error_on_a_path_with_a_newline_stays_on_one_line(autosam_dirs, tmp_path, capsys):
    tiny_model_folder(autosam_dirs["results"], folds=(0,))
    write_images(tmp_path / "images", n=1, shape=(14, 20, 16))
    blocker = tmp_path / "notes\nold.txt"
    blocker.write_text("a file where a folder is expected")
    assert _predict(tmp_path / "images", blocker / "pred") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "folds with" not in line]
    assert len(err) == 1 and "notes\\nold.txt" in err[0] and "is not a folder" in err[0], err


def test_a_lock_that_cannot_be_written_names_its_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from autosam.utils import locks

    def full(fd, data, offset):
        raise OSError(errno.EFBIG, "File too large")  # as write() reports it: no file name

    monkeypatch.setattr(locks.os, "pwrite", full)
    out = tmp_path / "pred"
    with pytest.raises(OSError) as err:
        with locks.lock_folder(out, "prediction output folder"):
            pass
    assert err.value.errno == errno.EFBIG and err.value.filename == str(out / ".autosam.lock")
    assert not out.exists()  # neither the lock file nor the folder it created
