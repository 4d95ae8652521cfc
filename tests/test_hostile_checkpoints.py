"""Careless or hostile checkpoints (issue: hostile input): a raw pickle and a legacy-format torch
file are one line naming the file; a refused -pretrained_weights writes nothing into the fold folder."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from autosam.cli.predict_modelfolder import main as modelfolder_main
from autosam.cli.train import main as train_main
from autosam.utils.files import ENV_TRUST_PICKLE
from model_helpers import tiny_model_folder, write_images
from training_data import NAME, make_tiny_preprocessed


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(ENV_TRUST_PICKLE, raising=False)


def _raw_pickle(path):
    path.write_bytes(pickle.dumps({"method": "unet", "network": {}, "best": np.float64(0.5)}))


def _legacy_torch(path):
    torch.save({"method": "unet", "network": {}, "best": np.float64(0.5)}, path, _use_new_zipfile_serialization=False)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith("folds with")]


@pytest.mark.parametrize("write", [_raw_pickle, _legacy_torch])
def test_raw_pickle_and_legacy_checkpoints_are_one_line(autosam_dirs, tmp_path, capsys, write):
    model = tiny_model_folder(autosam_dirs["results"], folds=(0,))
    write(model / "fold_0" / "checkpoint_final.pth")
    write_images(tmp_path / "images", n=1, shape=(14, 20, 16))
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "pred"), "-m", str(model),
                             "-device", "cpu", "--quiet"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "fold_0/checkpoint_final.pth: cannot read checkpoint: not in torch.save's zip format" in lines[0]
    assert "Weights only load failed" not in lines[0]


def _other_network(path):
    """A readable autosam checkpoint whose tensors match none of the network's names or shapes."""
    torch.save({"method": "unet", "network": {"elsewhere.weight": torch.zeros(3, 1)}, "epoch": 1}, path)


@pytest.mark.parametrize("write", [_raw_pickle, _legacy_torch, None, _other_network])
def test_a_refused_pretrained_checkpoint_writes_nothing(autosam_dirs, tmp_path, capsys, write):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], num_cases=4)
    weights = tmp_path / "weights.pth"
    if write is not None:
        write(weights)
    assert train_main([NAME, "3d", "unet", "0", "-pretrained_weights", str(weights), "--epochs", "1",
                       "-device", "cpu", "--num-workers", "0"]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(weights) in lines[0], lines
    assert not (autosam_dirs["results"] / NAME).exists()  # no metadata.json, no log, no model folder


def test_weights_of_another_network_are_one_line(autosam_dirs, tmp_path, capsys):
    model = tiny_model_folder(autosam_dirs["results"], folds=(0,))
    path = model / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(path, weights_only=True)
    for key in list(ckpt["network"])[:3]:
        ckpt["network"][key] = torch.zeros(3, 1)
    torch.save(ckpt, path)
    write_images(tmp_path / "images", n=1, shape=(14, 20, 16))
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "pred"), "-m", str(model),
                             "-device", "cpu", "--quiet"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "weights do not fit the network" in lines[0] and "size mismatch" in lines[0], lines
