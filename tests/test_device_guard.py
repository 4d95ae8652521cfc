"""Device bugs found on the CPU: every method trains a step and predicts a case under ``DeviceGuard``
(tests/device_guard.py explains how a CPU run can see what would fail on a GPU) and fp16 autocast."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from device_guard import DeviceBug, DeviceGuard, mark_on_device
from training_data import NAME, make_tiny_preprocessed

#: tiny settings of every built-in method (random tiny backbones, small localiser)
TINY_OPTIONS = {
    "unet": {},
    "sautomed": {"backbone": "tiny", "allow_random_init": "true", "input_size": "64", "slice_size": "32 32",
                 "attention_heads": "2", "history_tokens": "4"},
    "masksam": {"backbone": "tiny", "allow_random_init": "true", "patch_size": "4 32 32", "input_size": "64",
                "num_queries": "4", "generator_width": "8"},
    "msam": {"backbone": "tiny3d", "train_iterations": "2"},
    "medlsam": {"patch": "16", "base_width": "8", "num_pool": "2", "feature_dim": "8", "r_mm": "120 120 120",
                "backbone": "tiny", "num_support": "2"},
}


def test_guard_flags_a_host_tensor_meeting_a_device_tensor():
    x = torch.randn(2, 3)
    mark_on_device(x)
    with DeviceGuard():
        with pytest.raises(DeviceBug, match=r"created without device= at .*test_device_guard.py"):
            _ = x * torch.ones(3)
        with pytest.raises(DeviceBug, match="numpy"):
            x.numpy()
        with pytest.raises(DeviceBug):  # the host tag survives operations on host tensors
            _ = x + (torch.arange(3) * 2).float()


def test_guard_accepts_correct_device_handling():
    net = torch.nn.Linear(3, 2)
    guard = DeviceGuard()
    with guard:
        net.to(torch.device("cpu"))  # the test's device: parameters become device tensors
        x = torch.from_numpy(np.ones((4, 3), np.float32)).to(torch.device("cpu"))
        y = net(x) * torch.ones(2, device=x.device) + torch.tensor(0.5)  # 0-dim host scalars are fine on CUDA too
        y = y[torch.tensor([0, 2])]  # CPU index tensors are allowed
        out = y.detach().cpu().numpy()
        buf = torch.zeros(4, 2)
        buf[:2].copy_(y)  # copies cross devices
        _ = buf * torch.ones(2)  # host with host
    assert out.shape == (2, 2) and guard.checked > 0


@pytest.mark.slow  # 10-80 s per method on a loaded CPU (fp16 is emulated there)
@pytest.mark.parametrize("method", sorted(TINY_OPTIONS))
def test_every_method_trains_and_predicts_without_host_tensors(method, autosam_dirs, monkeypatch, caplog):
    """One training step (with the patch validation, checkpointing and after_training hooks) and
    the prediction of one case, with every operation checked by the guard. As on a GPU without
    native bf16, training and prediction run under fp16 autocast with gradient scaling (CPU autocast)."""
    import logging

    from autosam.inference.predictor import load_trained_model, predict_preprocessed_case
    from autosam.training.dataloading import PreprocessedDataset
    from autosam.training.trainer import run_training
    from autosam.utils import precision

    monkeypatch.setattr(precision, "amp_dtype", lambda device, cpu_bf16=False: torch.float16)
    caplog.set_level(logging.INFO, logger="autosam.training.trainer")

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    dataset = PreprocessedDataset(autosam_dirs["preprocessed"] / NAME / "autosamPlans_3d")
    data, _, props = dataset.load(dataset.keys[0])
    guard = DeviceGuard()
    with guard:
        fold_dir = run_training(990, "3d", method, 0, epochs=1, iters_per_epoch=1, device="cpu", num_workers=0,
                                method_overrides=TINY_OPTIONS[method], validate=False)
        model = load_trained_model(fold_dir.parent, [0], "final", "cpu")
        probs = predict_preprocessed_case(model.method, model.folds, data, props, model.ctx, use_mirroring=False)
    assert probs.shape == (3, *data.shape[1:]) and torch.isfinite(probs).all()
    assert "precision: fp16 on cpu" in caplog.text
    assert guard.checked > 100  # the guard saw the device tensors of the run
