"""The Python prediction API (Predictor): in-memory arrays give exactly the masks of the file path,
and preprocessing accepts arrays."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.experiment_planning.plans import Plans
from autosam.inference.predictor import Predictor, folds_with_checkpoint, predict_folder
from autosam.io.image import read_case
from autosam.preprocessing.preprocessor import preprocess_arrays, preprocess_case
from model_helpers import tiny_model_folder, write_images
from training_data import NAME


@pytest.fixture
def model(autosam_dirs):
    return tiny_model_folder(autosam_dirs["results"])


def test_preprocessing_an_array_equals_preprocessing_its_file(model, tmp_path):
    plans = Plans.load(model / "plans.json")
    path = write_images(tmp_path / "images", n=1)[0]
    data_f, _, props_f = preprocess_case([path], plans, "3d")
    image, geometry = read_case([path])
    before = image.copy()
    data_a, _, props_a = preprocess_arrays(image, {"spacing": list(geometry.spacing), "origin": list(geometry.origin),
                                                   "direction": list(geometry.direction)}, plans, "3d")
    np.testing.assert_array_equal(image, before)  # the caller's array is left alone
    np.testing.assert_array_equal(data_a, data_f)
    assert props_a["bbox_used_for_cropping"] == props_f["bbox_used_for_cropping"] != [[0, s] for s in image.shape[1:]]
    assert props_a["geometry"] == props_f["geometry"]
    with pytest.raises(ValueError, match="spacing"):
        preprocess_arrays(image, {}, plans, "3d")
    with pytest.raises(ValueError, match="C x Z x Y x X"):
        preprocess_arrays(image[0], {"spacing": [1, 1, 1]}, plans, "3d")
    with pytest.raises(ValueError, match="2 channel"):
        preprocess_arrays(np.concatenate([image, image]), {"spacing": [1, 1, 1]}, plans, "3d")


def test_arrays_give_exactly_the_masks_of_the_file_path(model, tmp_path):
    paths = write_images(tmp_path / "images", n=2)
    out = tmp_path / "pred"
    predict_folder(tmp_path / "images", out, NAME, "3d", "unet", [0, 1], use_mirroring=True, num_processes=2)
    predictor = Predictor(use_mirroring=True).initialize_from_trained_model_folder(model)
    assert [f.fold for f in predictor.model.folds] == [0, 1]  # default: every fold with checkpoint_final.pth
    images, props = [], []
    for p in paths:
        img = sitk.ReadImage(str(p))
        images.append(sitk.GetArrayFromImage(img)[None])  # C x Z x Y x X as stored (float32)
        props.append({"spacing": list(img.GetSpacing()[::-1])})
    single = predictor.predict_single_npy_array(images[0], props[0])
    listed = predictor.predict_from_list_of_npy_arrays(images, props)
    for p, seg, from_list in zip(paths, [single, listed[1]], listed):
        from_file = sitk.GetArrayFromImage(sitk.ReadImage(str(out / p.name.replace("_0000", ""))))
        assert len(np.unique(from_file)) > 1  # a mask worth comparing
        np.testing.assert_array_equal(seg, from_file)
        np.testing.assert_array_equal(from_list, from_file)
    seg, probs = predictor.predict_single_npy_array(images[0], props[0], save_or_return_probabilities=True)
    np.testing.assert_array_equal(seg, single)
    assert probs.shape == (3, *images[0].shape[1:])
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # writing a file: the origin given in the properties is kept
    written = predictor.predict_single_npy_array(images[1], {**props[1], "origin": [4.0, -3.0, 7.5]}, tmp_path / "w" / "x")
    assert written.name == "x.nii.gz"
    img = sitk.ReadImage(str(written))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), listed[1])
    assert img.GetOrigin() == (4.0, -3.0, 7.5)


def test_checkpoint_names_and_fold_discovery(model):
    assert folds_with_checkpoint(model, "checkpoint_final.pth") == folds_with_checkpoint(model) == [0, 1]
    with pytest.raises(FileNotFoundError, match="no fold has checkpoint_best.pth"):
        folds_with_checkpoint(model, "best")
    with pytest.raises(ValueError, match="step_size"):
        Predictor(step_size=1.5)
    with pytest.raises(FileNotFoundError, match="checkpoint_best.pth"):
        Predictor().initialize_from_trained_model_folder(model, checkpoint_name="checkpoint_best.pth")
    with pytest.raises(RuntimeError, match="initialize_from_trained_model_folder"):
        Predictor().predict_single_npy_array(np.zeros((1, 4, 4, 4)), {"spacing": [1, 1, 1]})
