"""nnU-Net habits: single-dash spellings, did-you-mean, 3d_fullres, default folds, -step_size,
--val_best, --disable_checkpointing, -pretrained_weights, fold validation messages."""
from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pytest
import torch

from autosam.cli import choose, convert_msd, evaluate, plan_and_preprocess, predict, train
from autosam.cli.common import Parser, suggest_flag
from autosam.experiment_planning.plans import normalize_configuration
from autosam.io.image import ImageGeometry, write_image
from autosam.training import checkpoint as ckpt_io
from autosam.training.trainer import run_training
from autosam.utils.files import write_json
from test_predictor import TinyMethod, model_folder  # noqa: F401  (fixture)
from training_data import DATASET_JSON, NAME, make_tiny_preprocessed, tiny_plans, untrained_model


class _Parsed(Exception):
    pass


def parsed(monkeypatch, main, argv) -> dict:
    """The namespace a command's parser produces for ``argv`` (the command itself does not run)."""
    original = Parser.parse_known_args

    def capture(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(Parser, "parse_known_args", capture)
        with pytest.raises(_Parsed) as info:
            main(argv)
    namespace, extra = info.value.args[0]
    return {**vars(namespace), "_extra": extra}


PREDICT = ["-i", "in", "-o", "out", "-d", "5", "-c", "3d"]
TRAIN = ["5", "3d", "unet", "0"]


@pytest.mark.parametrize("main, base, nnunet, ours", [
    (predict.main, PREDICT, ["-device", "cpu"], ["--device", "cpu"]),
    (predict.main, PREDICT, ["-chk", "checkpoint_best.pth"], ["--checkpoint", "checkpoint_best.pth"]),
    (predict.main, PREDICT, ["-step_size", "0.75"], ["--step_size", "0.75"]),
    (predict.main, PREDICT, ["-npp", "3"], ["--num_processes", "3"]),
    (predict.main, PREDICT, ["-nps", "2"], ["--num_export_workers", "2"]),
    (predict.main, PREDICT, ["-p", "myPlans"], ["--plans", "myPlans"]),
    (predict.main, PREDICT, ["-tr", "unet"], ["-m", "unet"]),
    (predict.main, PREDICT, ["--disable_progress_bar"], ["--quiet"]),
    (predict.main, PREDICT[:-1] + ["3d_fullres"], [], []),
    (predict.main, PREDICT, ["-num_parts", "3", "-part_id", "2"], ["--num_parts", "3", "--part_id", "2"]),
    (predict.main, PREDICT, ["-num_gpus", "2", "--continue_prediction"], ["--num-gpus", "2", "--continue_prediction"]),
    (train.main, TRAIN, ["-device", "cpu"], ["--device", "cpu"]),
    (train.main, TRAIN, ["-p", "myPlans"], ["--plans", "myPlans"]),
    (train.main, TRAIN, ["-pretrained_weights", "w.pth"], ["--pretrained_weights", "w.pth"]),
    (train.main, TRAIN, ["-step_size", "0.25"], ["--step_size", "0.25"]),
    (train.main, TRAIN, ["--disable_progress_bar"], ["--quiet"]),
    (train.main, TRAIN, ["-num_gpus", "2"], ["--num-gpus", "2"]),
    (train.main, ["5", "3d_fullres", "unet", "0"], [], []),
    (choose.main_find_best, ["5"], ["-tr", "unet", "-c", "3d_fullres"], ["--methods", "unet", "-c", "3d"]),
    (choose.main_ensemble, ["-i", "a", "b", "-o", "c"], ["--save_npz"], ["--save_probabilities"]),
    (choose.main_apply_postprocessing, ["-i", "a", "-o", "b"], ["-pp_pkl_file", "pp.json"], ["--pp_file", "pp.json"]),
    (plan_and_preprocess.main, ["-d", "5"], ["-gpu_memory_target", "11", "-c", "3d_fullres"],
     ["--gpu_memory_gb", "11", "-c", "3d"]),
    (plan_and_preprocess.main_plan, ["-d", "5"], ["-gpu_memory_target", "11"], ["--gpu_memory_gb", "11"]),
    (evaluate.main, ["-djfile", "d.json"], ["-ref", "r", "-pred", "p", "--chill"], ["-ref", "r", "-pred", "p", "--chill"]),
])
def test_nnunet_spelling_parses_like_ours(monkeypatch, main, base, nnunet, ours):
    got = parsed(monkeypatch, main, base + nnunet)
    want = parsed(monkeypatch, main, (base if "3d_fullres" not in base else [b.replace("3d_fullres", "3d") for b in base])
                  + ours)
    assert got == want
    assert got["_extra"] == []


def test_single_dash_device_is_no_longer_the_dataset_flag(monkeypatch):
    args = parsed(monkeypatch, predict.main, ["-i", "in", "-o", "out", "-d", "5", "-c", "3d", "-device", "cpu"])
    assert args["d"] == "5" and args["device"] == "cpu"
    args = parsed(monkeypatch, predict.main, ["-i", "in", "-o", "out", "-d", "5", "-c", "3d", "-chk", "checkpoint_best.pth"])
    assert args["c"] == "3d" and args["checkpoint"] == "checkpoint_best.pth"
    # a one-letter flag with an attached number still works
    assert parsed(monkeypatch, predict.main, PREDICT + ["-f0"])["f"] == ["0"]


@pytest.mark.parametrize("main, argv, hint", [
    (predict.main, PREDICT + ["-devcie", "cpu"], "-devcie (did you mean -device?)"),
    (predict.main, PREDICT + ["--dev", "cpu"], "--dev (did you mean --device?)"),  # no abbreviations
    (predict.main, PREDICT + ["-chkk", "x"], "-chkk (did you mean -chk?)"),
    (predict.main, PREDICT + ["-stepsize", "0.5"], "(did you mean -step_size?)"),
    (train.main, TRAIN + ["--epoch", "3"], "--epoch (did you mean --epochs?)"),
    (train.main, TRAIN + ["-lr", "3e-4"], "-lr (did you mean --lr?)"),  # a method option, single dash
    (train.main, TRAIN + ["--val-best"], "--val-best (did you mean --val_best?)"),
    (evaluate.main, ["r", "p", "-djfil", "d.json"], "-djfil (did you mean -djfile?)"),
    (choose.main_find_best, ["5", "--disable_ensemble"], "(did you mean --disable_ensembling?)"),
    (plan_and_preprocess.main, ["-d", "5", "-gpu_memory", "8"], "(did you mean --gpu_memory_gb?)"),
    (convert_msd.main, ["-i", "Task04_Hippocampus", "-overwriteid", "4"], "-overwriteid (did you mean -overwrite_id?)"),
])
def test_wrong_flag_exits_2_with_did_you_mean(main, argv, hint, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and hint in err


def test_method_options_still_pass_through_train(monkeypatch):
    args = parsed(monkeypatch, train.main, TRAIN + ["--lr", "3e-4", "--deep-supervision", "false"])
    assert args["_extra"] == ["--lr", "3e-4", "--deep-supervision", "false"]
    seen = {}
    monkeypatch.setattr("autosam.training.trainer.run_training",
                        lambda *a, **kw: seen.update(kw) or (_ for _ in ()).throw(FileNotFoundError("stop")))
    assert train.main(TRAIN + ["--lr", "3e-4", "--deep-supervision", "false", "--quiet"]) == 1
    assert seen["method_overrides"] == {"lr": "3e-4", "deep_supervision": "false"}


def test_suggestion_ignores_dashes_and_separators():
    known = ["-device", "--device", "--num-workers", "-chk"]
    assert suggest_flag("-devise", known) == "-device"
    assert suggest_flag("--num_workers", known) == "--num-workers"
    assert suggest_flag("--zzz", known) is None


def test_configuration_names():
    assert normalize_configuration("3d_fullres") == "3d"
    assert [normalize_configuration(c) for c in ("2d", "3d", "3d_lowres")] == ["2d", "3d", "3d_lowres"]
    plans = tiny_plans()
    assert plans.configuration("3d_fullres") is plans.configuration("3d")


# ------------------------------------------------------------------------------------ prediction
def _geometry(shape) -> ImageGeometry:
    return ImageGeometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                         shape=tuple(shape))


def _box_mask() -> np.ndarray:
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1:3, 1:4, 1:5] = 1
    return seg


