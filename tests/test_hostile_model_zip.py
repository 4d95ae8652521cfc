"""Hostile model zips (issue: hostile input): a forged checkpoint whatever the environment says,
zip bombs, unsafe dataset names and id collisions, corrupt members and disk errors during install."""
from __future__ import annotations

import errno
import json
import zipfile
from pathlib import Path

import pytest
import torch

from autosam.cli.model_sharing import main_install
from autosam.utils.files import ENV_TRUST_PICKLE
from model_helpers import MODEL
from training_data import NAME

VALID = {f"{NAME}/{MODEL}/plans.json": "{}", f"{NAME}/{MODEL}/dataset.json": "{}"}


def _manifest(dataset=NAME, folders=(MODEL,)):
    return {"format": "autosam-model-zip", "format_version": 1, "dataset": dataset,
            "models": [{"folder": f, "method": f.split("__")[0], "plugin": "unet", "distribution": "autosam",
                        "version": "0.1.0"} for f in folders]}


def _zip(path: Path, members: dict, manifest: dict | None = None, compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("autosam_model.json", json.dumps(manifest or _manifest()))
        for name, data in members.items():
            zf.writestr(name, data)
    return path


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_verifying_a_zip_never_trusts_pickle_whatever_the_environment(autosam_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV_TRUST_PICKLE, "1")  # the user trusts their own old checkpoints
    marker = tmp_path / "code_ran"
    forged = tmp_path / "forged.pth"
    torch.save({"method": "unet", "network": {}, "payload": _Planted(marker)}, forged)
    z = _zip(tmp_path / "forged.zip", {**VALID, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": forged.read_bytes()})
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err
    assert "fold_0/checkpoint_final.pth" in err and "nothing was installed" in err
    assert "AUTOSAM_TRUST_CHECKPOINT_PICKLE" not in err or "does not apply" in err
    assert not marker.exists()  # never unpickled


def _checkpoint_bytes(tmp_path) -> bytes:
    """A plain (format 2 style) checkpoint of method unet: loads with weights_only=True."""
    path = tmp_path / "plain.pth"
    torch.save({"format_version": 2, "method": "unet", "network": {}}, path)
    return path.read_bytes()


@pytest.mark.parametrize("manifest, problem", [
    (_manifest(dataset=f"{NAME}\n"), "'dataset' must be a name"),
    (_manifest(dataset="Dataset990_a b"), "'dataset' must be a name"),
    (_manifest(folders=(MODEL + "\n",)), "bad model entry"),
    (_manifest(folders=(MODEL, MODEL)), "listed twice"),
])
def test_install_refuses_unsafe_names_and_duplicate_folders(autosam_dirs, tmp_path, capsys, manifest, problem):
    z = _zip(tmp_path / "m.zip", {**VALID, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": _checkpoint_bytes(tmp_path)},
             manifest)
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err
    assert problem in err and len(err.strip().splitlines()) == 1
    assert list(autosam_dirs["results"].iterdir()) == []


@pytest.mark.parametrize("where", ["raw", "results"])
def test_install_refuses_a_second_name_for_a_used_dataset_id(autosam_dirs, tmp_path, capsys, where):
    (autosam_dirs[where] / "Dataset990_Other").mkdir()
    z = _zip(tmp_path / "m.zip", {**VALID, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": _checkpoint_bytes(tmp_path)})
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err
    assert "Dataset990_Other" in err and "ambiguous" in err and "nothing was installed" in err
    assert not (autosam_dirs["results"] / NAME).exists()


def test_a_refused_install_leaves_no_empty_dataset_folder(autosam_dirs, tmp_path, capsys):
    z = _zip(tmp_path / "m.zip", {**VALID, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": b"not a checkpoint"})
    assert main_install([str(z)]) == 2
    assert "nothing was installed" in capsys.readouterr().err
    assert list(autosam_dirs["results"].iterdir()) == []  # no Dataset990_Tiny left to make -d 990 resolve to it
    z = _zip(tmp_path / "ok.zip", {**VALID, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": _checkpoint_bytes(tmp_path)})
    assert main_install([str(z)]) == 0  # and the folder works as before


def test_a_zip_that_unpacks_beyond_the_limit_is_refused_before_writing(autosam_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("AUTOSAM_MAX_UNPACKED_GB", raising=False)
    bomb = {f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": b"\0" * (30 << 20)}  # 30 MB of zeros, ~30 kB deflated
    z = _zip(tmp_path / "bomb.zip", {**VALID, **bomb}, compression=zipfile.ZIP_DEFLATED)
    assert z.stat().st_size < 200_000
    assert main_install([str(z), "--max_unpacked_gb", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unpacks to 0.03 GB, more than the limit of 0.01 GB" in err and "--max_unpacked_gb" in err
    assert "AUTOSAM_MAX_UNPACKED_GB" in err and len(err.splitlines()) == 1
    assert list(autosam_dirs["results"].iterdir()) == []
    monkeypatch.setenv("AUTOSAM_MAX_UNPACKED_GB", "0.02")
    assert main_install([str(z)]) == 2
    assert "limit of 0.02 GB" in capsys.readouterr().err


def test_a_corrupt_member_is_one_line_naming_it(autosam_dirs, tmp_path, capsys):
    member = f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth"
    z = _zip(tmp_path / "m.zip", {**VALID, member: _checkpoint_bytes(tmp_path) * 50}, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 20, start + 60):  # damage the compressed data, not the headers
        data[i] ^= 0xFF
    z.write_bytes(bytes(data))
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"member '{member}' is corrupt" in err and "nothing was installed" in err
    assert list(autosam_dirs["results"].iterdir()) == []


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full while writing"),
                                         (errno.EFBIG, "file too large while writing")])
def test_disk_errors_while_unpacking_name_the_file(autosam_dirs, tmp_path, capsys, monkeypatch, code, words):
    import shutil

    z = _zip(tmp_path / "m.zip", {**VALID, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": _checkpoint_bytes(tmp_path)})

    def full(src, dst, length=0):
        raise OSError(code, "no room")  # as write() reports it: no file name

    monkeypatch.setattr(shutil, "copyfileobj", full)
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and f"{NAME}/{MODEL}/plans.json" in err, err
    assert list(autosam_dirs["results"].iterdir()) == []
