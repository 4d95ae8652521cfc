"""Box prompts at prediction (``autosam_predict --boxes-json``): the file format and its checks,
the mapping onto the preprocessed grid, and the end-to-end manual-box mode of ``medlsam``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.inference.box_prompts import check_in_image, read_boxes_json, to_preprocessed_grid
from training_data import untrained_model

DJ = {"labels": {"background": 0, "liver": 1, "kidney": 2}}


def test_read_boxes_json_accepts_names_values_and_lists(tmp_path):
    f = tmp_path / "boxes.json"
    f.write_text(json.dumps({"a": {"liver": [1, 2, 3, 4, 5, 6], "2": [[0, 0, 0, 1, 1, 1], [0, 5, 5, 1, 6, 6]]},
                             "b": {"1": [0, 0, 0, 0, 0, 0]}}))
    boxes = read_boxes_json(f, ["a", "b"], DJ)
    assert boxes == {"a": {1: [[1, 2, 3, 4, 5, 6]], 2: [[0, 0, 0, 1, 1, 1], [0, 5, 5, 1, 6, 6]]}, "b": {1: [[0, 0, 0, 0, 0, 0]]}}


def test_read_boxes_json_reports_every_problem_with_file_case_and_label(tmp_path):
    f = tmp_path / "boxes.json"
    f.write_text(json.dumps({"a": {"spleen": [1, 2, 3, 4, 5, 6], "liver": [5, 0, 0, 4, 1, 1], "kidney": [1, 2, 3]},
                             "typo": {"1": [0, 0, 0, 1, 1, 1]}}))
    with pytest.raises(ValueError) as err:
        read_boxes_json(f, ["a", "b"], DJ)
    msg = str(err.value)
    assert msg.startswith(str(f))
    for part in ("case 'b': no boxes", "case 'typo': not in the input folder", "case 'a', label 'spleen': unknown label",
                 "liver, kidney", "label 'liver': box [5, 0, 0, 4, 1, 1] needs 0 <= z0 <= z1",
                 "label 'kidney': expected [z0, y0, x0, z1, y1, x1]"):
        assert part in msg, part
    f.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        read_boxes_json(f, ["a"], DJ)
    with pytest.raises(FileNotFoundError, match="boxes file not found"):
        read_boxes_json(tmp_path / "missing.json", ["a"], DJ)
    with pytest.raises(ValueError, match=r"case 'a', label 1: box \[0, 0, 0, 4, 5, 9\] reaches outside the image .*\(5, 6, 9\)"):
        check_in_image(f, "a", {1: [[0, 0, 0, 4, 5, 9]]}, (5, 6, 9))
    check_in_image(f, "a", {1: [[0, 0, 0, 4, 5, 8]]}, (5, 6, 9))


def test_boxes_follow_crop_and_resampling_and_keep_every_touched_voxel():
    props = {"bbox_used_for_cropping": [[2, 12], [0, 20], [5, 25]], "shape_after_cropping_and_before_resampling": [10, 20, 20]}
    # z: halved (10 -> 5), y: unchanged, x: doubled (20 -> 40)
    out = to_preprocessed_grid({1: [[3, 0, 5, 4, 19, 5]], 2: [[0, 0, 0, 30, 30, 30]]}, props, (5, 20, 40))
    # z 3..4 -> cropped 1..2 -> voxels [1, 3) * 0.5 = [0.5, 1.5) -> 0..1; x 5 -> 0 -> [0, 2) -> 0..1
    assert out[1][0].tolist() == [0, 0, 0, 1, 19, 1]
    assert out[2][0].tolist() == [0, 0, 0, 4, 19, 39]  # clipped to the crop


def test_boxes_match_the_preprocessed_label_on_real_geometry(autosam_dirs):
    """On the example dataset (cropping, anisotropic resampling), the label's box in the input
    image maps onto a box that holds the preprocessed label's box, at most one voxel larger."""
    from autosam.data.example import make_example_dataset
    from autosam.experiment_planning.plans import Plans
    from autosam.pipeline import plan_and_preprocess
    from autosam.preprocessing.preprocessor import preprocess_case

    folder = make_example_dataset(autosam_dirs["raw"], 993, num_cases=2, kind="organs", seed=3)
    plan_and_preprocess(993, num_processes=1, configurations=("3d",))
    plans = Plans.load(autosam_dirs["preprocessed"] / folder.name / "autosamPlans.json")
    image = folder / "imagesTr" / "case_000_0000.nii.gz"
    label = folder / "labelsTr" / "case_000.nii.gz"
    seg_in = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    data, seg, props = preprocess_case([image], plans, "3d", label_path=label)
    assert list(data.shape[1:]) != list(seg_in.shape)  # the test needs real resampling
    for k in (1, 2, 3, 4):
        idx = np.argwhere(seg_in == k)
        box = [*idx.min(0).tolist(), *idx.max(0).tolist()]
        mapped = to_preprocessed_grid({k: [box]}, props, data.shape[1:])[k][0]
        pidx = np.argwhere(seg[0] == k)
        truth = np.concatenate([pidx.min(0), pidx.max(0)])
        assert (mapped[:3] <= truth[:3]).all() and (mapped[3:] >= truth[3:]).all(), (k, mapped, truth)
        assert np.abs(mapped - truth).max() <= 1, (k, mapped, truth)


