"""Mechanism tests of the 3D-SAutoMed plugin (tiny random backbone, CPU, seconds)."""
from __future__ import annotations

import pytest
import torch

from autosam.sam.backbones import build_backbone
from autosam_plugins.sautomed.boxes import boxes_from_labels, cxcywh_to_xyxy, generalized_iou, xyxy_to_cxcywh
from autosam_plugins.sautomed.network import ArchitectureConfig, SAutoMedNet, SequenceState

NUM_CLASSES = 3


def make_net(seed: int = 0, **cfg) -> SAutoMedNet:
    torch.manual_seed(seed)
    backbone = build_backbone("tiny", input_size=64, allow_random_init=True)
    for p in backbone.parameters():
        p.requires_grad_(False)
    net = SAutoMedNet(backbone, ArchitectureConfig(num_classes=NUM_CLASSES, local_heads=2, history_tokens=4, **cfg))
    return net.eval()


def volume(seed: int = 1, z: int = 5, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, 1, z, size, size), generator=g)


def output_of_last_slice(net, vol, first=1, stop=None) -> torch.Tensor:
    with torch.no_grad():
        return net.run_sequence(vol, first=first, stop=stop)[-1].logits


def changed_previous(vol: torch.Tensor, index: int) -> torch.Tensor:
    other = vol.clone()
    other[:, :, index] = torch.randn_like(other[:, :, index]) * 2 + 1
    return other


# ----------------------------------------------------------------------------------- 3D awareness
@pytest.mark.parametrize("use_history", [True, False])
def test_history_tokens_carry_the_previous_slice(use_history):
    """Inter-slice attention and box generator ablated: slice t sees slice t-1 only through HIS."""
    net = make_net(use_history=use_history, use_inter_slice=False, use_box_generator=False)
    vol = volume()
    # visit slices 1 and 2; slice 2 is t, slice 1 is t-1
    ref = output_of_last_slice(net, vol, first=1, stop=3)
    alt = output_of_last_slice(net, changed_previous(vol, 1), first=1, stop=3)
    diff = (ref - alt).abs().max().item()
    if use_history:
        assert diff > 1e-4, "history tokens do not carry information from slice t-1 to slice t"
    else:
        assert diff < 1e-6, "without HIS (and inter-slice attention) slice t must not depend on slice t-1"


@pytest.mark.parametrize("use_inter_slice", [True, False])
def test_inter_slice_attention_sees_the_neighbour(use_inter_slice):
    """HIS and box generator ablated, one step only: slice t sees t-1 only through inter-slice attention."""
    net = make_net(use_history=False, use_inter_slice=use_inter_slice, use_box_generator=False)
    vol = volume(z=3)
    ref = output_of_last_slice(net, vol, first=1, stop=2)
    alt = output_of_last_slice(net, changed_previous(vol, 0), first=1, stop=2)
    diff = (ref - alt).abs().max().item()
    if use_inter_slice:
        assert diff > 1e-4, "inter-slice attention ignores slice t-1"
    else:
        assert diff < 1e-6


def test_local_block_attends_only_to_the_same_location_across_slices():
    """Inter-slice attention is per location: with intra-slice attention ablated, changing one
    location of slice t-1 changes only that location of the 3D-aware features of slice t."""
    net = make_net(use_history=False, use_intra_slice=False)
    f = torch.randn(3, 1, net.backbone.embed_dim, 4, 4)
    with torch.no_grad():
        ref = net.local3d(f[0], f[1], f[2])
        f2 = f.clone()
        f2[0, :, :, 1, 2] += 3 * torch.randn(net.backbone.embed_dim)
        alt = net.local3d(f2[0], f2[1], f2[2])
    changed = ((ref - alt).abs().amax(dim=1) > 1e-5)[0]
    assert changed[1, 2] and changed.sum() == 1


# ----------------------------------------------------------------------------------- box prompts
def test_boxes_from_labels():
    labels = torch.zeros((1, 8, 10), dtype=torch.long)
    labels[0, 2:5, 3:7] = 1  # rows 2..4, cols 3..6
    boxes, present = boxes_from_labels(labels, 3)
    assert present.tolist() == [[True, False]]
    assert torch.allclose(boxes[0, 0], torch.tensor([3 / 10, 2 / 8, 7 / 10, 5 / 8]))
    assert torch.equal(boxes[0, 1], torch.zeros(4))
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes)


