"""The frozen TorchScript forward used for CPU prediction: same outputs as the eager network, a
fresh trace after the weights change, a clean fallback, and the unet method's use of it."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from autosam.inference.cpu_inference import frozen_cpu_forward
from autosam.plugins import get_method
from autosam.training.method import MethodContext
from training_data import DATASET_JSON, tiny_plans


def _unet_and_ctx(**overrides):
    method = get_method("unet")
    plans = tiny_plans(patch=(8, 16, 16))
    options = method.make_options({}, overrides)
    ctx = MethodContext(plans, plans.configurations["3d"], DATASET_JSON, options, torch.device("cpu"), 1, 3)
    torch.manual_seed(0)
    return method, method.build_network(ctx), ctx


def test_frozen_forward_matches_eager_and_follows_weight_updates():
    method, net, ctx = _unet_and_ctx()
    net.decoder.deep_supervision = False
    net.eval()
    x = torch.randn(1, 1, 8, 16, 16)
    frozen = frozen_cpu_forward(net, (1, 1, 8, 16, 16))
    assert frozen is not None
    with torch.inference_mode():
        assert torch.allclose(frozen(x), net(x), atol=1e-4)
    assert frozen_cpu_forward(net, (1, 1, 8, 16, 16)) is frozen  # cached while the weights are unchanged

    # an optimiser step changes the weights: the cached graph must not be reused
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net(torch.randn(2, 1, 8, 16, 16)).square().mean().backward()
    opt.step()
    net.eval()
    refreshed = frozen_cpu_forward(net, (1, 1, 8, 16, 16))
    assert refreshed is not frozen
    with torch.inference_mode():
        eager = net(x)
        assert torch.allclose(refreshed(x), eager, atol=1e-4)
        assert not torch.allclose(frozen(x), eager, atol=1e-3)  # the old snapshot really is stale


class _Untraceable(nn.Module):
    def forward(self, x):
        return {"not": "a tensor"}  # torch.jit.trace rejects dict outputs of non-tensors


def test_untraceable_network_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="autosam.inference.cpu_inference"):
        assert frozen_cpu_forward(_Untraceable(), (1, 1, 4, 4, 4)) is None
    assert "using the eager network" in caplog.text


def test_unet_predict_volume_jit_equals_eager_and_restores_deep_supervision():
    method, net, ctx = _unet_and_ctx()
    _, _, ctx_eager = _unet_and_ctx(cpu_inference="eager")
    net.eval()
    data = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 12, 20, 24)).astype(np.float32))
    assert net.decoder.deep_supervision
    jit = method.predict_volume(net, data, ctx, use_mirroring=True)
    assert net.decoder.deep_supervision  # switched off only while predicting
    eager = method.predict_volume(net, data, ctx_eager, use_mirroring=True)
    assert jit.shape == (3, 12, 20, 24)
    assert torch.allclose(jit, eager, atol=1e-4)
    assert torch.allclose(jit.sum(0), torch.ones(12, 20, 24), atol=1e-4)


def test_unet_rejects_unknown_cpu_inference_mode():
    method, net, ctx = _unet_and_ctx(cpu_inference="fast")
    with pytest.raises(ValueError, match="cpu_inference"):
        method.predict_volume(net, torch.zeros(1, 8, 16, 16), ctx)
