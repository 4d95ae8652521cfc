"""``autosam_evaluate_interactive`` end to end: a fold's validation cases (an untrained ``unet`` as the
automatic reference, the prompt-painting ``oracle``), a folder of images that are cropped and
resampled, resuming, the plot of several summaries, and the command's errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autosam.cli.evaluate_interactive import main
from autosam.io.image import ImageGeometry, write_image
from interactive_helpers import OracleMethod, model_folder, oracle_method  # noqa: F401  (fixture)
from training_data import NAME, make_tiny_preprocessed


@pytest.fixture
def fold_setup(autosam_dirs, oracle_method):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    return {m: model_folder(autosam_dirs["results"], m) for m in ("unet", "oracle")}


def test_fold_validation_cases_prompted_and_automatic(fold_setup, tmp_path, capsys):
    out = tmp_path / "interactive"
    assert main(["-d", "990", "-c", "3d", "-m", "oracle", "unet", "-f", "0", "-o", str(out), "--quiet"]) == 0
    oracle = json.loads((out / "oracle" / "summary.json").read_text())
    unet = json.loads((out / "unet" / "summary.json").read_text())
    assert (out / "dice_per_step.png").stat().st_size > 1000  # both methods in one plot
    assert (out / "oracle" / "dice_per_step.png").is_file()
    for s in (oracle, unet):
        assert s["num_cases"] == 2 and s["source"] == {"kind": "fold validation", "fold": "0", "dataset": NAME}
        assert s["steps"] == ["box", "click 1", "click 2", "click 3", "click 4", "click 5"]
        for key in ("dice_per_step", "nsd_per_step", "seconds_per_step"):
            assert len(s[key]) == 6, key
        assert s["dsc_auc"] == pytest.approx(sum(s["dice_per_step"]) - (s["dice_per_step"][0] + s["dice_per_step"][-1]) / 2)
        assert sorted(p.name for p in (out / s["method"] / "cases").iterdir()) == ["case_000.json", "case_001.json"]
    assert oracle["mode"] == "prompted" and oracle["first_prompt"] == "box2d"
    assert oracle["final_dice"] > oracle["dice_per_step"][0] > 0.3
    assert OracleMethod.calls == {"encode": 2, "predict": 12}  # one encoding per case, one prediction per step
    assert unet["mode"] == "automatic" and "automatic" in unet["mode_note"]
    assert len(set(unet["dice_per_step"])) == 1 and unet["seconds_per_step"][1:] == [0.0] * 5
    case = json.loads((out / "oracle" / "cases" / "case_000.json").read_text())
    assert [len(s["clicks"]) for s in case["steps"]] == [0, 2, 2, 2, 2, 2]  # per step, one click per structure
    printed = capsys.readouterr().out
    assert "oracle" in printed and "unet (automatic)" in printed

    # an interrupted run resumes: evaluated cases are read back, --overwrite evaluates them again
    assert main(["-d", "990", "-m", "oracle", "-f", "0", "-o", str(out / "oracle"), "--quiet"]) == 0
    assert OracleMethod.calls["predict"] == 12
    assert json.loads((out / "oracle" / "summary.json").read_text())["dice_per_step"] == oracle["dice_per_step"]
    assert main(["-d", "990", "-m", "oracle", "-f", "0", "-o", str(out / "oracle"), "--quiet", "--clicks", "2"]) == 0
    assert OracleMethod.calls["predict"] == 18  # other settings: evaluated again
    assert len(json.loads((out / "oracle" / "summary.json").read_text())["dice_per_step"]) == 3

    # several summaries in one plot
    assert main(["--plot", str(out / "unet"), str(out / "oracle" / "summary.json"), "-o", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "dice_per_step.png").is_file()


def test_default_output_is_the_folds_interactive_folder(fold_setup):
    assert main(["-d", "990", "-m", "unet", "-f", "0", "--quiet", "--max-cases", "1"]) == 0
    summary = json.loads((fold_setup["unet"] / "fold_0" / "interactive" / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["folds"] == ["0"]


def test_folder_of_images_cropped_and_resampled(autosam_dirs, oracle_method, tmp_path):
    """Images at another spacing than the plans' with a zero border: the box, the clicks and the
    previous masks go through the crop and the resampling and back, and the clicks still fix errors."""
    model_folder(autosam_dirs["results"], "oracle", fold="all")
    images, labels = tmp_path / "images", tmp_path / "labels"
    rng = np.random.default_rng(5)
    geometry = ImageGeometry(spacing=(2.5, 1.2, 0.9), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                             shape=(20, 36, 30))
    z, y, x = np.meshgrid(*[np.arange(s) for s in (20, 36, 30)], indexing="ij")
    for i in range(2):
        seg = np.zeros((20, 36, 30), np.uint8)
        seg[((z - 10) / 4.5) ** 2 + ((y - 12 - 3 * i) / 7.5) ** 2 + ((x - 13) / 8.0) ** 2 <= 1] = 1
        seg[3:17, 24:31, 4 + i:11 + i] = 2
        img = rng.normal(0, 0.3, seg.shape).astype(np.float32) + 2.0 * (seg == 1) - 2.0 * (seg == 2) + 1
        img[:, :, -2:] = 0  # a zero border the preprocessing crops
        write_image(images / f"img_{i}_0000.nii.gz", img, geometry)
        write_image(labels / f"img_{i}.nii.gz", seg.astype(np.uint8), geometry)
    out = tmp_path / "out"
    assert main(["-i", str(images), "-ref", str(labels), "-d", "990", "-m", "oracle", "-o", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["source"]["kind"] == "folder" and s["num_cases"] == 2 and s["folds"] == ["all"]
    assert s["per_label"]["2"]["dice_per_step"][0] > 0.7  # the bar is nearly its own box, on the input grid
    ball_curve = s["per_label"]["1"]["dice_per_step"]  # the negative clicks trim the box's corners off the ellipsoid
    assert all(b >= a for a, b in zip(ball_curve, ball_curve[1:])) and ball_curve[-1] > ball_curve[0] + 0.01
    case = json.loads((out / "cases" / "img_0.json").read_text())
    for step in case["steps"][1:]:
        for click in step["clicks"].values():
            assert click is None or all(0 <= c < n for c, n in zip(click[:3], (20, 36, 30)))


def test_command_errors(fold_setup, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["-i", str(tmp_path), "-d", "990", "-m", "oracle", "-o", str(tmp_path / "o")])
    assert "-i and -ref go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["-d", "990", "-m", "oracle", "-f", "0", "1"])
    assert "exactly one fold" in capsys.readouterr().err
    assert main(["-d", "990", "-m", "nosuch", "-f", "0", "-o", str(tmp_path / "o")]) != 0
    assert "nosuch" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["--plot", str(tmp_path / "bad.json"), "-o", str(tmp_path / "p")]) != 0
    assert "bad.json: not a summary" in capsys.readouterr().err


def test_find_best_reads_what_the_evaluator_wrote(fold_setup):
    """``--rank-by dsc_auc`` reads the summary the evaluator writes by default (fold_N/interactive)."""
    from autosam.interactive.ranking import crossval_interactive

    assert crossval_interactive(fold_setup["oracle"], [0]) is None
    assert main(["-d", "990", "-m", "oracle", "-f", "0", "--quiet"]) == 0
    summary = json.loads((fold_setup["oracle"] / "fold_0" / "interactive" / "summary.json").read_text())
    pooled = crossval_interactive(fold_setup["oracle"], [0])
    assert pooled["dsc_auc"] == pytest.approx(summary["dsc_auc"]) and pooled["dice_per_step"] == pytest.approx(
        summary["dice_per_step"]) and pooled["mode"] == "prompted"


def test_fold_case_not_preprocessed_comes_from_the_raw_images(fold_setup, autosam_dirs, tmp_path, capsys):
    from autosam.io.image import read_image
    from autosam.preprocessing.storage import case_paths

    data_folder = autosam_dirs["preprocessed"] / NAME / "autosamPlans_3d"
    image = np.load(case_paths(data_folder, "case_001")[0])[0]
    for p in case_paths(data_folder, "case_001"):
        p.unlink(missing_ok=True)
    assert main(["-d", "990", "-m", "oracle", "-f", "0", "-o", str(tmp_path / "x"), "--quiet"]) != 0
    assert "case 'case_001' is not preprocessed" in capsys.readouterr().err
    _ref, geometry = read_image(autosam_dirs["preprocessed"] / NAME / "gt_segmentations" / "case_001.nii.gz")
    write_image(autosam_dirs["raw"] / NAME / "imagesTr" / "case_001_0000.nii.gz", image, geometry)
    assert main(["-d", "990", "-m", "oracle", "-f", "0", "-o", str(tmp_path / "o"), "--quiet"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["num_cases"] == 2 and s["final_dice"] > s["dice_per_step"][0]