def _write_inputs(folder, n=2):
    folder.mkdir()
    geometry = _geometry((6, 10, 12))
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(folder / f"case{i}_0000.nii.gz", rng.normal(size=(6, 10, 12)).astype(np.float32), geometry)


def test_predict_defaults_to_every_fold_with_the_checkpoint(model_folder, tmp_path, monkeypatch, caplog):  # noqa: F811
    from autosam.inference import predictor, sliding_window

    (model_folder / "fold_1" / "checkpoint_final.pth").rename(model_folder / "fold_1" / "checkpoint_best.pth")
    (model_folder / "fold_3").mkdir()  # an untrained fold
    (model_folder / "fold_4").mkdir()
    shutil.copy(model_folder / "fold_0" / "checkpoint_final.pth", model_folder / "fold_4" / "checkpoint_final.pth")
    assert predictor.folds_with_checkpoint(model_folder, "final") == [0, 4]
    assert predictor.folds_with_checkpoint(model_folder, "checkpoint_best.pth") == [1]
    with pytest.raises(FileNotFoundError, match="no fold has checkpoint_latest.pth; found: fold_0/checkpoint_final.pth"):
        predictor.folds_with_checkpoint(model_folder, "latest")

    steps = []
    real = sliding_window.sliding_window_predict
    monkeypatch.setattr(sliding_window, "sliding_window_predict",
                        lambda *a, **kw: steps.append(kw.get("step_size")) or real(*a, **kw))
    _write_inputs(tmp_path / "in")
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    # the nnU-Net command line: 3d_fullres, -chk with a file name, -step_size, no -f
    assert predict.main(["-i", str(tmp_path / "in"), "-o", str(out), "-d", "998", "-c", "3d_fullres",
                         "-tr", TinyMethod.name, "-device", "cpu", "-step_size", "0.75", "-npp", "1",
                         "--disable_tta", "--disable_progress_bar"]) == 0
    args = json.loads((out / "predict_args.json").read_text())
    assert args["folds"] == ["0", "4"] and args["step_size"] == 0.75 and args["configuration"] == "3d"
    assert "folds with checkpoint_final.pth" in caplog.text and "0, 4" in caplog.text
    assert steps and set(steps) == {0.75}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz"]

    out2 = tmp_path / "out2"
    assert predict.main(["-i", str(tmp_path / "in"), "-o", str(out2), "-d", "998", "-c", "3d", "-m", TinyMethod.name,
                         "-chk", "checkpoint_best.pth", "-device", "cpu", "-nps", "2", "--disable_tta",
                         "--disable_progress_bar"]) == 0
    assert json.loads((out2 / "predict_args.json").read_text())["folds"] == ["1"]


