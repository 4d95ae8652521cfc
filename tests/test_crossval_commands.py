"""autosam_accumulate_crossval_results and autosam_determine_postprocessing as commands (the logic is
find_best_configuration's, tested in test_choose_and_combine.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autosam.cli.choose import main_accumulate_crossval_results, main_determine_postprocessing
from autosam.io.image import read_image
from autosam.postprocessing.find_best import find_best_configuration
from autosam.utils.files import write_json
from test_choose_and_combine import DJ, _fake_training, _ref, _references, _write_case

DS = "Dataset994_Crossval"


@pytest.fixture
def trained(autosam_dirs):
    pre = _references(autosam_dirs["preprocessed"], DS, 4)
    res = autosam_dirs["results"] / DS
    _fake_training(res, "good", [0, 1], 0.6, np.random.default_rng(0))
    return pre, res / "good__autosamPlans__3d"


def test_accumulate_crossval_results_equals_find_best_s_step(trained, capsys):
    pre, model = trained
    assert main_accumulate_crossval_results(["994", "-c", "3d_fullres", "-tr", "good", "-f", "0", "1"]) == 0
    folder = model / "crossval_results_folds_0_1"
    assert sorted(p.name for p in folder.glob("*.nii.gz")) == [f"case_{i}.nii.gz" for i in range(4)]
    assert (folder / "dataset.json").is_file()
    summary = json.loads((folder / "summary.json").read_text())
    result = find_best_configuration(994, folds=[0, 1])
    assert summary["foreground_mean"]["Dice"] == pytest.approx(result["ranking"][0]["foreground_mean_dice"])
    assert f"{summary['foreground_mean']['Dice']:.4f}" in capsys.readouterr().out

    # a missing fold, a missing case, and an output folder that holds something else are errors
    assert main_accumulate_crossval_results(["994", "-c", "3d", "-m", "good", "-f", "0", "1", "2"]) == 2
    assert "folds [2] have no validation predictions" in capsys.readouterr().err
    (model / "fold_1" / "validation" / "case_3.nii.gz").unlink()
    assert main_accumulate_crossval_results(["994", "-c", "3d", "-m", "good", "-f", "0", "1"]) == 2
    assert "case_3.nii.gz" in capsys.readouterr().err
    other = pre.parent / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main_accumulate_crossval_results(["994", "-c", "3d", "-m", "good", "-f", "0", "-o", str(other)]) == 2
    assert "give a new or empty folder" in capsys.readouterr().err and (other / "notes.txt").is_file()
    assert main_accumulate_crossval_results(["994", "-c", "3d", "-m", "nothing", "-f", "0"]) == 2
    assert "good__autosamPlans__3d" in capsys.readouterr().err  # the models that exist


def test_determine_postprocessing_command(tmp_path, capsys):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    write_json(pred / "dataset.json", DJ)
    for i in range(2):
        r = _ref(i)
        _write_case(ref, f"c{i}", r)
        spur = r.copy()
        spur[10:12, 0:3, 0:3] = 1  # a spurious blob of label 1
        _write_case(pred, f"c{i}", spur)
    assert main_determine_postprocessing(["-i", str(pred), "-ref", str(ref)]) == 0
    pp = json.loads((pred / "postprocessing.json").read_text())
    assert pp["rules"] and pp["foreground_mean_dice_after"] > pp["foreground_mean_dice_before"]
    cleaned, _ = read_image(pred / "postprocessed" / "c0.nii.gz")
    np.testing.assert_array_equal(cleaned, _ref(0))
    assert "largest component of" in capsys.readouterr().out
    assert main_determine_postprocessing(["-i", str(ref), "-ref", str(ref)]) == 2
    assert "no dataset.json; give one with -dataset_json" in capsys.readouterr().err
    assert main_determine_postprocessing(["-i", str(ref), "-ref", str(ref), "-dataset_json", str(pred / "dataset.json"),
                                          "--remove_postprocessed"]) == 0
    assert json.loads((ref / "postprocessing.json").read_text())["rules"] == []
    assert not (ref / "postprocessed").exists()
