"""Post-processing determination, ensembling and find_best_configuration on hand-made predictions."""
import json
import shlex

import numpy as np
import pytest

from autosam.cli.choose import main_apply_postprocessing, main_ensemble
from autosam.evaluation.evaluate import evaluate_folder
from autosam.io.image import ImageGeometry, read_image, write_image
from autosam.postprocessing.find_best import find_best_configuration
from autosam.postprocessing.postprocess import determine_postprocessing, keep_largest_component
from autosam.utils.files import save_npz, write_json

GEOM = ImageGeometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (12, 20, 20))
DJ = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 4, "file_ending": ".nii.gz"}


def _ref(i):
    seg = np.zeros(GEOM.shape, np.uint8)
    seg[2:8, 3:10, 3:10] = 1
    seg[3:9, 11:17, 11:18] = 2
    return seg


def _write_case(folder, case, seg, probs=None):
    write_image(folder / f"{case}.nii.gz", seg, GEOM)
    if probs is not None:
        save_npz(folder / f"{case}.npz", probabilities=probs.astype(np.float32))
        write_json(folder / f"{case}.json", {"geometry": GEOM.to_dict(), "class_values": [0, 1, 2]})


def test_keep_largest_component():
    seg = np.zeros((5, 5, 5), np.uint8)
    seg[0:2, 0:2, 0:2] = 1
    seg[4, 4, 4] = 2
    out = keep_largest_component(seg, [1, 2])
    assert out[4, 4, 4] == 0 and (out[0:2, 0:2, 0:2] == 1).all()
    assert keep_largest_component(seg, [2])[4, 4, 4] == 2  # single component of label 2 stays


def test_postprocessing_kept_only_where_dice_rises(tmp_path):
    ref, pred_spur, pred_two = (tmp_path / n for n in ("ref", "spur", "two"))
    for f in (ref, pred_spur, pred_two):
        f.mkdir()
    write_json(tmp_path / "dataset.json", DJ)
    for i in range(2):
        r = _ref(i)
        _write_case(ref, f"c{i}", r)
        spur = r.copy()
        spur[10:12, 0:3, 0:3] = 1  # a spurious blob of class 1 far away
        _write_case(pred_spur, f"c{i}", spur)
    pp = determine_postprocessing(pred_spur, ref, tmp_path / "dataset.json")
    assert [1] in pp["rules"] or [1, 2] in pp["rules"]
    assert pp["foreground_mean_dice_after"] > pp["foreground_mean_dice_before"]

    # class 1 truly has two components in the reference: removing one would hurt -> not applied
    ref2 = tmp_path / "ref2"
    ref2.mkdir()
    for i in range(2):
        r = _ref(i)
        r[9:12, 15:19, 0:4] = 1
        _write_case(ref2, f"c{i}", r)
        _write_case(pred_two, f"c{i}", r)
    pp2 = determine_postprocessing(pred_two, ref2, tmp_path / "dataset.json")
    assert pp2["rules"] == []
    assert json.loads((pred_two / "postprocessing.json").read_text())["rules"] == []


def _fake_training(results, method, folds, quality, rng):
    for f in folds:
        val = results / f"{method}__autosamPlans__3d" / f"fold_{f}" / "validation"
        val.mkdir(parents=True)
        for i in (2 * f, 2 * f + 1):
            r = _ref(i)
            onehot = np.stack([r == k for k in range(3)]).astype(np.float32)
            probs = quality * onehot + (1 - quality) * rng.random((3, *GEOM.shape)).astype(np.float32)
            probs /= probs.sum(0, keepdims=True)
            _write_case(val, f"case_{i}", probs.argmax(0).astype(np.uint8), probs)
        write_json(val / "summary.json", {"foreground_mean": {}})


def _references(preprocessed_root, ds, n):
    """``<pre>/<ds>/dataset.json`` and ``gt_segmentations`` with ``n`` reference cases; returns the folder."""
    pre = preprocessed_root / ds
    (pre / "gt_segmentations").mkdir(parents=True)
    write_json(pre / "dataset.json", DJ)
    for i in range(n):
        _write_case(pre / "gt_segmentations", f"case_{i}", _ref(i))
    return pre