def test_predict_without_any_fold_having_the_checkpoint(model_folder, tmp_path, capsys):  # noqa: F811
    _write_inputs(tmp_path / "in", 1)
    code = predict.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "998", "-c", "3d",
                         "-m", TinyMethod.name, "-chk", "latest", "-device", "cpu", "--disable_progress_bar"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no fold has checkpoint_latest.pth" in err and "fold_0/checkpoint_final.pth" in err
    assert predict.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "998", "-c", "3d",
                         "-m", TinyMethod.name, "-chk", "../x.pth", "-device", "cpu"]) == 2
    assert "file name in fold_N/" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- training
KW = dict(iters_per_epoch=1, device="cpu", num_workers=0)


def test_disable_checkpointing_writes_the_final_checkpoint_only(autosam_dirs, monkeypatch):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    written = []
    real = ckpt_io.save_checkpoint
    monkeypatch.setattr(ckpt_io, "save_checkpoint", lambda path, **kw: written.append(path.name) or real(path, **kw))
    fold_dir = run_training(NAME, "3d_fullres", "unet", 0, epochs=2, validate=False, disable_checkpointing=True, **KW)
    assert fold_dir.parent.name == "unet__autosamPlans__3d"  # 3d_fullres is 3d
    assert written == ["checkpoint_final.pth"]
    assert sorted(p.name for p in fold_dir.glob("*.pth")) == ["checkpoint_final.pth"]
    with pytest.raises(ValueError, match="--val_best.*--disable_checkpointing"):
        run_training(NAME, "3d", "unet", 0, epochs=1, val_best=True, disable_checkpointing=True, **KW)


def test_val_best_validates_with_checkpoint_best(autosam_dirs, monkeypatch):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=1, validate=False, **KW)
    # make checkpoint_best.pth differ from the final network
    best = ckpt_io.load_checkpoint(fold_dir / "checkpoint_best.pth")
    best["network"] = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in best["network"].items()}
    torch.save(best, fold_dir / "checkpoint_best.pth")
    final = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")["network"]
    used = {}

    def fake_validate(method, network, ctx, dataset, val_keys, fold_dir, *a, checkpoint=None, **kw):
        used[checkpoint] = {k: v.clone() for k, v in network.state_dict().items()}

    monkeypatch.setattr("autosam.training.validation.validate_fold", fake_validate)
    run_training(NAME, "3d", "unet", 0, epochs=1, validation_only=True, val_best=True, **KW)
    run_training(NAME, "3d", "unet", 0, epochs=1, validation_only=True, **KW)
    for name, state in (("checkpoint_best.pth", best["network"]), ("checkpoint_final.pth", final)):
        assert all(torch.equal(used[name][k], state[k]) for k in state), name
    # the command line passes --val_best on
    seen = {}
    monkeypatch.setattr("autosam.training.trainer.run_training", lambda *a, **kw: seen.update(kw) or fold_dir)
    assert train.main([NAME, "3d", "unet", "0", "--val", "--val_best", "--quiet"]) == 0
    assert seen["val_best"] and seen["validation_only"]


