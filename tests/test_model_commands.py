"""autosam_predict_from_modelfolder, autosam_export_model_to_zip and
autosam_install_pretrained_model_from_zip (tiny untrained models, no training)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.cli.predict import main as predict_main
from autosam.cli.predict_modelfolder import main as modelfolder_main
from model_helpers import MODEL, tiny_model_folder, write_images
from training_data import NAME


def _masks(folder):
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(folder.glob("*.nii.gz"))}


def test_predict_from_a_model_folder_outside_the_results(autosam_dirs, tmp_path, capsys):
    model = tiny_model_folder(autosam_dirs["results"])
    elsewhere = tmp_path / "somewhere" / MODEL
    shutil.copytree(model, elsewhere)
    write_images(tmp_path / "images", n=2)
    assert predict_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "ref"), "-d", NAME, "-c", "3d",
                         "-m", "unet", "-f", "0", "1", "--quiet"]) == 0
    shutil.rmtree(autosam_dirs["results"] / NAME)  # the model now exists only elsewhere
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "pred"), "-m", str(elsewhere),
                             "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_progress_bar"]) == 0
    ref, pred = _masks(tmp_path / "ref"), _masks(tmp_path / "pred")
    assert sorted(pred) == ["img_000.nii.gz", "img_001.nii.gz"] and sorted(ref) == sorted(pred)
    for name in ref:
        np.testing.assert_array_equal(pred[name], ref[name])
    capsys.readouterr()
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "p2"), "-m", str(elsewhere),
                             "-chk", "checkpoint_best.pth"]) == 2
    assert "no fold has checkpoint_best.pth; found: fold_0/checkpoint_final.pth" in capsys.readouterr().err
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "p2"), "-m", str(tmp_path / "nope")]) == 2
    assert "model folder does not exist" in capsys.readouterr().err
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "p2"), "-m", str(elsewhere),
                             "-f", "3"]) == 2
    assert "fold_3" in capsys.readouterr().err


# ------------------------------------------------------------------------------ model zips
import json  # noqa: E402
import stat  # noqa: E402
import zipfile  # noqa: E402

from autosam.cli.model_sharing import main_export, main_install  # noqa: E402


def _export(autosam_dirs, tmp_path, *extra):
    model = tiny_model_folder(autosam_dirs["results"])
    for fold in (0, 1):  # cross-validation predictions to share
        (model / f"fold_{fold}" / "validation").mkdir()
        (model / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
    out = tmp_path / "shared" / "model.zip"
    assert main_export(["-d", "990", "-c", "3d", "-m", "unet", "-o", str(out), *extra]) == 0
    return model, out


def test_zip_round_trip_into_a_fresh_results_folder_gives_the_same_masks(autosam_dirs, tmp_path, monkeypatch, capsys):
    model, out = _export(autosam_dirs, tmp_path, "-f", "0", "1", "-chk", "checkpoint_final.pth", "--exp_cv_preds")
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("autosam_model.json"))
    prefix = f"{NAME}/{MODEL}"
    assert {f"{prefix}/plans.json", f"{prefix}/dataset.json", f"{prefix}/fold_0/checkpoint_final.pth",
            f"{prefix}/fold_1/checkpoint_final.pth", f"{prefix}/fold_1/validation/summary.json"} <= names
    entry = manifest["models"][0]
    assert (entry["method"], entry["distribution"], entry["folds"]) == ("unet", "autosam", ["0", "1"])
    assert entry["version"]  # the plugin's version as recorded in the checkpoints
    write_images(tmp_path / "images", n=2)
    assert predict_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "original"), "-d", NAME, "-c", "3d",
                         "-m", "unet", "-f", "0", "1", "--quiet"]) == 0

    fresh = tmp_path / "fresh_results"
    monkeypatch.setenv("AUTOSAM_RESULTS", str(fresh))
    assert main_install([str(out)]) == 0
    installed = fresh / NAME / MODEL
    assert (installed / "fold_0" / "checkpoint_final.pth").read_bytes() == (model / "fold_0" / "checkpoint_final.pth").read_bytes()
    assert json.loads((installed / "installed_from.json").read_text())["version"] == entry["version"]
    assert predict_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "installed"), "-d", NAME, "-c", "3d",
                         "-m", "unet", "-f", "0", "1", "--quiet"]) == 0
    original, again = _masks(tmp_path / "original"), _masks(tmp_path / "installed")
    assert sorted(original) == sorted(again) == ["img_000.nii.gz", "img_001.nii.gz"]
    for name in original:
        np.testing.assert_array_equal(again[name], original[name])

    # never overwritten without --force; with it, swapped in whole
    (installed / "fold_0" / "marker.txt").write_text("local change")
    capsys.readouterr()
    assert main_install([str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (installed / "fold_0" / "marker.txt").is_file()
    assert main_install([str(out), "--force"]) == 0
    assert not (installed / "fold_0" / "marker.txt").exists()
    assert [p.name for p in (fresh / NAME).iterdir()] == [MODEL]  # no staging or replaced folder left behind


def test_export_errors_name_what_is_missing(autosam_dirs, tmp_path, capsys):
    tiny_model_folder(autosam_dirs["results"], folds=(0,))
    out = tmp_path / "m.zip"
    assert main_export(["-d", "990", "-m", "msam", "-o", str(out)]) == 2
    assert "trained models: unet__autosamPlans__3d" in capsys.readouterr().err
    assert main_export(["-d", "990", "-f", "0", "1", "-o", str(out)]) == 2
    assert "fold_1: no checkpoint_final.pth" in capsys.readouterr().err and not out.exists()
    assert main_export(["-d", "990", "-f", "0", "1", "--not_strict", "-o", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read("autosam_model.json"))["models"][0]["folds"] == ["0"]


def _hostile_zip(path, members, manifest=None, links=()):
    manifest = manifest or {"format": "autosam-model-zip", "format_version": 1, "dataset": NAME,
                            "models": [{"folder": MODEL, "method": "unet", "plugin": "unet", "distribution": "autosam",
                                        "version": "0.1.0"}]}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("autosam_model.json", json.dumps(manifest))
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


@pytest.mark.parametrize("member, problem", [
    ("/tmp/evil.txt", "absolute path"),
    (f"{NAME}/{MODEL}/../../../evil.txt", "'..'"),
    (f"{NAME}/{MODEL}/fold_0/evil.py", "not part of a model's layout"),
    (f"{NAME}/other__autosamPlans__3d/plans.json", "outside the model folders"),
    (f"{NAME}\\{MODEL}\\plans.json", "backslash"),
    ("elsewhere/", "a folder outside the model folders"),
])
def test_install_refuses_members_outside_the_layout(autosam_dirs, tmp_path, capsys, member, problem):
    valid = {f"{NAME}/{MODEL}/plans.json": "{}", f"{NAME}/{MODEL}/dataset.json": "{}",
             f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": "x"}
    z = _hostile_zip(tmp_path / "evil.zip", {**valid, member: "pwned"})
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "nothing was installed" in err
    assert list(autosam_dirs["results"].iterdir()) == []  # nothing written anywhere
    assert not (tmp_path / "evil.txt").exists()


def test_install_refuses_links_unknown_methods_and_too_little_disk(autosam_dirs, tmp_path, capsys, monkeypatch):
    valid = {f"{NAME}/{MODEL}/plans.json": "{}", f"{NAME}/{MODEL}/dataset.json": "{}",
             f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": "x"}
    z = _hostile_zip(tmp_path / "link.zip", valid, links=[(f"{NAME}/{MODEL}/fold_0/progress.png", "/etc/passwd")])
    assert main_install([str(z)]) == 2
    assert "symbolic link" in capsys.readouterr().err
    ghost = "ghost__autosamPlans__3d"
    manifest = {"format": "autosam-model-zip", "format_version": 1, "dataset": NAME,
                "models": [{"folder": ghost, "method": "ghost", "plugin": "ghost", "distribution": "ghost-seg",
                            "version": "2.3.1"}]}
    z = _hostile_zip(tmp_path / "ghost.zip", {f"{NAME}/{ghost}/plans.json": "{}", f"{NAME}/{ghost}/dataset.json": "{}",
                                              f"{NAME}/{ghost}/fold_0/checkpoint_final.pth": "x"}, manifest)
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err
    assert "'ghost-seg'" in err and "2.3.1" in err and "pip install 'ghost-seg==2.3.1'" in err
    assert list(autosam_dirs["results"].iterdir()) == []
    import shutil as _shutil
    from collections import namedtuple

    z = _hostile_zip(tmp_path / "big.zip", valid)
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as m:
        m.setattr(_shutil, "disk_usage", lambda path: usage(10, 10, 3))  # 3 bytes free
        assert main_install([str(z)]) == 2
    assert "GB free; nothing was installed" in capsys.readouterr().err
    assert list(autosam_dirs["results"].iterdir()) == []
    (tmp_path / "notzip.zip").write_text("hello")
    assert main_install([str(tmp_path / "notzip.zip")]) == 2
    assert "not a zip file" in capsys.readouterr().err


class _Planted:
    """Unpickling this runs code (creates a file): what a forged checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_install_refuses_a_forged_checkpoint_without_running_it(autosam_dirs, tmp_path, capsys):
    import torch

    marker = tmp_path / "code_ran"
    forged = tmp_path / "forged.pth"
    torch.save({"method": "unet", "network": {}, "payload": _Planted(marker)}, forged)
    valid = {f"{NAME}/{MODEL}/plans.json": "{}", f"{NAME}/{MODEL}/dataset.json": "{}"}
    z = _hostile_zip(tmp_path / "forged.zip", {**valid, f"{NAME}/{MODEL}/fold_0/checkpoint_final.pth": forged.read_bytes()})
    assert main_install([str(z)]) == 2
    err = capsys.readouterr().err
    assert "fold_0/checkpoint_final.pth" in err and "nothing was installed" in err
    assert not marker.exists()  # never unpickled
    assert not (autosam_dirs["results"] / NAME).exists()  # staging removed, nothing installed, no empty folder
