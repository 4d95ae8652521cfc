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
