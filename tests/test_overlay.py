"""autosam_plot_overlay_pngs: the slice with the most foreground, colours over the image, and the
prediction next to its reference."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from autosam.cli.overlay import main
from autosam.io.image import write_image
from autosam.utils.overlay import LABEL_COLOURS, overlay_rgb, select_slice
from raw_dataset_builder import geometry, write_raw_dataset
from training_data import make_tiny_preprocessed


def test_slice_choice_weighs_each_label_equally():
    seg = np.zeros((6, 10, 10), np.uint8)
    seg[1, :, :] = 1          # a big label 1 fills slice 1 ...
    seg[2, :5, :] = 1
    seg[4, :, :6] = 1         # ... but slice 4, with less of label 1,
    seg[4, 9, 9] = 2          # holds all of a one-voxel label 2
    assert select_slice(seg) == 4
    assert select_slice(np.zeros((7, 3, 3), np.uint8)) == 3  # no foreground: the middle


def test_labels_are_blended_in_their_colours():
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    seg = np.zeros((4, 4), np.uint8)
    seg[0, 0], seg[3, 3] = 1, 3
    rgb = overlay_rgb(image, seg, alpha=1.0)
    np.testing.assert_allclose(rgb[0, 0], LABEL_COLOURS[0])
    np.testing.assert_allclose(rgb[3, 3], LABEL_COLOURS[2])
    assert np.allclose(rgb[1, 1], rgb[1, 1, 0])  # unlabelled: grey
    with pytest.raises(ValueError, match="differ"):
        overlay_rgb(image, seg[:3])


def _dataset(raw):
    rng = np.random.default_rng(0)
    cases = {}
    for i in range(2):
        label = np.zeros((8, 16, 16), np.uint8)
        label[2 + i, 4:12, 4:12] = 1
        cases[f"c{i}"] = ([rng.normal(size=label.shape).astype(np.float32) + 3 * label], label)
    return write_raw_dataset(raw, "Dataset992_Overlay", cases, labels={"background": 0, "a": 1})


def test_raw_preprocessed_and_prediction_overlays(autosam_dirs, tmp_path, capsys):
    folder = _dataset(autosam_dirs["raw"])
    assert main(["-d", "992", "--use_raw", "-o", str(tmp_path / "raw"), "--quiet"]) == 0
    png = mpimg.imread(tmp_path / "raw" / "c1.png")
    red = (png[..., 0] > 0.6) & (png[..., 1] < 0.4) & (png[..., 2] < 0.4)
    assert red.sum() > 100  # label 1 is drawn (its slice was chosen)

    pred = tmp_path / "pred"
    seg = np.zeros((8, 16, 16), np.uint8)
    seg[3, 4:12, 4:8] = 1
    write_image(pred / "c1.nii.gz", seg, geometry(seg.shape))
    write_image(pred / "unseen.nii.gz", seg, geometry(seg.shape))
    (folder / "imagesTs").mkdir()
    write_image(folder / "imagesTs" / "unseen_0000.nii.gz", seg.astype(np.float32), geometry(seg.shape))
    assert main(["-d", "992", "--pred", str(pred), "--quiet"]) == 0
    side_by_side = mpimg.imread(pred / "overlays" / "c1.png")
    alone = mpimg.imread(pred / "overlays" / "unseen.png")
    assert side_by_side.shape[1] > 1.6 * alone.shape[1]  # two panels against one
    assert "2 overlay(s) written to" in capsys.readouterr().out

    make_tiny_preprocessed(autosam_dirs["preprocessed"], num_cases=2)
    assert main(["-d", "990", "-c", "3d_fullres", "--quiet", "-np", "2"]) == 0
    out = autosam_dirs["results"] / "Dataset990_Tiny" / "overlays" / "3d"
    assert sorted(p.name for p in out.iterdir()) == ["case_000.png", "case_001.png"]


def test_overlay_errors(autosam_dirs, tmp_path, capsys):
    _dataset(autosam_dirs["raw"])
    assert main(["-d", "992"]) == 2
    assert "autosamPlans.json: no plans; preprocess the dataset first, or use --use_raw" in capsys.readouterr().err
    assert main(["-d", "992", "--use_raw", "-channel_idx", "1"]) == 2
    assert "the dataset has 1 channel(s)" in capsys.readouterr().err
    pred = tmp_path / "p"
    write_image(pred / "ghost.nii.gz", np.zeros((8, 16, 16), np.uint8), geometry((8, 16, 16)))
    assert main(["-d", "992", "--pred", str(pred)]) == 2
    assert "no image ghost_0000.nii.gz" in capsys.readouterr().err
