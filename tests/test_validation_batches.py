"""The per-epoch validation runs the share of batches the method asks for (Method.per_epoch_validation_fraction)."""
from __future__ import annotations

import pytest

from training_data import NAME, make_tiny_preprocessed


@pytest.mark.parametrize("fraction,expected", [(0.2, 4), (0.05, 1)])
def test_validation_batches_follow_the_method(autosam_dirs, monkeypatch, fraction, expected):
    """20 iterations: nnU-Net's fifth is 4 batches (20 * 0.2 in floating point is 4.000000000000001,
    which must not round up to 5); a method asking 0.05 gets 1."""
    from autosam.plugins import get_plugin_system
    from autosam.training.trainer import run_training

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    method = get_plugin_system().methods.entry("unet").obj
    calls = []
    original = method.validation_step
    monkeypatch.setattr(method, "validation_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(method, "per_epoch_validation_fraction", fraction)
    run_training(NAME, "3d", "unet", 0, epochs=1, iters_per_epoch=20, device="cpu", num_workers=0, validate=False)
    assert len(calls) == expected


def test_sautomed_asks_for_fewer_validation_batches():
    from autosam.method import Method
    from autosam.plugins import get_plugin_system

    assert Method.per_epoch_validation_fraction == 0.2
    assert get_plugin_system().methods.entry("sautomed").obj.per_epoch_validation_fraction < 0.1
