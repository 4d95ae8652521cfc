"""autosam_predict_from_modelfolder, autosam_export_model_to_zip and
autosam_install_pretrained_model_from_zip (tiny untrained models, no training)."""
from __future__ import annotations

import shutil

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
    assert "no fold_N folder has checkpoint_best.pth" in capsys.readouterr().err
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "p2"), "-m", str(tmp_path / "nope")]) == 2
    assert "model folder does not exist" in capsys.readouterr().err
    assert modelfolder_main(["-i", str(tmp_path / "images"), "-o", str(tmp_path / "p2"), "-m", str(elsewhere),
                             "-f", "3"]) == 2
    assert "fold_3" in capsys.readouterr().err
