"""Checkpoints load with torch.load(weights_only=True): a forged pickle runs no code, the old
format needs an explicit trust flag, new checkpoints round-trip every RNG and resume training."""
from __future__ import annotations

import copy
import dataclasses
import random
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autosam.plugins import Entry
from autosam.training import checkpoint as ckpt_io
from autosam.utils.files import ENV_TRUST_PICKLE, UntrustedPickleError, write_json
from training_data import DATASET_JSON, NAME, make_tiny_preprocessed, tiny_plans


def _entry():
    return Entry(SimpleNamespace(name="unet"), "unet", "autosam", "0.1.0")


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: the file exists afterwards if the pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.delenv(ENV_TRUST_PICKLE, raising=False)


def test_forged_checkpoint_is_refused_without_running_its_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"format_version": 2, "method": "unet", "network": {}, "options": _CreatesFile(marker)}, path)
    with pytest.raises(UntrustedPickleError, match=re.escape(f"{path}: holds Python objects")) as err:
        ckpt_io.load_checkpoint(path)
    assert f"{ENV_TRUST_PICKLE}=1" in str(err.value) and "the global io.open" in str(err.value)
    assert not marker.exists()
    # the predictor reads models through the same function
    from autosam.inference.predictor import load_trained_model

    model = tmp_path / "unet__autosamPlans__3d"
    fold = model / "fold_0"
    fold.mkdir(parents=True)
    tiny_plans().save(model / "plans.json")
    write_json(model / "dataset.json", DATASET_JSON)
    path.rename(fold / "checkpoint_final.pth")
    with pytest.raises(UntrustedPickleError, match="checkpoint_final.pth: holds Python objects"):
        load_trained_model(model, folds=[0])
    assert not marker.exists()
    # declared trusted, full unpickling runs (which is why it must be explicit)
    monkeypatch.setenv(ENV_TRUST_PICKLE, "1")
    ckpt_io.load_checkpoint(fold / "checkpoint_final.pth")
    assert marker.exists()


def _format1_checkpoint(path: Path, net: torch.nn.Module) -> None:
    """What autosam wrote before format 2: numpy's RNG tuple and numpy scalars, pickled."""
    torch.save({"format_version": 1, "method": "unet", "plugin": "unet", "distribution": "autosam", "version": "0.1.0",
                "options": {"lr": 0.1}, "epoch": 3, "num_epochs": 5, "network": net.state_dict(), "optimizer": None,
                "scheduler": None, "grad_scaler": None,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                "logger": {"train_loss": [np.float64(0.5)]}, "best_ema": np.float64(0.25), "method_state": {}}, path)


def test_old_format_loads_only_when_trusted(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    np.random.seed(11)
    _format1_checkpoint(tmp_path / "old.pth", net)
    expected = np.random.rand(3)
    with pytest.raises(UntrustedPickleError, match=f"{ENV_TRUST_PICKLE}=1.*format 1"):
        ckpt_io.load_checkpoint(tmp_path / "old.pth")
    ck = ckpt_io.load_checkpoint(tmp_path / "old.pth", trust=True)  # the explicit flag, as an argument
    monkeypatch.setenv(ENV_TRUST_PICKLE, "1")
    ck = ckpt_io.load_checkpoint(tmp_path / "old.pth")  # or the environment variable
    net2 = torch.nn.Linear(2, 2)
    np.random.seed(0)
    ckpt_io.restore_training_state(ck, network=net2)
    assert torch.equal(net2.weight, net.weight) and ck["epoch"] == 3
    assert np.array_equal(np.random.rand(3), expected)  # numpy's RNG restored from the old tuple


@dataclasses.dataclass
class _Options:
    lr: float = 0.01
    weights: Path = Path("/models/w.pth")
    scale: np.float32 = np.float32(0.5)


def test_new_checkpoint_is_plain_and_restores_every_rng(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4])  # its state holds a Counter
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's legacy state
    ckpt_io.save_checkpoint(tmp_path / "c.pth", method_entry=_entry(), options=_Options(), network=net, optimizer=opt,
                            scheduler=sched, epoch=2, num_epochs=4, history={"train_loss": [np.float64(0.7)]},
                            best_ema=np.float64(0.4), method_state={"prototypes": np.arange(4.0), "n": np.int64(3)})
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    # the file itself is readable by torch's restricted unpickler (a MultiStepLR's Counter is allowed)
    raw = torch.load(tmp_path / "c.pth", weights_only=True)
    assert raw["format_version"] == ckpt_io.CHECKPOINT_FORMAT_VERSION == 2
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ck = ckpt_io.load_checkpoint(tmp_path / "c.pth")
    assert ck["options"] == {"lr": 0.01, "weights": "/models/w.pth", "scale": 0.5}
    assert ck["logger"] == {"train_loss": [0.7]} and ck["best_ema"] == 0.4 and type(ck["best_ema"]) is float
    assert torch.equal(ck["method_state"]["prototypes"], torch.arange(4.0, dtype=torch.float64))
    assert ck["method_state"]["n"] == 3
    opt2 = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[1])
    ckpt_io.restore_training_state(ck, network=torch.nn.Linear(3, 2), optimizer=opt2, scheduler=sched2)
    assert sched2.milestones == sched.milestones
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(2))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_an_object_a_checkpoint_cannot_hold_is_named(tmp_path):
    with pytest.raises(TypeError, match=re.escape("checkpoint['method_state']['cache'][1]: a builtins.object")):
        ckpt_io.save_checkpoint(tmp_path / "c.pth", method_entry=_entry(), options=SimpleNamespace(),
                                network=torch.nn.Linear(1, 1), epoch=1, num_epochs=1,
                                method_state={"cache": [1, object()]})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_training_resumes_from_a_new_format_checkpoint(autosam_dirs, monkeypatch):
    """A run stopped during epoch 3 of 3 resumes from checkpoint_latest (read with weights_only)
    with exactly its weights, optimiser and scheduler state, and runs the last epoch only."""
    from autosam.training import trainer

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    kw = dict(iters_per_epoch=2, device="cpu", num_workers=0, validate=False)
    original = trainer._Loop.run_epoch
    seen = {}

    def stop_at_third(self, epoch, *a):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, *a)

    def record_first(self, epoch, *a):
        seen.setdefault("state", (epoch, {k: v.clone() for k, v in self.network.state_dict().items()},
                                  copy.deepcopy(self.optimizer.state_dict()), self.scheduler.state_dict()))
        return original(self, epoch, *a)

    monkeypatch.setattr(trainer._Loop, "run_epoch", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        trainer.run_training(NAME, "3d", "unet", 0, epochs=3, **kw)
    fold_dir = autosam_dirs["results"] / NAME / "unet__autosamPlans__3d" / "fold_0"
    saved = torch.load(fold_dir / "checkpoint_latest.pth", weights_only=True)
    assert saved["epoch"] == 2 and saved["format_version"] == 2
    monkeypatch.setattr(trainer._Loop, "run_epoch", record_first)
    trainer.run_training(NAME, "3d", "unet", 0, epochs=3, resume=True, **kw)
    epoch, weights, optimizer, scheduler = seen["state"]
    assert epoch == 2
    assert all(torch.equal(weights[k], v) for k, v in saved["network"].items())
    assert scheduler == saved["scheduler"]
    for key, state in saved["optimizer"]["state"].items():
        assert all(torch.equal(optimizer["state"][key][name], value) for name, value in state.items()
                   if isinstance(value, torch.Tensor))
    assert torch.load(fold_dir / "checkpoint_final.pth", weights_only=True)["epoch"] == 3
