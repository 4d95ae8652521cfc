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


def test_unet_predicts_in_bf16_through_the_case_predictor_when_asked(monkeypatch):
    """``ctx.cpu_bf16``: the fold ensemble runs under CPU bf16 autocast, unet leaves its float32
    TorchScript graph for the eager network (which autocast reaches), and the probabilities stay
    close to float32's."""
    from autosam.inference import cpu_inference
    from autosam.inference.case_prediction import predict_preprocessed_case

    method, net, ctx = _unet_and_ctx()
    net.eval()
    data = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 12, 20, 24)).astype(np.float32))
    fp32 = predict_preprocessed_case(method, [net], data, None, ctx)
    conv_dtypes = []
    hook = net.encoder.stages[0].register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    traced = []
    real_frozen = cpu_inference.frozen_cpu_forward
    monkeypatch.setattr(cpu_inference, "frozen_cpu_forward", lambda *a, **k: traced.append(1) or real_frozen(*a, **k))
    ctx.cpu_bf16 = True
    try:
        bf16 = predict_preprocessed_case(method, [net], data, None, ctx)
    finally:
        hook.remove()
    assert not traced and conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert torch.allclose(bf16.sum(0), torch.ones(12, 20, 24), atol=1e-4)
    assert (bf16 - fp32).abs().max() < 0.05
    assert (bf16.argmax(0) == fp32.argmax(0)).float().mean() > 0.98
