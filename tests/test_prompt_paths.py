"""Every method's prompt path (issue 27 §1): which prompt kinds it declares, that it takes them
(the prediction changes with the prompt and respects it), that a cached image encoding makes a
prompt cost no encoder pass, and a clear error for what it does not take. Tiny random backbones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autosam.plugins import get_method
from autosam.prompts import Box2D, LabelPrompts, Point
from autosam.training.method import MethodContext
from test_medlsam_plugin import make_ctx


def _ctx(name: str, options: dict, overrides: dict):
    base = make_ctx(get_method("medlsam"))  # plans/configuration of a 3-class toy dataset (spacing 3, 1.5, 1.5)
    m = get_method(name)
    opts = m.make_options(options, overrides)
    ctx = MethodContext(plans=base.plans, configuration=base.configuration, dataset_json={}, options=opts,
                        device=torch.device("cpu"), num_input_channels=1, num_classes=3)
    return m, ctx


def _data(z=10, y=32, x=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = 0.2 * torch.randn((1, z, y, x), generator=g)
    d[:, 3:7, 8:20, 10:22] += 2.0
    return d


class EncoderCalls:
    """Counts the forward passes of an image encoder."""

    def __init__(self, encoder):
        self.n = 0
        encoder.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))


def test_declared_prompt_kinds():
    assert get_method("medlsam").prompt_kinds == {"box3d", "box2d"}
    assert get_method("sautomed").prompt_kinds == {"box3d", "box2d"}
    assert get_method("msam").prompt_kinds == {"points", "mask"}
    assert get_method("masksam").prompt_kinds == frozenset()


def test_masksam_and_unet_refuse_prompts_clearly():
    for name in ("masksam", "unet"):
        m = get_method(name)
        with pytest.raises(ValueError, match=f"method '{name}' takes no prompts"):
            m.predict_with_prompts(None, _data(), {1: LabelPrompts(boxes3d=[(0, 0, 0, 1, 1, 1)])}, None)


def test_medlsam_boxes_replace_the_localiser_and_slices_are_encoded_once():
    torch.manual_seed(0)
    m = get_method("medlsam")
    ctx = make_ctx(m)
    net = m.build_network(ctx).eval()
    data = _data()
    calls = EncoderCalls(m._backbone(ctx).image_encoder)
    cache = m.encode_image(net, data, ctx)
    prompts = {1: LabelPrompts(boxes3d=[(3, 8, 10, 6, 19, 21)])}
    probs = m.predict_with_prompts(net, data, prompts, ctx, cache=cache)
    assert probs.shape == (3, 10, 32, 32) and torch.allclose(probs.sum(0), torch.ones(10, 32, 32), atol=1e-4)
    assert probs[1, :3].max() == 0 and probs[1, 7:].max() == 0 and probs[2].max() == 0  # only the box's slices, label 1
    first = calls.n
    assert first >= 1
    again = m.predict_with_prompts(net, data, {1: LabelPrompts(boxes3d=[(4, 8, 10, 5, 19, 21)]),
                                               2: LabelPrompts(box2d=Box2D(z=4, y0=2, x0=2, y1=6, x1=6, z_lo=3, z_hi=5))},
                                   ctx, cache=cache)
    assert calls.n == first  # slices 3..6 were encoded by the first prompt: no encoder pass now
    assert again[2, [0, 1, 2, 6, 7, 8, 9]].max() == 0
    with pytest.raises(ValueError, match="does not take points prompts"):
        m.predict_with_prompts(net, data, {1: LabelPrompts(points=[Point(1, 1, 1)])}, ctx, cache=cache)


def test_sautomed_user_boxes_steer_the_generator_without_encoder_passes():
    torch.manual_seed(0)
    m, ctx = _ctx("sautomed", {"backbone": "tiny", "input_size": 64, "slice_size": [32, 32]},
                  {"allow_random_init": "true", "attention_heads": "2", "history_tokens": "4"})
    net = m.build_network(ctx).eval()
    data = _data()
    calls = EncoderCalls(net.backbone.image_encoder)
    cache = m.encode_image(net, data, ctx)
    encoded = calls.n
    a = m.predict_with_prompts(net, data, {1: LabelPrompts(boxes3d=[(3, 8, 10, 6, 19, 21)])}, ctx, cache=cache)
    b = m.predict_with_prompts(net, data, {1: LabelPrompts(boxes3d=[(2, 0, 0, 8, 15, 15)])}, ctx, cache=cache)
    assert calls.n == encoded  # prompts cost no encoder pass
    assert a.shape == (3, 10, 32, 32) and torch.allclose(a.sum(0), torch.ones(10, 32, 32), atol=1e-4)
    assert a[1, :3].max() == 0 and a[1, 7:].max() == 0 and a[1, :, :8].max() == 0  # zero outside the 3D box
    assert not torch.allclose(a[1, 3:7, 8:16, 10:16], b[1, 3:7, 8:16, 10:16])  # the box reaches the generator
    uncached = m.predict_with_prompts(net, data, {1: LabelPrompts(boxes3d=[(3, 8, 10, 6, 19, 21)])}, ctx)
    assert torch.allclose(a, uncached, atol=1e-5)  # the cache changes nothing but the cost
    two_d = m.predict_with_prompts(net, data, {2: LabelPrompts(box2d=Box2D(z=4, y0=8, x0=10, y1=19, x1=21, z_lo=3,
                                                                           z_hi=6))}, ctx, cache=cache)
    assert two_d[2, :3].max() == 0 and two_d[2, 7:].max() == 0


def test_msam_clicks_and_previous_mask_refine_without_encoder_passes():
    torch.manual_seed(0)
    # a fresh zero-initialised MEA ignores the mask stream by design: the default init lets it through
    m, ctx = _ctx("msam", {}, {"backbone": "tiny3d", "mea_zero_init": "false"})
    net = m.build_network(ctx).eval()
    data = _data(z=20, y=40, x=36)
    calls = EncoderCalls(net.backbone.image_encoder)
    cache = m.encode_image(net, data, ctx)
    encoded = calls.n
    assert encoded == len(cache["embeddings"]) >= 2  # one pass per sliding window
    click = {1: LabelPrompts(points=[Point(5, 12, 15, True)])}
    p1 = m.predict_with_prompts(net, data, click, ctx, cache=cache)
    more = {1: LabelPrompts(points=[Point(5, 12, 15, True), Point(15, 30, 30, False)])}
    p2 = m.predict_with_prompts(net, data, more, ctx, cache=cache)
    mask = np.zeros((20, 40, 36), bool)
    mask[3:7, 8:20, 10:22] = True
    p3 = m.predict_with_prompts(net, data, {1: LabelPrompts(points=[Point(5, 12, 15, True)], previous_mask=mask)}, ctx,
                                cache=cache)
    assert calls.n == encoded  # clicks and masks: decoder passes only
    assert p1.shape == (3, 20, 40, 36) and torch.allclose(p1.sum(0), torch.ones(20, 40, 36), atol=1e-4)
    auto = m.predict_volume(net, data, ctx, use_mirroring=False)
    assert not torch.allclose(p1, auto, atol=1e-4) and not torch.allclose(p1, p2) and not torch.allclose(p1, p3)
    with pytest.raises(ValueError, match="does not take box3d prompts"):
        m.predict_with_prompts(net, data, {1: LabelPrompts(boxes3d=[(0, 0, 0, 1, 1, 1)])}, ctx, cache=cache)
    with pytest.raises(ValueError, match="outside the image"):
        m.predict_with_prompts(net, data, {1: LabelPrompts(points=[Point(25, 1, 1)])}, ctx, cache=cache)
