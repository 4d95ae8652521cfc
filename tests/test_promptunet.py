"""promptunet: prompt channels, prompt simulation, prediction with and without prompts, training,
checkpoints, and (slow) that a trained model uses its prompts."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from autosam.method import MethodContext
from autosam.plugins import get_method
from autosam.prompts import PROMPT_KINDS, Box2D, LabelPrompts, Point, box2d_from_mask
from autosam_plugins.promptunet.encoding import BOX2D_RANGE_VALUE, CLICK_RADIUS, paint_ball, rasterise_prompts
from autosam_plugins.promptunet.simulation import (SimulationConfig, largest_error_click, simulate_label_prompts,
                                                   simulate_previous_mask, simulate_prompts)
from training_data import DATASET_JSON, NAME, make_case, make_tiny_preprocessed, tiny_plans

SHAPE = (12, 20, 24)
BALL_VOXELS = int(np.count_nonzero(np.add.outer(np.add.outer(*[np.arange(-CLICK_RADIUS, CLICK_RADIUS + 1) ** 2] * 2),
                                                np.arange(-CLICK_RADIUS, CLICK_RADIUS + 1) ** 2) <= CLICK_RADIUS ** 2))


# ----------------------------------------------------------------------------------- channels
def test_each_prompt_lands_in_its_class_channel_and_voxels():
    mask = np.zeros(SHAPE, bool)
    mask[3:6, 4:9, 5:11] = True
    prompts = {1: LabelPrompts(box2d=Box2D(z=4, y0=2, x0=3, y1=6, x1=8, z_lo=2, z_hi=7),
                               points=[Point(5, 10, 12, True), Point(0, 0, 0, False)]),
               2: LabelPrompts(boxes3d=[(1, 2, 3, 4, 5, 6)], previous_mask=mask)}
    ch = rasterise_prompts(prompts, SHAPE, num_foreground=2)
    assert ch.shape == (8, *SHAPE) and ch.dtype == np.float32
    box1 = ch[0]
    assert (box1[4, 2:7, 3:9] == 1).all()  # the 2D box's own slice
    assert (box1[[2, 3, 5, 6, 7], 2:7, 3:9] == BOX2D_RANGE_VALUE).all()  # the rest of its z range, faintly
    assert np.count_nonzero(box1) == 6 * 5 * 6
    assert ch[1][5, 10, 12] == 1 and np.count_nonzero(ch[1]) == BALL_VOXELS  # a whole ball inside the image
    assert ch[2][0, 0, 0] == 1 and 0 < np.count_nonzero(ch[2]) < BALL_VOXELS  # clipped at the corner
    assert not ch[3].any()
    expected = np.zeros(SHAPE, np.float32)
    expected[1:5, 2:6, 3:7] = 1
    assert np.array_equal(ch[4], expected)
    assert not ch[5].any() and not ch[6].any()
    assert np.array_equal(ch[7], mask)
    assert not rasterise_prompts({}, SHAPE, 2).any()


def test_bad_prompts_are_refused():
    with pytest.raises(ValueError, match="label 3: this model segments the labels 1..2"):
        rasterise_prompts({3: LabelPrompts(points=[Point(1, 1, 1)])}, SHAPE, 2)
    with pytest.raises(ValueError, match="outside the image"):
        rasterise_prompts({1: LabelPrompts(points=[Point(12, 1, 1)])}, SHAPE, 2)


def test_paint_ball_clips_each_border():
    ch = np.zeros(SHAPE, np.float32)
    paint_ball(ch, (SHAPE[0] - 1, 0, SHAPE[2] - 1), 2)
    idx = np.argwhere(ch)
    assert idx[:, 0].min() == SHAPE[0] - 3 and idx[:, 1].max() == 2 and idx[:, 2].min() == SHAPE[2] - 3
    assert np.linalg.norm(idx - [SHAPE[0] - 1, 0, SHAPE[2] - 1], axis=1).max() <= 2


# ----------------------------------------------------------------------------------- simulation
def test_error_click_is_at_the_centre_of_the_largest_error_with_the_right_sign():
    ref = np.zeros(SHAPE, bool)
    ref[2:11, 2:17, 2:21] = True
    pred = ref.copy()
    pred[4:9, 5:10, 6:11] = False  # missed: 5x5x5 cube centred at (6, 7, 8)
    pred[0, 0, 0] = True  # a one-voxel false positive, smaller
    point, region = largest_error_click(pred, ref)
    assert point == Point(6, 7, 8, positive=True) and region.sum() == 125
    fp = ref.copy()
    fp[0:1, 18:20, 0:24] = True  # a false-positive slab at the border (the border counts as outside)
    point, _ = largest_error_click(fp, ref)
    assert not point.positive and point.z == 0 and point.y in (18, 19)
    assert largest_error_click(ref, ref) is None


def _structure(seed=0):
    rng = np.random.default_rng(seed)
    _, seg = make_case(rng, (16, 24, 28))
    return seg[0]


@pytest.mark.parametrize("seed", range(6))
def test_simulated_prompts_are_on_the_right_side_of_the_structure(seed):
    rng = np.random.default_rng(seed)
    cfg = SimulationConfig()
    seg = _structure(seed)
    for label in (1, 2):
        mask = seg == label
        box = simulate_label_prompts(mask, "box3d", rng, cfg).boxes3d[0]
        idx = np.argwhere(mask)
        assert (np.array(box[:3]) <= idx.min(0)).all() and (np.array(box[3:]) >= idx.max(0)).all()  # encloses it
        assert (np.array(box[3:]) - np.array(box[:3]) <= idx.max(0) - idx.min(0) + 2 * np.maximum(
            1, np.round(0.1 * (idx.max(0) - idx.min(0) + 1)))).all()  # and only just
        assert simulate_label_prompts(mask, "box2d", rng, cfg).box2d == box2d_from_mask(mask)
        for mode in ("clicks", "refine"):
            p = simulate_label_prompts(mask, mode, rng, cfg)
            assert p.points, mode
            ring = ndimage.binary_dilation(mask, iterations=cfg.negative_ring) & ~mask
            for q in p.points:
                assert mask[q.z, q.y, q.x] == q.positive, (mode, q)
                if mode == "clicks" and not q.positive:
                    assert ring[q.z, q.y, q.x]
        p = simulate_label_prompts(mask, "refine", rng, cfg)
        prev = p.previous_mask
        assert prev.shape == mask.shape and prev.dtype == bool
        # its new clicks sit where the previous mask is wrong
        assert any(prev[q.z, q.y, q.x] != mask[q.z, q.y, q.x] for q in p.points)


def test_previous_masks_are_wrong_but_related():
    rng = np.random.default_rng(3)
    mask = _structure(1) == 1
    dices = []
    for _ in range(40):
        prev = simulate_previous_mask(mask, rng)
        dices.append(2 * (prev & mask).sum() / max(1, prev.sum() + mask.sum()))
    dices = np.array(dices)
    assert (dices < 1).all()  # always something to correct
    assert (dices == 0).any() and np.median(dices) > 0.4  # sometimes empty, usually close


def test_sample_level_no_prompt_and_absent_classes():
    seg = _structure(2)
    rng = np.random.default_rng(0)
    assert simulate_prompts(seg, 2, rng, SimulationConfig(p_no_prompts=1.0)) == {}
    only_box = SimulationConfig(p_no_prompts=0, w_none=0, w_box3d=1, w_box2d=0, w_clicks=0, w_refine=0)
    seg_one = np.where(seg == 2, 0, seg)
    assert set(simulate_prompts(seg_one, 2, rng, only_box)) == {1}  # no prompt for a class not in the patch
    draws = [simulate_prompts(seg, 2, rng, SimulationConfig()) for _ in range(300)]
    assert 0.1 < np.mean([d == {} for d in draws]) < 0.35  # ~p_no_prompts (+ both classes drawing "none")
    kinds = {frozenset(p.kinds()) for d in draws for p in d.values()}
    assert {frozenset({"box3d"}), frozenset({"box2d"}), frozenset({"points"})} <= kinds
    assert any("mask" in k for k in kinds)
    with pytest.raises(ValueError, match="mode weights"):
        simulate_prompts(seg, 2, rng, SimulationConfig(p_no_prompts=0, w_none=-1))


# ----------------------------------------------------------------------------------- the method
def _ctx(method, **options):
    plans = tiny_plans()
    opts = method.make_options({}, {"deep_supervision": "false", **options})
    return MethodContext(plans=plans, configuration=plans.configurations["3d"], dataset_json=DATASET_JSON, options=opts,
                         device=torch.device("cpu"), num_input_channels=1, num_classes=3)


def test_declares_every_prompt_kind_and_its_network_takes_the_prompt_channels():
    method = get_method("promptunet")
    assert method.prompt_kinds == frozenset(PROMPT_KINDS)
    ctx = _ctx(method)
    torch.manual_seed(0)
    net = method.build_network(ctx)
    assert next(net.parameters()).shape[1] == 1 + 4 * 2
    with pytest.raises(ValueError, match="2 foreground classes, more than max_prompt_classes=1"):
        method.build_network(_ctx(method, max_prompt_classes="1"))


def test_prediction_without_and_with_each_prompt_kind():
    method = get_method("promptunet")
    ctx = _ctx(method)
    torch.manual_seed(0)
    net = method.build_network(ctx).eval()
    img, seg = make_case(np.random.default_rng(0), (20, 36, 36))
    data = torch.from_numpy(img)
    auto = method.predict_volume(net, data, ctx, use_mirroring=False)
    assert auto.shape == (3, 20, 36, 36) and torch.allclose(auto.sum(0), torch.ones(1), atol=1e-4)
    assert torch.equal(auto, method.predict_with_prompts(net, data, {}, ctx))  # no prompt = automatic
    ball = seg[0] == 1
    per_kind = {"box3d": LabelPrompts(boxes3d=[(2, 3, 4, 10, 20, 30)]), "box2d": LabelPrompts(box2d=box2d_from_mask(ball)),
                "points": LabelPrompts(points=[Point(*np.argwhere(ball)[0])]), "mask": LabelPrompts(previous_mask=ball)}
    for kind, p in per_kind.items():
        out = method.predict_with_prompts(net, data, {1: p}, ctx)
        assert out.shape == auto.shape
        assert (out - auto).abs().max() > 1e-4, f"a {kind} prompt does not change the output"
        again = method.predict_with_prompts(net, data, {1: p}, ctx)
        assert torch.allclose(out, again, atol=1e-6)
    with pytest.raises(ValueError, match="previous mask has shape"):
        method.predict_with_prompts(net, data, {1: LabelPrompts(previous_mask=ball[:-1])}, ctx)


class _BoxReader(nn.Module):
    """A hand-set network: class c's logit is 10 x its box channel minus 2.5, background 0."""

    def __init__(self, image_channels=1, num_foreground=2):  # noqa: D107
        super().__init__()
        self.conv = nn.Conv3d(image_channels + 4 * num_foreground, num_foreground + 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for c in range(1, num_foreground + 1):
                self.conv.weight[c, image_channels + 4 * (c - 1)] = 10.0
                self.conv.bias[c] = -2.5

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("mirroring", [False, True])
def test_prompt_channels_follow_the_image_through_the_sliding_window(mirroring):
    """Boxes read back at their voxels after tiling, padding and mirroring: the prompt channels are
    flipped with the image."""
    method = get_method("promptunet")
    ctx = _ctx(method, cpu_inference="eager")
    net = _BoxReader()
    data = torch.randn(1, 20, 36, 40)  # larger than the 16 x 32 x 32 patch: several tiles
    prompts = {2: LabelPrompts(boxes3d=[(1, 2, 30, 6, 9, 38)]),
               1: LabelPrompts(box2d=Box2D(z=15, y0=20, x0=3, y1=30, x1=8, z_lo=12, z_hi=18))}
    labels = method.predict_with_prompts(net, data, prompts, ctx, use_mirroring=mirroring).argmax(0).numpy()
    expected = np.zeros((20, 36, 40), np.int64)
    expected[12:19, 20:31, 3:9] = 1  # the 2D box's rectangle on every slice of its range (0.5 -> logit 2.5)
    expected[1:7, 2:10, 30:39] = 2
    assert np.array_equal(labels, expected)


def test_train_step_gives_the_network_prompts_from_the_batch_labels():
    method = get_method("promptunet")
    ctx = _ctx(method, p_no_prompts="0", w_none="0", w_box2d="0", w_clicks="0", w_refine="0")
    torch.manual_seed(0)
    net = method.build_network(ctx)
    rng = np.random.default_rng(1)
    cases = [make_case(rng, (16, 32, 32)) for _ in range(2)]
    batch = {"data": torch.from_numpy(np.stack([c[0] for c in cases]).astype(np.float32)),
             "target": torch.from_numpy(np.stack([c[1] for c in cases]).astype(np.int64)), "keys": ["a", "b"]}
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    result = method.train_step(net, batch, method.build_loss(ctx), ctx)
    assert torch.isfinite(result.loss) and result.loss.requires_grad
    x = seen[-1]
    assert x.shape == (2, 9, 16, 32, 32) and torch.equal(x[:, :1], batch["data"])
    for b in range(2):
        for c in (1, 2):
            inside = batch["target"][b, 0] == c
            box = x[b, 1 + 4 * (c - 1)].numpy()
            assert (box[inside.numpy()] == 1).all()  # the 3D box covers the structure
            idx = np.argwhere(inside.numpy())
            grow = np.maximum(1, np.round(0.1 * (idx.max(0) - idx.min(0) + 1))).astype(int)
            near = np.zeros(box.shape, bool)
            near[tuple(slice(max(0, lo - g), hi + g + 1) for lo, hi, g in zip(idx.min(0), idx.max(0), grow))] = True
            assert not box[~near].any()  # and stays within the jitter of its bounding box
    out = method.validation_step(net, batch, method.build_loss(ctx), ctx)
    assert out.output.shape == (2, 3, 16, 32, 32)
    for b in range(2):  # validation: the challenge's 2D box of each class, always the same
        t = batch["target"][b, 0].numpy()
        expected = rasterise_prompts({c: LabelPrompts(box2d=box2d_from_mask(t == c)) for c in (1, 2)}, t.shape, 2)
        assert np.array_equal(seen[-1][b, 1:].numpy(), expected)


# ----------------------------------------------------------------------------------- training runs
def _trained(dirs, **kwargs):
    from autosam.training.trainer import run_training

    return run_training(NAME, "3d", "promptunet", 0, device="cpu", num_workers=0, **kwargs)


def test_trains_resumes_and_predicts_from_its_checkpoint(autosam_dirs):
    from autosam.inference.predictor import load_trained_model
    from autosam.preprocessing.storage import load_case
    from autosam.training.checkpoint import load_checkpoint

    folder = make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    fold_dir = _trained(autosam_dirs, epochs=1, iters_per_epoch=2, validate=False)
    fold_dir = _trained(autosam_dirs, epochs=2, iters_per_epoch=2, validate=True, resume=True)
    assert load_checkpoint(fold_dir / "checkpoint_final.pth")["epoch"] == 2
    assert (fold_dir / "validation" / "summary.json").is_file()  # automatic validation of the whole volumes
    model = load_trained_model(fold_dir.parent, folds=[0], device="cpu")
    assert model.method.name == "promptunet"
    net = model.folds[0].network
    state = load_checkpoint(fold_dir / "checkpoint_final.pth")["network"]
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    data, seg, _ = load_case(folder / "autosamPlans_3d", "case_000")
    prompts = {2: LabelPrompts(box2d=box2d_from_mask(seg[0] == 2), points=[Point(*np.argwhere(seg[0] == 2)[0])])}
    a = model.method.predict_with_prompts(net, torch.from_numpy(np.array(data)), prompts, model.ctx)
    b = model.method.predict_with_prompts(net, torch.from_numpy(np.array(data)), prompts, model.ctx)
    assert a.shape == (3, *seg.shape[1:]) and torch.equal(a, b)


def _two_balls(pre_root, num_cases=10, shape=(20, 32, 32), seed=0):
    """Two identical bright balls per case, only one of them (drawn at random) labelled: the image
    alone cannot tell which, a prompt can."""
    from autosam.preprocessing.storage import load_case, save_case
    from autosam.utils.files import write_json

    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "ball": 1}, "numTraining": num_cases,
                    "file_ending": ".nii.gz"}
    folder = make_tiny_preprocessed(pre_root, num_cases=2, shape=shape, dataset_json=dataset_json)
    template = load_case(folder / "autosamPlans_3d", "case_000")[2]  # geometry and cropping of this shape
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    keys = [f"case_{i:03d}" for i in range(num_cases)]
    for key in keys:
        while True:
            centres = [[int(rng.integers(5, s - 5)) for s in shape] for _ in range(2)]
            if np.linalg.norm(np.subtract(*centres) * [2, 1, 1]) > 13:
                break
        balls = [((z - c[0]) * 2) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 30 for c in centres]
        seg = balls[int(rng.integers(2))].astype(np.int16)[None]
        img = (rng.normal(0, 0.3, shape) + 2.0 * (balls[0] | balls[1])).astype(np.float32)[None]
        props = {**template, "class_locations": {"1": np.argwhere(seg[0] == 1)[::5].tolist()}}
        save_case(folder / "autosamPlans_3d", key, img, seg, props)
    half = num_cases // 2
    write_json(folder / "splits_final.json", [{"train": keys[half:], "val": keys[:half]},
                                              {"train": keys[:half], "val": keys[half:]}])
    return folder, keys[:half]