def test_generalized_iou():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    assert torch.allclose(generalized_iou(a, a), torch.ones(1))
    far = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    assert generalized_iou(a, far).item() == pytest.approx(0.0 - (1.0 - 0.5) / 1.0)


def test_anchor_of_slice_t_is_the_box_of_slice_t_minus_1_prediction():
    net = make_net(seed=3)
    vol = volume(z=5)
    with torch.no_grad():
        outs = net.run_sequence(vol, first=1)
    default = net.box_generator.default_anchor_logits.sigmoid()
    # the first visited slice has no previous prediction: default anchors
    assert torch.allclose(outs[0].anchors[0], default)
    checked_present = 0
    for prev, cur in zip(outs[:-1], outs[1:]):
        boxes, present = boxes_from_labels(prev.logits.argmax(1), NUM_CLASSES)
        expected = torch.where(present.unsqueeze(-1), xyxy_to_cxcywh(boxes), default)
        assert torch.allclose(cur.anchors, expected, atol=1e-6)
        checked_present += int(present.sum())
    assert checked_present > 0, "no class predicted on any slice: the anchor check was vacuous"


def test_absent_class_uses_the_default_anchor_and_present_class_its_box():
    net = make_net()
    prev = torch.tensor([[[0.3, 0.4, 0.2, 0.1], [0.9, 0.9, 0.1, 0.1]]])
    state = SequenceState(history=net.decoder.initial_history(1), boxes=prev, present=torch.tensor([[True, False]]))
    f = torch.randn(1, net.backbone.embed_dim, 4, 4)
    with torch.no_grad():
        out, new_state = net.step(f, f, f, state)
    assert torch.allclose(out.anchors[0, 0], prev[0, 0])
    assert torch.allclose(out.anchors[0, 1], net.box_generator.default_anchor_logits.sigmoid()[1])
    # the generator refines the anchor (one box per layer) and the next state holds the new prediction's boxes
    assert len(out.boxes) == net.cfg.generator_layers and out.boxes[-1].shape == (1, NUM_CLASSES - 1, 4)
    boxes, present = boxes_from_labels(out.logits.argmax(1), NUM_CLASSES)
    assert torch.equal(new_state.present, present)


# ----------------------------------------------------------------------------------- slice order
def test_visiting_order_is_middle_out_with_both_directions_batched():
    net = make_net()
    assert net.visiting_plan(7) == [("down", [3, 4, 5, 6]), ("up", [3, 2, 1, 0])]
    vol = volume(z=7, size=16)
    seen = []
    calls = []
    original_step = net.step

    def counting_step(*args, **kwargs):
        calls.append(args[1].shape[0])  # batch size of slice t's features
        return original_step(*args, **kwargs)

    net.step = counting_step
    with torch.no_grad():
        net.segment(vol, lambda z, logits, w: seen.append((z, w)))
    assert [z for z, _ in seen] == [3, 3, 4, 2, 5, 1, 6, 0]
    assert dict((z, w) for z, w in seen)[3] == 0.5 and sum(w for _, w in seen) == pytest.approx(7)
    assert calls == [2, 2, 2, 2], "the two directions must run as one batch, one step per distance from the middle"


def test_top_to_bottom_order_ablation():
    net = make_net(order="top_to_bottom")
    vol = volume(z=4, size=16)
    seen = []
    with torch.no_grad():
        net.segment(vol, lambda z, logits, w: seen.append(z))
    assert seen == [0, 1, 2, 3]


def test_forward_gives_logits_for_every_slice():
    net = make_net()
    vol = volume(z=4, size=24)
    with torch.no_grad():
        out = net(vol)
    assert out.shape == (1, NUM_CLASSES, 4, 24, 24) and torch.isfinite(out).all()
    assert (out.abs().sum(dim=(0, 1, 3, 4)) > 0).all()