def test_find_best_configuration_ranks_ensembles_and_commands_reproduce(autosam_dirs, capsys):
    rng = np.random.default_rng(0)
    ds = "Dataset997_Choose"
    _references(autosam_dirs["preprocessed"], ds, 4)
    res = autosam_dirs["results"] / ds
    _fake_training(res, "good", [0, 1], 0.6, rng)
    _fake_training(res, "weak", [0, 1], 0.35, rng)
    result = find_best_configuration(997, folds=[0, 1])
    names = [r["name"] for r in result["ranking"]]
    assert set(names) == {"good__autosamPlans__3d", "weak__autosamPlans__3d",
                          "ensemble__good__autosamPlans__3d--weak__autosamPlans__3d"}
    dice = {r["name"]: r["foreground_mean_dice"] for r in result["ranking"]}
    assert result["best"]["name"] == max(dice, key=dice.get)
    assert dice["good__autosamPlans__3d"] > dice["weak__autosamPlans__3d"]
    assert (res / "comparison.png").stat().st_size > 1000 and "good__autosamPlans__3d" in (res / "comparison.md").read_text()

    # run the printed reproduction commands and compare with the reported (post-processed) Dice
    from autosam.cli.evaluate import main as main_eval

    entry = {"autosam_ensemble": main_ensemble, "autosam_apply_postprocessing": main_apply_postprocessing,
             "autosam_evaluate_folder": main_eval}
    work = autosam_dirs["results"].parent / "repro"
    work.mkdir()
    for line in result["commands"]["reproduce_crossval"]:
        args = [a if not a.isupper() else str(work / a) for a in shlex.split(line)]
        if args[0] == "autosam_evaluate_folder":
            args += ["-o", str(work / "summary.json")]
        assert entry[args[0]](args[1:]) == 0
    reproduced = json.loads((work / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert reproduced == pytest.approx(result["best"]["postprocessing"]["foreground_mean_dice_after"], abs=1e-6)


def test_find_best_configuration_on_a_subset_of_folds(autosam_dirs):
    """Regression: with -f naming fewer folds than splits_final.json holds, the references of the other
    folds' cases are not 'missing predictions' (the real organs example failed with -f 0); a validation
    case of a requested fold without a prediction still is an error."""
    rng = np.random.default_rng(1)
    ds = "Dataset995_Subset"
    pre = _references(autosam_dirs["preprocessed"], ds, 6)
    write_json(pre / "splits_final.json", [{"train": [f"case_{j}" for j in range(6) if j // 2 != f],
                                            "val": [f"case_{2 * f}", f"case_{2 * f + 1}"]} for f in range(3)])
    res = autosam_dirs["results"] / ds
    _fake_training(res, "good", [0], 0.6, rng)
    _fake_training(res, "weak", [0], 0.35, rng)
    result = find_best_configuration(995, folds=[0])
    assert len(result["ranking"]) == 3
    summary = json.loads((res / "crossval" / "good__autosamPlans__3d" / "summary.json").read_text())
    assert sorted(c["reference_file"].rsplit("/", 1)[-1] for c in summary["metric_per_case"]) == ["case_0.nii.gz", "case_1.nii.gz"]

    (res / "weak__autosamPlans__3d" / "fold_0" / "validation" / "case_1.nii.gz").unlink()
    with pytest.raises(ValueError, match="case_1.nii.gz"):
        find_best_configuration(995, folds=[0])


def test_ensemble_cli_averages_and_keeps_geometry(tmp_path):
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    a.mkdir(), b.mkdir()
    p1 = np.zeros((3, *GEOM.shape), np.float32)
    p1[0] = 0.6
    p1[1] = 0.4
    p2 = np.zeros_like(p1)
    p2[1] = 0.1
    p2[2] = 0.9
    _write_case(a, "x", p1.argmax(0).astype(np.uint8), p1)
    _write_case(b, "x", p2.argmax(0).astype(np.uint8), p2)
    assert main_ensemble(["-i", str(a), str(b), "-o", str(out)]) == 0
    seg, geom = read_image(out / "x.nii.gz")
    assert geom.matches(GEOM)
    assert (seg == 2).all()  # mean probabilities 0.3, 0.25, 0.45; input a alone says background


def test_auto_method_prefers_find_best_winner(autosam_dirs):
    from autosam.experiment_planning.plans import Plans
    from autosam.inference.predictor import resolve_auto_method
    from test_medlsam_plugin import make_ctx
    from autosam.plugins import get_method

    ds = "Dataset996_Auto"
    plans: Plans = make_ctx(get_method("medlsam")).plans
    plans.default_method = "unet"
    (autosam_dirs["preprocessed"] / ds).mkdir()
    plans.save(autosam_dirs["preprocessed"] / ds / "autosamPlans.json")
    assert resolve_auto_method(996, configuration="3d") == "unet"
    (autosam_dirs["results"] / ds).mkdir()
    write_json(autosam_dirs["results"] / ds / "find_best_configuration.json",
               {"best": {"members": ["masksam__autosamPlans__3d"]}})
    assert resolve_auto_method(996, configuration="3d") == "masksam"
    assert resolve_auto_method(996, configuration="2d") == "unet"  # the winner is for another configuration