@pytest.mark.slow
def test_a_trained_model_follows_its_prompts(autosam_dirs):
    """Two identical balls, one labelled: automatically the model can at best guess; with the
    challenge's box on the labelled ball it must find it, and with the box on the other ball lose it. A
    model that ignores its prompt channels, or reads them from the wrong place, scores the same with
    and without prompts. Measured (seed 1, 120 iterations, 2 shared cores): automatic 0.59, box 0.83;
    one positive click at the centre only 0.66 after so short a training, so clicks are not asserted
    here (the fast tests check that they reach the network)."""
    from autosam.inference.predictor import load_trained_model
    from autosam.preprocessing.storage import load_case

    folder, val_keys = _two_balls(autosam_dirs["preprocessed"])
    fold_dir = _trained(autosam_dirs, epochs=10, iters_per_epoch=12, validate=False, seed=1)
    model = load_trained_model(fold_dir.parent, folds=[0], device="cpu")
    net, method, ctx = model.folds[0].network, model.method, model.ctx

    def dice(probs, ref):
        pred = probs.argmax(0).numpy() == 1
        return 2 * (pred & ref).sum() / max(1, pred.sum() + ref.sum())

    scores = {"auto": [], "box2d": [], "box2d_other": []}
    for key in val_keys:
        data, seg, _ = load_case(folder / "autosamPlans_3d", key)
        data, ref = torch.from_numpy(np.array(data)), seg[0] == 1
        other = ndimage.binary_opening(data[0].numpy() > 1.0) & ~ref  # the unlabelled ball
        scores["auto"].append(dice(method.predict_volume(net, data, ctx, use_mirroring=False), ref))
        scores["box2d"].append(dice(method.predict_with_prompts(net, data, {1: LabelPrompts(box2d=box2d_from_mask(ref))},
                                                                ctx), ref))
        scores["box2d_other"].append(dice(method.predict_with_prompts(
            net, data, {1: LabelPrompts(box2d=box2d_from_mask(other))}, ctx), ref))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["box2d"] > 0.7 and mean["box2d"] > mean["auto"] + 0.15, mean
    # the box steers: on the other ball it makes the model segment that one instead
    assert mean["box2d_other"] < mean["auto"] - 0.2, mean
