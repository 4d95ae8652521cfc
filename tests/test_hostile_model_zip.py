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
