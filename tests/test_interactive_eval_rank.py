"""``autosam_find_best_configuration --rank-by dsc_auc``: single models ranked by the interactive
protocol's DSC_AUC read from ``fold_N/interactive/summary.json``; the automatic ranking untouched."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autosam.cli.choose import main_find_best
from autosam.interactive.evaluator import summarize
from autosam.postprocessing.find_best import RESULT_FILE, find_best_configuration
from autosam.utils.files import write_json
from test_choose_and_combine import _fake_training, _references

DS = "Dataset996_Rank"


def _interactive_summary(folder, fold, curves, mode="prompted"):
    """What the evaluator writes for a fold whose cases have these Dice curves (one per case)."""
    records = [{"case": f"c{i}", "labels": [1], "per_label": {"1": {"dice_per_step": c, "nsd_per_step": c}},
                "dice_per_step": c, "nsd_per_step": c, "dsc_auc": None, "nsd_auc": None,
                "seconds_per_step": [0.1] * len(c), "encode_seconds": 0.2} for i, c in enumerate(curves)]
    settings = {"method": folder.name.split("__")[0], "mode": mode, "first_prompt": "box2d" if mode == "prompted" else None,
                "num_clicks": len(curves[0]) - 1, "tolerance_mm": 2.0}
    write_json(folder / f"fold_{fold}" / "interactive" / "summary.json", summarize(records, settings, {}))


@pytest.fixture
def trained(autosam_dirs):
    _references(autosam_dirs["preprocessed"], DS, 4)
    res = autosam_dirs["results"] / DS
    rng = np.random.default_rng(0)
    _fake_training(res, "auto", [0, 1], 0.6, rng)  # the better automatic Dice
    _fake_training(res, "prompted", [0, 1], 0.35, rng)
    return res


def test_rank_by_dsc_auc_pools_the_folds_cases(trained, capsys):
    res = trained
    auto, prompted = res / "auto__autosamPlans__3d", res / "prompted__autosamPlans__3d"
    for f in (0, 1):
        _interactive_summary(auto, f, [[0.7] * 6, [0.7] * 6], mode="automatic")
    # fold 0: one case, fold 1: three cases; the pooled curve weights the cases, not the folds
    _interactive_summary(prompted, 0, [[0.5, 0.6, 0.7, 0.8, 0.9, 0.9]])
    _interactive_summary(prompted, 1, [[0.6, 0.8, 0.9, 0.9, 0.9, 0.9]] * 3)
    result = find_best_configuration(996, folds=[0, 1], rank_by="dsc_auc")
    assert result["rank_by"] == "dsc_auc" and [r["name"] for r in result["ranking"]] == [
        "prompted__autosamPlans__3d", "auto__autosamPlans__3d"]  # no ensemble: the protocol scores single models
    first = result["ranking"][0]["interactive"]
    auc0 = 0.25 + 0.6 + 0.7 + 0.8 + 0.9 + 0.45  # by hand, fold 0's case
    auc1 = 0.3 + 0.8 + 0.9 + 0.9 + 0.9 + 0.45
    assert first["dsc_auc"] == pytest.approx((auc0 + 3 * auc1) / 4)
    assert first["dice_per_step"][0] == pytest.approx((0.5 + 3 * 0.6) / 4) and first["num_cases"] == 4
    assert result["ranking"][1]["interactive"]["dsc_auc"] == pytest.approx(0.7 * 5)
    assert result["ranking"][1]["foreground_mean_dice"] > result["ranking"][0]["foreground_mean_dice"]
    assert (res / "find_best_configuration_dsc_auc.json").is_file() and not (res / RESULT_FILE).exists()

    # the command; the default ranking is still the automatic Dice
    assert main_find_best(["996", "-f", "0", "1", "--rank-by", "dsc_auc"]) == 0
    out = capsys.readouterr().out
    assert "DSC_AUC" in out and "auto__autosamPlans__3d (automatic)" in out
    assert find_best_configuration(996, folds=[0, 1], allow_ensembling=False)["best"]["name"] == "auto__autosamPlans__3d"
    assert json.loads((res / RESULT_FILE).read_text())["rank_by"] == "dice"


def test_rank_by_dsc_auc_needs_interactive_results(trained, capsys):
    _interactive_summary(trained / "prompted__autosamPlans__3d", 0, [[0.5] * 6])  # fold 1 missing
    with pytest.raises(ValueError, match="no trained model has interactive results for folds"):
        find_best_configuration(996, folds=[0, 1], rank_by="dsc_auc")
    _interactive_summary(trained / "prompted__autosamPlans__3d", 1, [[0.5] * 3])  # 2 clicks instead of 5
    with pytest.raises(ValueError, match="differ in clicks"):
        find_best_configuration(996, folds=[0, 1], rank_by="dsc_auc")
    with pytest.raises(SystemExit):
        main_find_best(["996", "--rank-by", "auc"])
    assert "invalid choice" in capsys.readouterr().err