def test_predict_with_manual_boxes_segments_only_inside_them(autosam_dirs, tmp_path, capsys):
    from autosam.cli.predict import main as predict_main
    from autosam.data.example import make_example_dataset
    from autosam.experiment_planning.plans import Plans
    from autosam.pipeline import plan_and_preprocess

    folder = make_example_dataset(autosam_dirs["raw"], 994, num_cases=2, kind="organs", seed=1)
    plan_and_preprocess(994, num_processes=1, configurations=("3d",))
    plans = Plans.load(autosam_dirs["preprocessed"] / folder.name / "autosamPlans.json")
    results = autosam_dirs["results"] / folder.name
    untrained_model(plans, results / "medlsam__autosamPlans__3d", "medlsam", {"backbone": "tiny"})
    untrained_model(plans, results / "unet__autosamPlans__3d", "unet")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(folder / "imagesTr" / "case_001_0000.nii.gz", images / "ct_0000.nii.gz")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "case_001.nii.gz")))
    idx = np.argwhere(seg == 1)
    box = [*idx.min(0).tolist(), *idx.max(0).tolist()]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"ct": {"liver": box}}))
    out = tmp_path / "pred"
    common = ["-i", str(images), "-d", "994", "-c", "3d", "-f", "all", "--device", "cpu", "--quiet",
              "--boxes-json", str(boxes)]
    assert predict_main(["-o", str(out), "-m", "medlsam", *common]) == 0
    assert "manual boxes of --boxes-json" in capsys.readouterr().out
    pred_img = sitk.ReadImage(str(out / "ct.nii.gz"))
    ref = sitk.ReadImage(str(images / "ct_0000.nii.gz"))
    assert pred_img.GetSize() == ref.GetSize() and np.allclose(pred_img.GetOrigin(), ref.GetOrigin())
    pred = sitk.GetArrayFromImage(pred_img)
    assert set(np.unique(pred)) <= {0, 1}  # only the prompted label
    z = np.flatnonzero(pred.reshape(len(pred), -1).any(1))
    assert len(z) > 0  # the untrained tiny SAM marks part of the box
    assert z.min() >= box[0] - 1 and z.max() <= box[3] + 1  # nothing outside its slices (1 voxel resampling slack)
    args = json.loads((out / "predict_args.json").read_text())
    assert "manual boxes" in args["box_prompts"]["mode"] and args["box_prompts"]["boxes"] == {"ct": {"1": [box]}}
    # a method without box prompts, and a box outside the image: clear errors, nothing written
    bad_out = tmp_path / "bad"
    assert predict_main(["-o", str(bad_out), "-m", "unet", *common]) == 2
    err = capsys.readouterr().err
    assert "method 'unet' takes no box prompts" in err and "medlsam" in err
    boxes.write_text(json.dumps({"ct": {"liver": [0, 0, 0, 999, 1, 1]}}))
    assert predict_main(["-o", str(bad_out), "-m", "medlsam", *common]) == 2
    assert f"{boxes}: case 'ct', label 1: box [0, 0, 0, 999, 1, 1] reaches outside the image" in capsys.readouterr().err
    assert not bad_out.exists()


@pytest.mark.parametrize("text, message", [
    ('{"a": {"1": [0, 0, 0, 1, 1, 1' + "0" * 400 + ']}}', "coordinate 1000.*is out of range"),  # was an OverflowError
    ('{"a": {"1": [0, 0, 0, 1, 1, 2.5]}}', "must be integers .*got 2.5"),
    ('{"a": {"1": [0, 0, 0, 1, 1, Infinity]}}', "must be integers .*got inf"),
    ('{"a": {"1": [0, 0, 0, 1, 1, NaN]}}', "must be integers .*got nan"),
    ("[" * 100000 + "]" * 100000, "not a readable JSON file .nested too deeply"),  # was a RecursionError
])
def test_read_boxes_json_refuses_hostile_numbers_and_nesting_naming_the_file(tmp_path, text, message):
    f = tmp_path / "boxes.json"
    f.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_boxes_json(f, ["a"], DJ)
    assert str(err.value).startswith(str(f)) and len(str(err.value)) < 400
