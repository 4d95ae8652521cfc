"""Mechanism tests of the ``masksam`` plugin (MaskSAM) on the ``tiny`` backbone."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from autosam_plugins.masksam.adapters import Adapter
from autosam_plugins.masksam.losses import MaskSAMLoss
from autosam_plugins.masksam.matching import CostWeights, SliceTarget, hungarian, match_slice, slice_targets
from autosam_plugins.masksam.model import MaskSAMNet, scores_to_log_probs, semantic_scores
from autosam_plugins.masksam.prompt_generator import boxes_from_masks, combine_boxes

T, S = 4, 64


def tiny_net(**kw) -> MaskSAMNet:
    from autosam.sam.backbones import build_backbone

    torch.manual_seed(0)
    bb = build_backbone("tiny", input_size=S, allow_random_init=True)
    net = MaskSAMNet(bb, in_channels=1, num_classes=2, depth=T, num_queries=4, input_size=S, pg_width=8,
                     zero_init=False, **kw)
    return net.eval()


# ----------------------------------------------------------------------------------- matching
def test_hungarian_hand_made_case():
    # 4 queries, 3 segments; greedy (row-wise minimum) would take (0, 0) and lose.
    cost = torch.tensor([[1.0, 2.0, 9.0], [1.5, 9.0, 9.0], [9.0, 9.0, 0.5], [9.0, 9.0, 9.0]])
    rows, cols = hungarian(cost)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0, 2: 2}
    assert cost[rows, cols].sum().item() == pytest.approx(4.0)


def test_hungarian_agrees_with_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, m = rng.integers(2, 6), 0
        m = int(rng.integers(1, n + 1))
        cost = torch.from_numpy(rng.random((n, m)))
        rows, cols = hungarian(cost)
        assert len(rows) == m and len(set(rows.tolist())) == m
        best = min(sum(cost[q, j].item() for j, q in enumerate(perm)) for perm in itertools.permutations(range(n), m))
        assert cost[rows, cols].sum().item() == pytest.approx(best)


def test_match_slice_finds_the_query_that_predicts_each_segment():
    h = w = 16
    seg = torch.zeros(h, w, dtype=torch.long)
    seg[2:6, 2:6] = 1
    seg[9:14, 8:15] = 2
    target = slice_targets(seg[None, None, None], num_classes=2)[0]
    assert target.labels.tolist() == [0, 1]
    n = 5
    logits = torch.zeros(n, 3)
    masks = torch.full((n, h, w), -8.0)
    # query 3 predicts class 2's segment, query 1 class 1's; the others predict "no object"
    logits[:, 2] = 5.0
    logits[3] = torch.tensor([0.0, 6.0, 0.0])
    masks[3][seg == 2] = 8.0
    logits[1] = torch.tensor([6.0, 0.0, 0.0])
    masks[1][seg == 1] = 8.0
    rows, cols = match_slice(logits, masks, None, None, target, CostWeights())
    assert dict(zip(rows.tolist(), cols.tolist())) == {1: 0, 3: 1}


def test_slice_targets_one_segment_per_label_present():
    seg = torch.zeros(1, 1, 2, 8, 8, dtype=torch.long)
    seg[0, 0, 0, 1:3, 1:4] = 2
    seg[0, 0, 1] = 1
    seg[0, 0, 1, 0, 0] = 255  # an ignore label: no segment
    t0, t1 = slice_targets(seg, num_classes=2)
    assert t0.labels.tolist() == [1] and t0.masks.sum() == 6
    assert torch.allclose(t0.boxes[0], torch.tensor([1 / 8, 1 / 8, 4 / 8, 3 / 8]))
    assert t1.labels.tolist() == [0] and t1.masks.sum() == 63


# ----------------------------------------------------------------------------------- boxes
def test_boxes_from_masks_matches_definition():
    rng = np.random.default_rng(1)
    masks = torch.from_numpy(rng.random((6, 10, 12)) > 0.93).float()
    masks[5] = 0
    boxes, valid = boxes_from_masks(masks)
    for i in range(6):
        ys, xs = np.nonzero(masks[i].numpy())
        if len(ys) == 0:
            assert not valid[i] and boxes[i].tolist() == [0, 0, 1, 1]
            continue
        expect = [xs.min() / 12, ys.min() / 10, (xs.max() + 1) / 12, (ys.max() + 1) / 10]
        assert valid[i] and np.allclose(boxes[i].numpy(), expect)


def test_box_averaging_is_mean_of_learned_and_mask_box():
    probs = torch.zeros(1, 3, 8, 8)
    probs[0, 0, 2:4, 4:8] = 0.9  # box (4/8, 2/8, 8/8, 4/8)
    probs[0, 1, 5, 1] = 0.4  # below 0.5: empty -> learned box kept
    learned = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.6, 0.6]]])
    avg = combine_boxes(learned, probs, "mask_avg_box")
    assert torch.allclose(avg[0, 0], (learned[0, 0] + torch.tensor([0.5, 0.25, 1.0, 0.5])) / 2)
    assert torch.allclose(avg[0, 1], learned[0, 1]) and torch.allclose(avg[0, 2], learned[0, 2])
    assert torch.allclose(combine_boxes(None, probs, "mask")[0, 0], torch.tensor([0.5, 0.25, 1.0, 0.5]))
    assert combine_boxes(learned, probs, "mask_box") is learned


# ----------------------------------------------------------------------------------- depth mixing
@pytest.mark.parametrize("kind", ["dconv", "dmlp"])
def test_adapter_mixes_depth_only_with_depth_layer(kind):
    torch.manual_seed(0)
    x = torch.randn(2 * T, 3, 3, 16)
    x2 = x.clone()
    x2[1] += 1.0  # slice 1 of the first patch
    for k, mixes in ((kind, True), ("vanilla", False)):
        a = Adapter(16, T, k, zero_init=False)
        d = (a(x2) - a(x)).abs().flatten(1).amax(1)
        assert d[1] > 0
        assert (d[0] > 1e-6) == mixes and (d[2] > 1e-6) == mixes
        assert d[T:].max() == 0  # the other patch never changes


def _slice_change(module_fn, x: torch.Tensor, slice_idx: int = 2) -> torch.Tensor:
    x2 = x.clone()
    x2[slice_idx] = torch.randn_like(x2[slice_idx])
    with torch.no_grad():
        a, b = module_fn(x), module_fn(x2)
    return (a - b).abs().flatten(1).amax(1)


@pytest.mark.parametrize("kw,mixes", [({}, True), ({"adapter": "vanilla", "dconv": False}, False)])
def test_encoder_depth_adapters_change_neighbour_slices(kw, mixes):
    net = tiny_net(**kw)
    x = torch.randn(T, 3, S, S)  # one patch of T slices, after the stem
    d = _slice_change(lambda v: net.encoder.runner(v, use_depth_pe=True)[-1], x)
    assert d[2] > 0
    for neighbour in (1, 3):
        assert (d[neighbour] > 1e-5) == mixes, (neighbour, d)


@pytest.mark.parametrize("kw,mixes", [({}, True), ({"adapter": "vanilla", "dconv": False}, False)])
def test_decoder_depth_adapters_change_neighbour_slices(kw, mixes):
    net = tiny_net(**kw)
    torch.manual_seed(1)
    x = torch.randn(T, 3, S, S)
    with torch.no_grad():
        feats = net.encoder.runner(x, use_depth_pe=True)
        prompts = net.prompt_generator(feats)
    emb = feats[-1]

    def decode(e):
        return net.decoder(e, prompts, (S, S), 1)["masks"][0]  # T, N, h, w

    d = _slice_change(decode, emb)
    assert d[2] > 0
    for neighbour in (1, 3):
        assert (d[neighbour] > 1e-5) == mixes, (neighbour, d)


# ----------------------------------------------------------------------------------- model, loss, inference
def test_forward_shapes_loss_and_frozen_sam():
    net = tiny_net().train()
    x = torch.randn(2, 1, T, 32, 32)  # resized to S inside
    seg = torch.zeros(2, 1, T, 32, 32, dtype=torch.long)
    seg[:, :, :, 4:12, 4:12] = 1
    seg[1, :, 1:3, 20:30, 10:28] = 2
    out = net(x)
    assert out["class_logits"].shape == (2, T, 4, 3)
    assert out["aux_masks"].shape == (2, T, 4, S, S) and out["boxes"].shape == (2, T, 4, 4)
    loss, logs = MaskSAMLoss(2)(out, seg)
    assert torch.isfinite(loss) and logs["matched"] == 2 * T + 2
    loss.backward()
    sam = [net.encoder.runner.encoder, net.decoder.mask_decoder, net.decoder.prompt_encoder]
    assert all(p.grad is None for m in sam for p in m.parameters())
    assert net.encoder.runner.attn_adapters[0].down.weight.grad.abs().sum() > 0
    assert net.decoder.class_tokens.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["mask", "box", "mask_box"])
def test_prompt_generator_variants_run(mode):
    net = tiny_net(prompt_mode=mode)
    out = net(torch.randn(1, 1, T, S, S))
    assert (out["aux_masks"] is None) == (mode == "box")
    assert (out["boxes"] is None) == (mode == "mask")
    loss, _ = MaskSAMLoss(2)(out, torch.ones(1, 1, T, S, S, dtype=torch.long))
    assert torch.isfinite(loss)


def test_semantic_inference_and_probabilities():
    # query 0: class 1 on the left half; query 1: class 2 on the right half; query 2: no object.
    cls = torch.tensor([[10.0, -10, -10], [-10, 10, -10], [-10, -10, 10]])
    masks = torch.full((3, 4, 4), -20.0)
    masks[0, :, :2] = 20
    masks[1, :, 2:] = 20
    masks[2] = 20  # confident "no object" query covering everything must not vote
    masks[:, 0, :] = -20  # top row: nothing -> background
    out = {"class_logits": cls[None, None], "masks": masks[None, None]}
    scores = semantic_scores(out, (4, 4))
    assert scores.shape == (1, 2, 1, 4, 4)
    logp = scores_to_log_probs(scores)
    assert torch.allclose(logp.exp().sum(1), torch.ones(1, 1, 4, 4))
    label = logp.argmax(1)[0, 0]
    expect = torch.tensor([[0, 0, 0, 0], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2]])
    assert torch.equal(label, expect)


def test_loss_prefers_correct_prediction():
    seg = torch.zeros(1, 1, 1, 8, 8, dtype=torch.long)
    seg[..., 2:6, 2:6] = 1
    good_masks = torch.full((1, 1, 2, 8, 8), -8.0)
    good_masks[0, 0, 0, 2:6, 2:6] = 8.0
    cls = torch.tensor([[[[8.0, -8.0, 0], [-8.0, -8.0, 8.0]]]])
    good = {"class_logits": cls, "masks": good_masks}
    bad = {"class_logits": cls[..., [1, 0, 2]], "masks": -good_masks}
    loss = MaskSAMLoss(2)
    assert loss(good, seg)[0] < 0.1 < loss(bad, seg)[0]


def test_tinyvit_encoder_litemedsam_architecture():
    """LiteMedSAM (TinyViT): adapters in the attention stages, levels at strides 2, 4, 4, depth mixing."""
    from autosam.sam.backbones import build_backbone

    torch.manual_seed(0)
    bb = build_backbone("litemedsam", input_size=32, allow_random_init=True, pretrained=False)
    net = MaskSAMNet(bb, in_channels=2, num_classes=2, depth=T, num_queries=3, input_size=32, pg_width=8,
                     zero_init=False).eval()
    assert [lv.stride for lv in net.encoder.levels] == [2, 4, 4]
    assert len(net.encoder.runner.attn_adapters) == 2 + 6 + 2  # every TinyViT attention block
    x = torch.randn(T, 3, 32, 32)
    d = _slice_change(lambda v: net.encoder.runner(v, use_depth_pe=True)[-1], x)
    assert d[1] > 1e-5 and d[3] > 1e-5
    out = net(torch.randn(1, 2, T, 32, 32))
    assert out["masks"].shape == (1, T, 3, 32, 32) and out["aux_masks"].shape == (1, T, 3, 32, 32)


def test_plugin_registration_options_and_plans_section():
    from autosam.plugins import get_method, get_plugin_system
    from plugin_test_data import DATASET_JSON, synthetic_configuration, synthetic_fingerprint

    method = get_method("masksam")
    opts = method.make_options({"num_queries": 16, "patch_size": [4, 64, 64]}, {"dconv": "false", "adapter": "vanilla"})
    assert (opts.num_queries, opts.dconv, opts.adapter, opts.patch_size) == (16, False, "vanilla", [4, 64, 64])
    hook = get_plugin_system().hook
    sections = [s for s in hook.plan_method_section(method_name="masksam", configuration_name="3d",
                                                    configuration=synthetic_configuration((32, 64, 64)),
                                                    fingerprint=synthetic_fingerprint(), dataset_json=DATASET_JSON) if s]
    assert sections == [{"backbone": "litemedsam", "patch_size": [8, 64, 64], "input_size": 32, "num_queries": 8}]
    votes = [v for vs in hook.method_suitability(fingerprint=synthetic_fingerprint(), dataset_json=DATASET_JSON)
             for v in (vs or []) if v[0] == "masksam"]
    assert len(votes) == 1 and 0 <= votes[0][1] <= 1


def test_method_steps_and_prediction_contract():
    from autosam.plugins import get_method
    from autosam.training.method import MethodContext
    from plugin_test_data import DATASET_JSON, synthetic_plans

    method = get_method("masksam")
    plans = synthetic_plans((T, 32, 32))
    opts = method.make_options({}, {"backbone": "tiny", "allow_random_init": "true", "patch_size": f"{T} 32 32",
                                    "input_size": "64", "num_queries": "4", "generator_width": "8"})
    ctx = MethodContext(plans, plans.configurations["3d"], DATASET_JSON, opts, torch.device("cpu"), 1, 3, num_epochs=4)
    assert method.train_patch_size(ctx) == [T, 32, 32]
    net = method.build_network(ctx)
    loss_fn = method.build_loss(ctx)
    opt, sched = method.configure_optimizers(net, ctx)
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)  # poly decay
    seg = torch.zeros(2, 1, T, 32, 32, dtype=torch.long)
    seg[:, :, :, 8:20, 8:20] = 2
    batch = {"data": torch.randn(2, 1, T, 32, 32), "target": seg}
    step = method.train_step(net.train(), batch, loss_fn, ctx)
    assert step.loss.requires_grad and step.logs["matched"] == 2 * T
    with torch.no_grad():
        val = method.validation_step(net.eval(), batch, loss_fn, ctx)
        logits = method.predict_logits(net, batch["data"], ctx)
    assert val.output.shape == logits.shape == (2, 3, T, 32, 32)
    assert torch.allclose(logits.softmax(1), logits.exp(), atol=1e-5)  # log-probabilities


def test_residual_stem_starts_at_the_standard_sam_input():
    """With ``stem_residual`` (default) the untrained stem adds nothing: the frozen encoder sees the
    image exactly as the backbone's own input mapping gives it; training the stem changes that.
    Without it (official code) the encoder input is the stem's output alone."""
    from autosam_plugins.masksam.encoder import standard_input

    net = tiny_net()
    enc = net.encoder
    x = torch.randn(1, 1, T, S, S)
    seen = []
    hook = enc.runner.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        enc(x)
        expected = standard_input(x[0].transpose(0, 1), enc.stem_residual_of)  # (T, 3, S, S)
        assert torch.allclose(seen[-1], expected, atol=1e-5)
        enc.stem[-1].bias.fill_(0.3)
        enc(x)
        assert (seen[-1] - expected).abs().max() > 0.1
    hook.remove()
    plain = tiny_net(stem_residual=False).encoder
    assert plain.stem_residual_of is None and plain.stem[-1].weight.abs().sum() > 0
