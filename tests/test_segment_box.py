"""Box-prompted zero-shot segmentation: library API, CLI, and LiteMedSAM on a real CT (slow)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autosam.cli.segment_box import main as segment_box_main
from autosam.io.image import ImageGeometry, read_image, write_image
from autosam.sam.backbones import build_backbone
from autosam.sam.box_segment import boxes_from_label_map, check_box, merge_probabilities, segment_volume_with_boxes
from shared_data import TOTALSEG

DATA = TOTALSEG


def _volume():
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 20, size=(6, 40, 50)).astype(np.float32)
    vol[1:4, 10:25, 10:30] += 300
    return vol


def test_segment_volume_with_boxes_shapes_and_box_slices():
    torch.manual_seed(0)
    vol = _volume()
    boxes = {3: (1, 10, 10, 3, 24, 29), 7: (2, 5, 30, 4, 35, 45)}
    calls = []
    lm, probs = segment_volume_with_boxes(vol, (3.0, 1.0, 1.0), boxes, build_backbone("tiny"), batch_size=2,
                                          progress=lambda d, t: calls.append((d, t)))
    assert lm.shape == vol.shape and lm.dtype == np.int16
    assert set(np.unique(lm)) <= {0, 3, 7}
    assert set(probs) == {3, 7}
    # probabilities only on the slices of each box (the fixed box: every slice of its range)
    lm, probs = segment_volume_with_boxes(vol, (3.0, 1.0, 1.0), boxes, build_backbone("tiny"), batch_size=2,
                                          progress=lambda d, t: calls.append((d, t)), mode="fixed", stats=(stats := {}))
    assert sorted(probs[3]) == [1, 2, 3] and sorted(probs[7]) == [2, 3, 4]
    assert all(p.shape == vol.shape[1:] and p.max() > 0 for p in probs[3].values())
    assert calls[-1] == (6, 6)  # 3 + 3 prompt-slices
    assert stats == {"encoded_slices": 4, "decoded_prompts": 6}  # slices 1..4 encoded once for both labels


def test_merge_probabilities_takes_most_probable_label():
    p = {1: np.array([0.9, 0.6, 0.2, 0.7]), 2: np.array([0.1, 0.8, 0.3, 0.7])}
    assert merge_probabilities(p, 0.5).tolist() == [1, 2, 0, 1]


def test_boxes_from_label_map_and_checks():
    seg = np.zeros((5, 10, 12), np.int16)
    seg[1:3, 2:5, 3:9] = 4
    assert boxes_from_label_map(seg) == {4: (1, 2, 3, 2, 4, 8)}
    assert boxes_from_label_map(seg, margin=2)[4] == (1, 0, 1, 2, 6, 10)
    with pytest.raises(ValueError, match="not present"):
        boxes_from_label_map(seg, [9])
    with pytest.raises(ValueError, match="x0=3, x1=12"):
        check_box((0, 0, 3, 1, 1, 12), seg.shape, 4)
    with pytest.raises(ValueError, match="6 numbers"):
        check_box((0, 0, 3), seg.shape)
    with pytest.raises(ValueError, match="3D"):
        segment_volume_with_boxes(seg, (1, 1, 1), {1: (0, 0, 0, 1, 1, 1)}, build_backbone("tiny3d"))


def test_cli_writes_label_map_in_input_geometry(tmp_path):
    vol = _volume()
    geom = ImageGeometry((3.0, 0.8, 0.7), (10.0, -5.0, 2.0), (1, 0, 0, 0, -1, 0, 0, 0, 1), vol.shape)
    write_image(tmp_path / "img.nii.gz", vol, geom)
    (tmp_path / "boxes.json").write_text(json.dumps({"2": [1, 10, 10, 3, 24, 29], "5": [0, 0, 0, 1, 39, 49]}))
    out = tmp_path / "out" / "seg.nii.gz"
    assert segment_box_main(["-i", str(tmp_path / "img.nii.gz"), "-o", str(out), "--boxes-json",
                             str(tmp_path / "boxes.json"), "--backbone", "tiny", "-q", "--save-probabilities"]) == 0
    seg, g = read_image(out)
    assert g.matches(geom) and set(np.unique(seg)) <= {0, 2, 5}
    with np.load(tmp_path / "out" / "seg_probabilities.npz") as npz:
        assert sorted(npz.files) == ["label_2", "label_5"]
    with pytest.raises(SystemExit, match="y1=40"):
        segment_box_main(["-i", str(tmp_path / "img.nii.gz"), "-o", str(out), "--box", "0", "0", "0", "1", "40", "3",
                          "--backbone", "tiny", "-q"])
    with pytest.raises(SystemExit, match="does not exist"):
        segment_box_main(["-i", str(tmp_path / "nope.nii.gz"), "-o", str(out), "--box", "0", "0", "0", "1", "1", "1"])


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "example_ct_sm.nii.gz").exists(), reason="shared example CT not available")
def test_litemedsam_segments_liver_and_spleen_on_real_ct():
    """LiteMedSAM with ground-truth boxes on 8 axial slices of a real CT (TotalSegmentator example)."""
    torch.set_num_threads(2)
    img, geom = read_image(DATA / "example_ct_sm.nii.gz")
    seg, _ = read_image(DATA / "example_seg.nii.gz")
    img, seg = img[12:20].astype(np.float32), seg[12:20]
    boxes = boxes_from_label_map(seg, [5, 1])  # 5 liver, 1 spleen
    lm, _ = segment_volume_with_boxes(img, geom.spacing, boxes, build_backbone("litemedsam"))
    for lab, floor in ((5, 0.85), (1, 0.8)):
        a, r = lm == lab, seg == lab
        assert 2 * (a & r).sum() / (a.sum() + r.sum()) >= floor
