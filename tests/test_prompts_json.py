"""Prompts at prediction: the ``--prompts-json`` file and its checks, ``autosam_predict --prompts-json``
with a promptable method and with one that takes no prompts, and ``Predictor(...).predict_single_npy_array(prompts=)``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.inference.prompted import read_prompts_json
from autosam.prompts import Box2D, LabelPrompts, Point
from interactive_helpers import oracle_method  # noqa: F401  (fixture)

DJ = {"labels": {"background": 0, "liver": 1, "kidney": 2}}


def test_read_prompts_json_every_kind_names_values_and_the_boxes_form(tmp_path):
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps({
        "a": {"liver": {"box3d": [1, 2, 3, 4, 5, 6], "points": [[2, 3, 4, 1], [3, 3, 3, -1]]},
              "2": {"box2d": {"z": 5, "y0": 1, "x0": 2, "y1": 7, "x1": 8, "z_lo": 3, "z_hi": 9}}},
        "b": {"1": [[0, 0, 0, 1, 1, 1], [0, 5, 5, 1, 6, 6]]}}))
    got = read_prompts_json(f, ["a", "b"], DJ)
    assert got["a"][1] == LabelPrompts(boxes3d=[(1, 2, 3, 4, 5, 6)], points=[Point(2, 3, 4, True), Point(3, 3, 3, False)])
    assert got["a"][2] == LabelPrompts(box2d=Box2D(z=5, y0=1, x0=2, y1=7, x1=8, z_lo=3, z_hi=9))
    assert got["b"][1].boxes3d == [(0, 0, 0, 1, 1, 1), (0, 5, 5, 1, 6, 6)]


def test_read_prompts_json_reports_every_problem_with_file_case_and_label(tmp_path):
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps({
        "a": {"spleen": {"box3d": [1, 2, 3, 4, 5, 6]}, "liver": {"clicks": [[1, 2, 3, 1]]},
              "kidney": {"points": [[1, 2, 3, 2]], "box2d": {"z": 9, "y0": 1, "x0": 2, "y1": 7, "x1": 8, "z_lo": 3, "z_hi": 5}}},
        "c": {"1": {"box3d": [5, 0, 0, 4, 1, 1]}},
        "typo": {"1": [0, 0, 0, 1, 1, 1]}}))
    with pytest.raises(ValueError) as err:
        read_prompts_json(f, ["a", "b", "c"], DJ)
    msg = str(err.value)
    assert msg.startswith(str(f))
    for part in ("case 'b': no prompts", "case 'typo': not in the input folder", "label 'spleen': unknown label",
                 "label 'liver': unknown prompt kind(s) 'clicks'", "point [1, 2, 3, 2]: expected [z, y, x, 1]",
                 "needs 0 <= z_lo <= z <= z_hi", "case 'c', label '1': box3d [5, 0, 0, 4, 1, 1] needs 0 <= z0 <= z1"):
        assert part in msg, part
    f.write_text("[1, 2")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        read_prompts_json(f, ["a"], DJ)
    with pytest.raises(FileNotFoundError, match="prompts file not found"):
        read_prompts_json(tmp_path / "missing.json", ["a"], DJ)


@pytest.fixture
def raw_images(tmp_path):
    from model_helpers import write_images

    return write_images(tmp_path / "in", n=2)


def _models(results):
    from interactive_helpers import model_folder
    from model_helpers import tiny_model_folder

    tiny_model_folder(results, folds=(0,))
    return model_folder(results, "oracle")


def test_predict_with_prompts_json(autosam_dirs, oracle_method, raw_images, tmp_path, capsys):
    """``oracle`` paints its prompts: a 3D box and a positive click given on the input grid come out
    on the input grid where they were given (through the crop and the resampling)."""
    from autosam.cli.predict import main

    _models(autosam_dirs["results"])
    prompts = {"img_000": {"ball": {"box3d": [8, 10, 6, 12, 20, 16]}, "bar": {"points": [[15, 25, 20, 1]]}},
               "img_001": {"1": {"box2d": {"z": 10, "y0": 10, "x0": 6, "y1": 20, "x1": 16, "z_lo": 8, "z_hi": 12}}}}
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert main(["-i", str(raw_images[0].parent), "-o", str(out), "-d", "990", "-c", "3d", "-m", "oracle", "-f", "0",
                 "--prompts-json", str(f), "--quiet", "-device", "cpu"]) == 0
    assert "with the prompts of --prompts-json" in capsys.readouterr().out
    for case in ("img_000", "img_001"):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        box = seg[8:13, 10:21, 6:17]
        assert (box == 1).mean() > 0.95 and (seg == 1).sum() < 1.3 * box.size  # the box, on the input grid
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "img_000.nii.gz")))
    assert seg[15, 25, 20] == 2
    record = json.loads((out / "predict_args.json").read_text())["prompts"]
    assert record["file"] == str(f) and record["prompts"]["img_000"]["2"] == {"points": [[15, 25, 20, 1]]}

    # a method that takes no prompts: one line naming the file, before anything is written
    assert main(["-i", str(raw_images[0].parent), "-o", str(tmp_path / "u"), "-d", "990", "-c", "3d", "-m", "unet",
                 "-f", "0", "--prompts-json", str(f), "--quiet", "-device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert f"{f}: method 'unet' takes no prompts" in err and "oracle" in err and not (tmp_path / "u").exists()
    # a click outside the image
    prompts["img_001"]["1"] = {"points": [[10, 99, 5, 1]]}
    f.write_text(json.dumps(prompts))
    assert main(["-i", str(raw_images[0].parent), "-o", str(tmp_path / "v"), "-d", "990", "-c", "3d", "-m", "oracle",
                 "-f", "0", "--prompts-json", str(f), "--quiet", "-device", "cpu"]) != 0
    assert "case 'img_001', label 1: click (10, 99, 5) lies outside the image" in capsys.readouterr().err


def test_predictor_api_with_prompts(autosam_dirs, oracle_method, raw_images):
    from autosam.inference.predictor import Predictor
    from autosam.io.image import read_image

    folder = _models(autosam_dirs["results"])
    image, geometry = read_image(raw_images[0])
    predictor = Predictor(use_mirroring=False, device="cpu").initialize_from_trained_model_folder(folder, [0])
    prompts = {1: LabelPrompts(boxes3d=[(8, 10, 6, 12, 20, 16)], points=[Point(10, 15, 11, positive=False)])}
    seg = predictor.predict_single_npy_array(image[None], {"spacing": geometry.spacing}, prompts=prompts)
    assert seg.shape == image.shape and (seg[8:13, 10:21, 6:17] == 1).mean() > 0.8 and seg[10, 15, 11] == 0
    with pytest.raises(ValueError, match=r"label\(s\) \[7\], which the model does not segment"):
        predictor.predict_single_npy_array(image[None], {"spacing": geometry.spacing}, prompts={7: prompts[1]})
    unet = Predictor(device="cpu").initialize_from_trained_model_folder(folder.parent / "unet__autosamPlans__3d", [0])
    with pytest.raises(ValueError, match="method 'unet' takes no prompts"):
        unet.predict_single_npy_array(image[None], {"spacing": geometry.spacing}, prompts=prompts)