def test_pretrained_weights_with_another_label_count_reinitialise_the_head(autosam_dirs, tmp_path, caplog):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    other = tiny_plans()
    other.labels = {"background": 0, "organ": 1}  # another dataset: 2 classes instead of 3
    untrained_model(other, tmp_path / "other")
    source_file = tmp_path / "other" / "fold_all" / "checkpoint_final.pth"
    source = ckpt_io.load_checkpoint(source_file)["network"]
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fold_dir = run_training(NAME, "3d", "unet", 0, epochs=0, validate=False, pretrained_weights=source_file, **KW)
    result = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")["network"]
    same = [k for k in result if k in source and source[k].shape == result[k].shape]
    different = sorted(k for k in result if k not in same)
    assert same and different
    assert all(torch.equal(result[k], source[k]) for k in same)
    # only the segmentation outputs (one channel per class) differ
    assert all(result[k].shape[0] == 3 and source[k].shape[0] == 2 for k in different)
    assert f"{len(same)} of {len(result)} tensors loaded" in caplog.text
    assert "re-initialised" in caplog.text and different[0] in caplog.text
    with pytest.raises(ValueError, match="cannot be combined with --c"):
        run_training(NAME, "3d", "unet", 0, epochs=1, resume=True, pretrained_weights=source_file, **KW)


def test_pretrained_weights_of_another_architecture_are_refused(autosam_dirs, tmp_path, model_folder):  # noqa: F811
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    with pytest.raises(ValueError, match="no weight of this checkpoint"):
        run_training(NAME, "3d", "unet", 0, epochs=0, validate=False,
                     pretrained_weights=model_folder / "fold_0" / "checkpoint_final.pth", **KW)


# ------------------------------------------------------------------------------------ validation
def test_fold_validation_evaluates_its_own_cases(autosam_dirs, caplog):
    pre = make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    caplog.set_level(logging.INFO)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=1, step_size=1.0, **KW)
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert sorted(c["reference_file"].split("/")[-1] for c in summary["metric_per_case"]) == [
        "case_000.nii.gz", "case_001.nii.gz"]  # fold 0's validation cases; gt_segmentations has 4
    assert summary["references_without_prediction"] == [] and summary["checkpoint"] == "checkpoint_final.pth"
    assert "no prediction" not in caplog.text


def test_evaluate_cases_warns_about_what_is_really_missing(tmp_path, caplog):
    from autosam.evaluation.evaluate import evaluate_folder

    geometry, seg = _geometry((4, 5, 6)), _box_mask()
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "ref" / f"{name}.nii.gz", seg, geometry)
    for name in ("a", "x"):  # x: a stale file of another split, not asked for
        write_image(tmp_path / "pred" / f"{name}.nii.gz", seg, geometry)
    write_json(tmp_path / "dataset.json", DATASET_JSON)
    caplog.set_level(logging.INFO)
    summary = evaluate_folder(tmp_path / "ref", tmp_path / "pred", tmp_path / "dataset.json", cases=["a", "b"])
    assert len(summary["metric_per_case"]) == 1 and summary["references_without_prediction"] == ["b.nii.gz"]
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and "1 of the 2 case(s)" in warnings_[0].getMessage() and "b.nii.gz" in warnings_[0].getMessage()
    with pytest.raises(FileNotFoundError, match="e.nii.gz: reference not found"):
        evaluate_folder(tmp_path / "ref", tmp_path / "pred", tmp_path / "dataset.json", cases=["a", "e"])