# ----------------------------------------------------------------------------------- method contract
def make_ctx(num_classes: int = NUM_CLASSES, **overrides):
    from autosam.experiment_planning.plans import ConfigurationPlan
    from autosam.training.method import MethodContext
    from autosam_plugins.sautomed.method import SAutoMedMethod

    method = SAutoMedMethod()
    cfg = ConfigurationPlan(name="3d", data_identifier="x", spacing=[3.0, 1.5, 1.5], patch_size=[16, 32, 32],
                            batch_size=2, median_image_size_in_voxels=[20, 32, 32],
                            normalization_schemes=["CTNormalization"], use_mask_for_norm=[False])
    opts = method.make_options({"backbone": "tiny", "input_size": 64, "slice_size": [32, 32]},
                               {"allow_random_init": "true", "attention_heads": "2", "history_tokens": "4", **overrides})
    ctx = MethodContext(plans=None, configuration=cfg, dataset_json={}, options=opts, device=torch.device("cpu"),
                        num_input_channels=1, num_classes=num_classes)
    return method, ctx


def synthetic_batch(b: int = 2, z: int = 9, size: int = 32, seed: int = 0):
    """A bright square (class 1) and a dark disc (class 2) drifting across slices."""
    g = torch.Generator().manual_seed(seed)
    data = 0.1 * torch.randn((b, 1, z, size, size), generator=g)
    target = torch.zeros((b, 1, z, size, size), dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(b):
        for k in range(z):
            o = (k + 3 * i) % 6
            sq = (yy >= 4 + o) & (yy < 14 + o) & (xx >= 5) & (xx < 15)
            disc = ((yy - 22) ** 2 + (xx - 20 - o // 2) ** 2) < 25
            target[i, 0, k][sq] = 1
            target[i, 0, k][disc] = 2
            data[i, 0, k][sq] += 2.0
            data[i, 0, k][disc] -= 2.0
    return {"data": data, "target": target}


def test_only_lora_and_new_modules_require_gradients():
    method, ctx = make_ctx()
    net = method.build_network(ctx)
    lora = [n for n, _ in net.backbone.image_encoder.named_parameters() if "lora" in n.lower()]
    assert lora, "no LoRA parameters in the encoder"
    for name, p in net.named_parameters():
        if name.startswith("backbone."):
            assert p.requires_grad == ("lora" in name.lower()), name
        else:  # local 3D block, box generator, decoder with class/history tokens and the HIS filter
            assert p.requires_grad, name
    trainable, total = ctx.extra["parameters"]["trainable"], ctx.extra["parameters"]["total"]
    assert 0 < trainable < total
    net.train()
    assert not net.backbone.image_encoder.training, "the frozen encoder must keep its inference-mode statistics"


def test_train_step_reaches_lora_history_filter_and_generator():
    method, ctx = make_ctx()
    net = method.build_network(ctx).train()
    loss_fn = method.build_loss(ctx)
    optimizer, _ = method.configure_optimizers(net, ctx)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-4
    assert optimizer.defaults["weight_decay"] == 1e-4
    assert method.train_patch_size(ctx) == [9, 32, 32]
    torch.manual_seed(0)
    # take two steps: LoRA's B starts at zero, so its A gets gradients from the second step on
    for _ in range(2):
        optimizer.zero_grad()
        result = method.train_step(net, synthetic_batch(), loss_fn, ctx)
        assert torch.isfinite(result.loss) and {"ce", "dice_loss", "box_l1", "box_giou"} <= set(result.logs)
        result.loss.backward()
        optimizer.step()

    def grad_norm(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    assert grad_norm(net.decoder.history_filter) > 0, "HIS filter gets no gradient: history is not learned"
    assert grad_norm(net.box_generator) > 0 and grad_norm(net.local3d) > 0
    lora_grads = [float(p.grad.abs().sum()) for n, p in net.backbone.image_encoder.named_parameters()
                  if "lora" in n.lower() and p.grad is not None]
    assert lora_grads and max(lora_grads) > 0


def test_predict_volume_tiles_and_never_needs_a_label():
    method, ctx = make_ctx()
    net = method.build_network(ctx)
    data = torch.randn(1, 5, 40, 36)  # larger than the 32 x 32 slices: 2 x 2 tiles
    probs = method.predict_volume(net, data, ctx, use_mirroring=True)
    assert probs.shape == (NUM_CLASSES, 5, 40, 36) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(5, 40, 36), atol=1e-4)


def test_validation_step_returns_full_resolution_logits():
    method, ctx = make_ctx()
    net = method.build_network(ctx).eval()
    batch = synthetic_batch()
    with torch.no_grad():
        res = method.validation_step(net, batch, method.build_loss(ctx), ctx)
    assert res.output.shape == (2, NUM_CLASSES, 9, 32, 32) and torch.isfinite(res.loss)


def test_ablation_options_reach_the_network():
    method, ctx = make_ctx(use_history="false", use_inter_slice="0", use_box_generator="no", order="top_to_bottom")
    net = method.build_network(ctx)
    assert net.decoder.num_history == 0 and net.box_generator is None and not net.uses_neighbours
    assert net.visiting_plan(3) == [("down", [0, 1, 2])]
    with pytest.raises(ValueError, match="order"):
        method.build_network(make_ctx(order="sideways")[1])


def test_plans_section_and_suitability():
    from types import SimpleNamespace

    from autosam.experiment_planning.plans import ConfigurationPlan
    from autosam.plugins import get_backbone
    from autosam_plugins.sautomed import plugin

    cfg = ConfigurationPlan(name="3d", data_identifier="x", spacing=[3.0, 1.5, 1.5], patch_size=[40, 96, 96],
                            batch_size=2, median_image_size_in_voxels=[50, 110, 106],
                            normalization_schemes=["CTNormalization"], use_mask_for_norm=[False])
    section = plugin.plan_method_section(method_name="sautomed", configuration_name="3d", configuration=cfg,
                                         fingerprint=None, dataset_json={})
    assert section["slice_size"] == [112, 112] and section["backbone"] == "litemedsam"
    assert section["input_size"] == 56 and section["input_size"] % get_backbone("litemedsam").vit_patch_size == 0
    assert plugin.plan_method_section(method_name="unet", configuration_name="3d", configuration=cfg,
                                      fingerprint=None, dataset_json={}) is None

    def stats(fraction, slices, comps=1):
        return SimpleNamespace(volume_fraction=fraction, slices_spanned=slices, components_per_case=comps)

    organs = SimpleNamespace(class_statistics={str(i): stats(0.02, 40) for i in range(1, 6)})
    lesions = SimpleNamespace(class_statistics={"1": stats(0.0005, 4, comps=6)})
    (name, s_org, _), = plugin.method_suitability(fingerprint=organs, dataset_json={})
    (_, s_les, _), = plugin.method_suitability(fingerprint=lesions, dataset_json={})
    assert name == "sautomed" and s_org > 0.5 > s_les


# ----------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_sautomed_learns_drifting_structures():
    """120 steps on synthetic volumes (a bright square and a dark disc drifting across
    slices, noisy background) must segment an unseen volume: foreground Dice >= 0.7 for both
    classes, which a method whose gradients, targets or slice bookkeeping are broken fails."""
    import random

    method, ctx = make_ctx(lr="1e-3")
    net = method.build_network(ctx).train()
    loss_fn = method.build_loss(ctx)
    optimizer, _ = method.configure_optimizers(net, ctx)
    random.seed(0)
    torch.manual_seed(0)
    for step in range(120):
        batch = synthetic_batch(b=4, seed=step + 1)
        optimizer.zero_grad()
        result = method.train_step(net, batch, loss_fn, ctx)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
    test = synthetic_batch(b=1, z=14, seed=10_000)
    probs = method.predict_volume(net, test["data"][0], ctx, use_mirroring=False)
    pred, ref = probs.argmax(0), test["target"][0, 0]
    dice = [float(2 * ((pred == k) & (ref == k)).sum() / ((pred == k).sum() + (ref == k).sum())) for k in (1, 2)]
    assert min(dice) >= 0.7, f"Dice per class {dice}"
