"""The interactive protocol's parts: the simulated click, Dice/NSD/AUC, and the steps of one case."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from autosam.evaluation.metrics import surface
from autosam.interactive.clicks import simulate_click
from autosam.interactive.metrics import auc, dice, nsd
from autosam.prompts import Point
from interactive_helpers import ball, oracle_method  # noqa: F401  (fixture)

SHAPE = (24, 30, 30)


# ------------------------------------------------------------------------------ clicks
def test_missed_structure_gives_a_positive_click_at_its_centre():
    ref = ball(SHAPE, (12, 14, 17), radius=5)
    assert simulate_click(ref, np.zeros(SHAPE, bool)) == Point(12, 14, 17, positive=True)
    # two lobes joined by a bridge: a ball of radius 4 voxels (5 mm from the outside in-plane with
    # 3 mm slices) and a flat ellipsoid (3 slices = 9 mm, 8 voxels in-plane): in voxels the ball's
    # centre is the deepest, in mm the ellipsoid's
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    ref = ball(SHAPE, (6, 8, 8), radius=4) | (((z - 6) / 2.0) ** 2 + ((y - 8) / 7.0) ** 2 + ((x - 21) / 7.0) ** 2 <= 1)
    ref[6, 8, 12:15] = True
    assert simulate_click(ref, np.zeros(SHAPE, bool)) == Point(6, 8, 8, positive=True)
    assert simulate_click(ref, np.zeros(SHAPE, bool), spacing=(3.0, 1.0, 1.0)) == Point(6, 8, 21, positive=True)


def test_false_positive_region_gives_a_negative_click_at_its_centre():
    ref = ball(SHAPE, (8, 8, 8), radius=3)
    pred = ref | ball(SHAPE, (15, 20, 20), radius=4)  # the structure right, plus a false-positive blob
    assert simulate_click(ref, pred) == Point(15, 20, 20, positive=False)


def test_the_largest_error_component_is_fixed_first():
    ref = ball(SHAPE, (8, 8, 8), radius=3) | ball(SHAPE, (16, 21, 21), radius=2)
    small_fp = ball(SHAPE, (8, 22, 6), radius=2)
    large_fp = ball(SHAPE, (16, 8, 22), radius=4)
    # missed ball of radius 2 (33 voxels) vs a false positive of radius 4 (257 voxels)
    pred = ball(SHAPE, (8, 8, 8), radius=3) | large_fp
    assert simulate_click(ref, pred) == Point(16, 8, 22, positive=False)
    # missed ball of radius 3 (123 voxels) vs a false positive of radius 2
    pred = ball(SHAPE, (16, 21, 21), radius=2) | small_fp
    assert simulate_click(ref, pred) == Point(8, 8, 8, positive=True)


def test_click_avoids_the_image_border_and_ignored_voxels():
    ref = np.zeros(SHAPE, bool)
    ref[5:15, 5:15, 0:9] = True  # touches the x = 0 border: the centre is half way, not on the border
    click = simulate_click(ref, np.zeros(SHAPE, bool))
    assert click.positive and click.x == 4 and (click.z, click.y) in {(9, 9), (9, 10), (10, 9), (10, 10)}
    assert simulate_click(ref, ref) is None  # no error, no click
    valid = np.ones(SHAPE, bool)
    valid[:, :, :12] = False  # the error lies in ignored voxels only
    assert simulate_click(ref, np.zeros(SHAPE, bool), valid=valid) is None


# ------------------------------------------------------------------------------ metrics
def _nsd_brute_force(ref, pred, spacing, tol):
    s_r = np.argwhere(surface(np.pad(ref, 1))) * spacing
    s_p = np.argwhere(surface(np.pad(pred, 1))) * spacing
    d_p = cKDTree(s_r).query(s_p)[0]
    d_r = cKDTree(s_p).query(s_r)[0]
    return (np.count_nonzero(d_p <= tol) + np.count_nonzero(d_r <= tol)) / (len(s_p) + len(s_r))


@pytest.mark.parametrize("shift, spacing", [((0, 0, 5), (1.0, 1.0, 1.0)), ((1, 0, 0), (3.0, 1.0, 1.0)),
                                            ((2, 3, 0), (1.5, 0.8, 0.8))])
def test_nsd_matches_a_brute_force_computation(shift, spacing):
    ref = np.zeros(SHAPE, bool)
    ref[6:16, 8:20, 6:18] = True
    pred = np.roll(ref, shift, axis=(0, 1, 2))
    expected = _nsd_brute_force(ref, pred, np.array(spacing), 2.0)
    assert 0 < expected < 1
    assert nsd(ref, pred, spacing, 2.0) == pytest.approx(expected)
    assert nsd(ref, ref, spacing) == 1.0


def test_nsd_honours_the_spacing_and_empty_masks():
    ref = np.zeros(SHAPE, bool)
    ref[6:16, 8:20, 6:18] = True
    pred = np.roll(ref, 1, axis=0)
    assert nsd(ref, pred, (1.0, 1.0, 1.0), 2.0) == 1.0  # 1 mm apart
    assert nsd(ref, pred, (3.0, 1.0, 1.0), 2.0) < 1.0  # 3 mm apart on the z faces
    assert nsd(ref, np.zeros(SHAPE, bool), (1, 1, 1)) == 0.0
    assert math.isnan(nsd(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), (1, 1, 1)))
    assert dice(ref, pred) == pytest.approx(2 * 9 / 20)


def test_auc_is_the_challenges_trapezoid_over_the_steps():
    values = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    # by hand: 0.5/2 + 0.6 + 0.7 + 0.8 + 0.9 + 1.0/2
    assert auc(values) == pytest.approx(0.25 + 0.6 + 0.7 + 0.8 + 0.9 + 0.5)
    assert auc([1.0] * 6) == pytest.approx(5.0)  # the maximum over box + 5 clicks
    assert auc([0.2, 0.4]) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        auc([0.3])


# ------------------------------------------------------------------------------ one case
def _model(tmp_path, method):
    from autosam.inference.predictor import load_trained_model
    from autosam.utils.files import write_json
    from training_data import DATASET_JSON, tiny_plans, untrained_model

    folder = tmp_path / "Dataset990_Tiny" / f"{method}__autosamPlans__3d"
    plans = tiny_plans(features=(2, 4, 8))
    folder.mkdir(parents=True)
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", DATASET_JSON)
    untrained_model(plans, folder, method=method)
    return load_trained_model(folder, ["all"], device="cpu")


def _case():
    """A preprocessed case on the input grid itself (no crop, same spacing): ball (1) and bar (2)."""
    ref = np.zeros((20, 32, 32), np.uint8)
    ref[ball(ref.shape, (10, 14, 15), radius=5)] = 1
    ref[4:16, 22:26, 4:9] = 2
    props = {"geometry": {"spacing": [2.0, 1.0, 1.0], "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                          "shape": list(ref.shape)},
             "shape_before_cropping": list(ref.shape), "bbox_used_for_cropping": [[0, s] for s in ref.shape],
             "shape_after_cropping_and_before_resampling": list(ref.shape), "spacing": [2.0, 1.0, 1.0]}
    data = np.random.default_rng(0).normal(size=(1, *ref.shape)).astype(np.float32)
    return data, props, ref


def test_protocol_steps_clicks_and_cache(tmp_path, oracle_method):
    from autosam.interactive.protocol import run_case

    model = _model(tmp_path, "oracle")
    data, props, ref = _case()
    rec = run_case(model, data, props, ref, (2.0, 1.0, 1.0))
    assert rec["labels"] == [1, 2] and rec["mode"] == "prompted" and rec["first_prompt"] == "box2d"
    assert len(rec["steps"]) == 6 and [s["name"] for s in rec["steps"]] == ["box"] + [f"click {k}" for k in range(1, 6)]
    assert oracle_method.calls == {"encode": 1, "predict": 6}  # encoded once, one prediction per step
    assert rec["steps"][0]["clicks"] == {} and all(len(s["clicks"]) == 2 for s in rec["steps"][1:])
    # the ball's box over-segments the corners: the first click is negative, inside the box, off the ball
    first = rec["steps"][1]["clicks"]["1"]
    assert first[3] == -1 and not ref[tuple(first[:3])]
    # what the method got at the last step: the 2D box, every click of every step, the previous mask
    last = oracle_method.last_prompts[1]
    assert last.box2d is not None and len(last.points) == 5 and last.previous_mask is not None
    d = rec["dice_per_step"]
    assert len(d) == 6 and d[-1] > d[0] and rec["final_dice"] == d[-1]
    assert rec["dsc_auc"] == pytest.approx(auc(d)) and rec["nsd_auc"] == pytest.approx(auc(rec["nsd_per_step"]))
    assert d[0] == pytest.approx(np.mean([rec["per_label"][k]["dice_per_step"][0] for k in ("1", "2")]))
    assert rec["per_label"]["2"]["dice_per_step"][0] == pytest.approx(1.0)  # the bar is its own box
    assert all(s["seconds"] > 0 for s in rec["steps"])


def test_box_only_method_gets_the_3d_box_and_one_prediction(tmp_path, oracle_method):
    from autosam.interactive.protocol import run_case

    model = _model(tmp_path, "boxonly")
    data, props, ref = _case()
    rec = run_case(model, data, props, ref, (2.0, 1.0, 1.0))
    assert rec["first_prompt"] == "box3d" and oracle_method.calls["predict"] == 1
    assert oracle_method.last_prompts[1].box2d is None and len(oracle_method.last_prompts[1].boxes3d) == 1
    assert len(set(rec["dice_per_step"])) == 1 and rec["seconds_per_step"][1:] == [0.0] * 5


def test_a_method_without_prompts_is_the_automatic_reference(tmp_path):
    from autosam.interactive.protocol import run_case

    model = _model(tmp_path, "unet")
    data, props, ref = _case()
    rec = run_case(model, data, props, ref, (2.0, 1.0, 1.0))
    assert rec["mode"] == "automatic" and len(rec["dice_per_step"]) == 6
    assert len(set(rec["dice_per_step"])) == 1 and rec["seconds_per_step"][1:] == [0.0] * 5
    assert all(s["clicks"] == {} for s in rec["steps"])


def test_clicks_land_where_they_were_given_through_crop_and_resampling(tmp_path, oracle_method):
    """Clicks are simulated on the input grid and painted by the method on the preprocessed grid:
    after each step the clicked voxel of the input grid is the structure (positive click) or not
    (negative click), so a click comes back to the voxel it was given on."""
    from autosam.interactive.protocol import run_case
    from autosam.io.image import ImageGeometry
    from autosam.preprocessing.preprocessor import preprocess_arrays

    model = _model(tmp_path, "oracle")
    shape = (18, 34, 30)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ref = np.zeros(shape, np.uint8)
    ref[((z - 9) / 5.0) ** 2 + ((y - 15) / 9.0) ** 2 + ((x - 14) / 7.0) ** 2 <= 1] = 1
    ref[5:8, 26:30, 20:26] = 2
    img = np.random.default_rng(1).normal(1.0, 0.2, shape).astype(np.float32) + ref
    img[:, :, :2] = 0
    img[:1] = 0
    geometry = ImageGeometry(spacing=(2.6, 1.3, 0.8), origin=(0, 0, 0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape=shape)
    data, _seg, props = preprocess_arrays(img[None], geometry, model.plans, "3d")
    assert props["bbox_used_for_cropping"] != [[0, s] for s in shape] and data.shape[1:] != shape
    segs = {}
    rec = run_case(model, data, props, ref, geometry.spacing, on_step=lambda k, seg: segs.__setitem__(k, seg.copy()))
    checked = 0
    for step in rec["steps"][1:]:
        for label, click in step["clicks"].items():
            if click is not None:
                assert (segs[step["step"]][tuple(click[:3])] == int(label)) == (click[3] == 1), (step["step"], click)
                checked += 1
    assert checked >= 8


def test_promptunet_through_the_protocol(tmp_path):
    """The built-in prompt-trained method (untrained here): prompted mode, the challenge's 2D box first,
    6 steps with a click per structure, and the clicks reach its network (the prediction changes)."""
    pytest.importorskip("autosam_plugins.promptunet")
    from autosam.interactive.protocol import run_case

    model = _model(tmp_path, "promptunet")
    data, props, ref = _case()
    rec = run_case(model, data, props, ref, (2.0, 1.0, 1.0))
    assert rec["mode"] == "prompted" and rec["first_prompt"] == "box2d" and len(rec["steps"]) == 6
    assert all(s["predicted"] for s in rec["steps"]) and all(len(s["clicks"]) == 2 for s in rec["steps"][1:])
    assert rec["encode_seconds"] >= 0 and len(rec["seconds_per_step"]) == 6
    # the prompts reach its network: the probabilities with the box differ from those without prompts
    from autosam.inference.prompted import predict_case_with_prompts
    from autosam.prompts import LabelPrompts, box2d_from_mask

    with_box = predict_case_with_prompts(model.method, model.folds, data, props, model.ctx,
                                         {1: LabelPrompts(box2d=box2d_from_mask(ref == 1))})
    without = predict_case_with_prompts(model.method, model.folds, data, props, model.ctx, {})
    assert (with_box - without).abs().max() > 1e-4