def test_evaluate_folder_takes_nnunet_positional_folders(tmp_path, capsys):
    geometry, seg = _geometry((4, 5, 6)), _box_mask()
    write_image(tmp_path / "ref" / "a.nii.gz", seg, geometry)
    write_image(tmp_path / "pred" / "a.nii.gz", seg, geometry)
    write_json(tmp_path / "dataset.json", DATASET_JSON)
    assert evaluate.main([str(tmp_path / "ref"), str(tmp_path / "pred"), "-djfile", str(tmp_path / "dataset.json"),
                          "-pfile", "plans.json", "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["foreground_mean"]["Dice"] == 1.0
    assert evaluate.main(["-ref", str(tmp_path / "ref"), str(tmp_path / "pred"), "-djfile", str(tmp_path / "dataset.json"),
                          "-o", str(tmp_path / "s2.json")]) == 0  # one flag, one positional
    assert json.loads((tmp_path / "s2.json").read_text())["foreground_mean"]["Dice"] == 1.0
    with pytest.raises(SystemExit) as info:
        evaluate.main(["-djfile", str(tmp_path / "dataset.json")])
    assert info.value.code == 2 and "reference folder is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        evaluate.main(["a", "-ref", "r", "-pred", "p", "-djfile", "d.json"])
    assert info.value.code == 2 and "unexpected folder a" in capsys.readouterr().err


def test_find_best_takes_3d_fullres(tmp_path):
    from autosam.postprocessing.find_best import discover

    for config in ("3d", "2d"):
        summary = tmp_path / f"unet__autosamPlans__{config}" / "fold_0" / "validation" / "summary.json"
        write_json(summary, {})
    found = discover(tmp_path, None, ["3d_fullres"], "autosamPlans", [0])
    assert [(e.method, e.configuration) for e in found] == [("unet", "3d")]


def test_fast_prediction_path(model_folder, tmp_path, monkeypatch):  # noqa: F811
    """--fast: no mirroring and step 0.75, unless -step_size is given; the default step stays nnU-Net's 0.5."""
    from autosam.inference import sliding_window

    calls = []
    real = sliding_window.sliding_window_predict
    monkeypatch.setattr(sliding_window, "sliding_window_predict",
                        lambda *a, **kw: calls.append((kw.get("step_size"), kw.get("use_mirroring"))) or real(*a, **kw))
    _write_inputs(tmp_path / "in", 1)
    base = ["-i", str(tmp_path / "in"), "-d", "998", "-c", "3d", "-m", TinyMethod.name, "-f", "0", "-device", "cpu",
            "-npp", "1", "--disable_progress_bar"]
    runs = {"default": [], "fast": ["--fast"], "fast_step": ["--fast", "-step_size", "0.6"]}
    for name, extra in runs.items():
        calls.clear()
        assert predict.main(base + ["-o", str(tmp_path / name), *extra]) == 0
        args = json.loads((tmp_path / name / "predict_args.json").read_text())
        assert calls and {c[0] for c in calls} == {args["step_size"]}
        assert {bool(c[1]) for c in calls} == {args["use_mirroring"]}
        runs[name] = (args["step_size"], args["use_mirroring"])
    assert runs == {"default": (0.5, True), "fast": (0.75, False), "fast_step": (0.6, False)}


@pytest.mark.parametrize("native", [True, False])
def test_bf16_follows_fast_where_the_cpu_has_native_bf16(model_folder, tmp_path, monkeypatch, native):  # noqa: F811
    """--fast turns on CPU bf16 autocast where the CPU computes bf16 natively; --bf16 / --no-bf16
    decide explicitly; the network really runs under autocast exactly when predict_args.json says so."""
    from autosam.inference import sliding_window
    from autosam.utils import precision

    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: native)
    seen = []
    real = sliding_window.sliding_window_predict
    monkeypatch.setattr(sliding_window, "sliding_window_predict",
                        lambda *a, **kw: seen.append(torch.is_autocast_enabled("cpu")) or real(*a, **kw))
    _write_inputs(tmp_path / "in", 1)
    base = ["-i", str(tmp_path / "in"), "-d", "998", "-c", "3d", "-m", TinyMethod.name, "-f", "0", "-device", "cpu",
            "-npp", "1", "--disable_progress_bar"]
    runs = {"default": [], "fast": ["--fast"], "fast_fp32": ["--fast", "--no-bf16"], "bf16": ["--bf16"]}
    result = {}
    for name, extra in runs.items():
        seen.clear()
        assert predict.main(base + ["-o", str(tmp_path / name), *extra]) == 0
        recorded = json.loads((tmp_path / name / "predict_args.json").read_text())["cpu_bf16"]
        assert seen and set(seen) == {recorded}
        result[name] = recorded
    assert result == {"default": False, "fast": native, "fast_fp32": False, "bf16": True}
