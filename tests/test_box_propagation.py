"""Box prompts followed through a volume (issue 27 §2) and bounded box prompts (issue 26 items 2
and 13): the LiteMedSAM-style walk from the middle slice, every slice predicted, stopping where the
mask vanishes; lazy single encoding; batched decoding; one running maximum; the box limit; and
``autosam_segment_box``'s box checks before any work starts."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

import autosam.sam.box_segment as box_segment
from autosam.cli.segment_box import main as segment_box_main
from autosam.io.image import ImageGeometry, write_image
from autosam.sam.box_propagation import BoxPrompt, RunningMaximum, propagate_boxes
from autosam.sam.box_segment import boxes_from_label_map, segment_volume_with_boxes


class OracleFrame:
    """A stand-in for :class:`SliceFrame` whose "SAM" segments the true structure inside the prompt
    box (voxel value = slice index, so an embedding knows its slice). Records every encoder and
    decoder call."""

    def __init__(self, truth: np.ndarray, *args, **kwargs):
        self.truth = truth
        self.encoded: list[int] = []
        self.decoded: list[tuple[int, list[tuple[float, ...]]]] = []
        self.h, self.w, self.size = truth.shape[1], truth.shape[2], max(truth.shape[1:])

    def margin_voxels(self, margin_px=5.0):
        return 1.0, 1.0

    def encode(self, slices, batch_size=8):
        zs = [int(round(float(s[0, 0]))) for s in slices]
        self.encoded += zs
        return torch.tensor(zs, dtype=torch.float32).view(-1, 1)

    def rects(self, boxes):
        return [tuple(float(v) for v in b) for b in boxes]

    def decode(self, embedding, rects, mask_decoder=None):
        z = int(embedding.item())
        self.decoded.append((z, list(rects)))
        out = []
        yy, xx = np.mgrid[: self.truth.shape[1], : self.truth.shape[2]]
        for y0, x0, y1, x1 in rects:
            inside = (yy >= np.floor(y0)) & (yy <= np.ceil(y1)) & (xx >= np.floor(x0)) & (xx <= np.ceil(x1))
            out.append(np.where(self.truth[z] & inside, 10.0, -10.0))
        return torch.tensor(np.stack(out), dtype=torch.float32)


def _ball(shape=(15, 32, 32), centre=(7, 16, 15), radius=6.0):
    zz, yy, xx = np.indices(shape)
    return ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius ** 2


def _volume_of_slice_indices(shape):
    return np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()


def _run(truth, prompts, mode, **kw):
    frame = OracleFrame(truth)
    merged = RunningMaximum(truth.shape)
    stats = {}
    propagate_boxes(frame, _volume_of_slice_indices(truth.shape), prompts, merged, mode=mode, stats=stats, **kw)
    return frame, merged.label_map(), stats


def test_propagation_walks_from_the_middle_slice_with_the_previous_mask_box_and_predicts_every_slice():
    truth = _ball()
    box = boxes_from_label_map(truth.astype(np.int16))[1]
    z0, z1 = box[0], box[3]
    frame, lm, stats = _run(truth, [BoxPrompt.from_box3d(1, box)], "propagate")
    order = [z for z, _ in frame.decoded]
    mid = (z0 + z1) // 2
    assert order == [mid, *range(mid + 1, z1 + 1), *range(mid - 1, z0 - 1, -1)]  # every slice, first and last too
    assert np.array_equal(lm == 1, truth)
    rects = dict(frame.decoded)
    assert rects[mid] == [tuple(float(v) for v in box[1:3] + box[4:6])]  # the 3D box on the middle slice
    for z, prev in ((z1, z1 - 1), (z0, z0 + 1)):  # the end slices: the previous slice's mask box + 1 voxel margin
        ys, xs = np.nonzero(truth[prev])
        expect = (max(box[1], ys.min() - 1), max(box[2], xs.min() - 1), min(box[4], ys.max() + 1), min(box[5], xs.max() + 1))
        assert rects[z] == [tuple(float(v) for v in expect)]
        full = (box[4] - box[1]) * (box[5] - box[2])
        assert (expect[2] - expect[0]) * (expect[3] - expect[1]) < full / 2  # far tighter than the 3D box
    assert stats == {"encoded_slices": z1 - z0 + 1, "decoded_prompts": z1 - z0 + 1}


def test_fixed_mode_prompts_every_slice_with_the_box():
    truth = _ball()
    box = boxes_from_label_map(truth.astype(np.int16))[1]
    frame, lm, _ = _run(truth, [BoxPrompt.from_box3d(1, box)], "fixed")
    assert [z for z, _ in frame.decoded] == list(range(box[0], box[3] + 1))
    assert all(r == [tuple(float(v) for v in box[1:3] + box[4:6])] for _, r in frame.decoded)


def test_propagation_stops_where_the_mask_vanishes():
    truth = np.zeros((14, 20, 20), bool)
    truth[4:9, 5:12, 5:12] = True  # the structure: slices 4..8
    truth[11:13, 5:12, 5:12] = True  # a separate blob beyond a gap, inside the same box
    box = (4, 5, 5, 12, 11, 11)  # middle slice 8
    frame, lm, _ = _run(truth, [BoxPrompt.from_box3d(1, box)], "propagate")
    assert sorted(z for z, _ in frame.decoded) == [4, 5, 6, 7, 8, 9]  # 9 is empty: the upward walk stops there
    assert not lm[10:].any() and np.array_equal(lm[4:9] == 1, truth[4:9])
    assert 10 not in frame.encoded and 11 not in frame.encoded  # nothing encoded for a stopped walk


def test_challenge_2d_box_starts_on_its_slice_and_is_not_clipped_to_its_rectangle():
    from autosam.prompts import box2d_from_mask

    truth = np.zeros((9, 24, 24), bool)
    for z in range(1, 8):  # a structure drifting in x: the 2D box of the middle slice misses the ends
        truth[z, 8:14, 3 + z:9 + z] = True
    b2 = box2d_from_mask(truth)
    frame, lm, _ = _run(truth, [BoxPrompt.from_box2d(1, b2)], "propagate")
    assert frame.decoded[0][0] == b2.z
    assert np.array_equal(lm == 1, truth)


def test_each_slice_is_encoded_once_for_all_boxes_and_prompts_are_decoded_in_small_batches():
    truth = np.zeros((10, 16, 16), bool)
    truth[1:9, 3:12, 3:12] = True
    prompts = [BoxPrompt.from_box3d(1, (1, 3, 3, 8, 11, 11)), BoxPrompt.from_box3d(2, (3, 3, 3, 6, 11, 11))]
    prompts += [BoxPrompt.from_box3d(3 + i, (5, 3, 3, 5, 11, 11)) for i in range(40)]
    frame, _, stats = _run(truth, prompts, "propagate", decode_batch=16, batch_size=3)
    assert sorted(frame.encoded) == list(range(1, 9))  # slices 1..8, each once, though walks cross
    assert max(len(r) for _, r in frame.decoded) <= 16
    assert stats["decoded_prompts"] == 8 + 4 + 40


def test_many_boxes_merge_with_one_running_maximum(monkeypatch):
    """Issue 26 item 2: 200 labels used to cost a full-volume float32 map each (here 26 MB); the
    running maximum keeps two volume-sized arrays whatever the number of boxes (the rest of the
    peak is the stand-in decoder's batch of 16 float64 slices)."""
    shape = (8, 64, 64)
    truth = np.zeros(shape, bool)
    truth[:, 10:50, 10:50] = True
    monkeypatch.setattr(box_segment, "SliceFrame", lambda backbone, shape_yx, spacing, window: OracleFrame(truth))
    backbone = type("B", (), {"dims": 2, "name": "fake"})()
    boxes = {lab: (lab % 8, 10, 10, lab % 8, 49, 49) for lab in range(1, 201)}
    tracemalloc.start()
    lm, probs = segment_volume_with_boxes(_volume_of_slice_indices(shape), (1, 1, 1), boxes, backbone, window=None,
                                          keep_probabilities=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    volume_bytes = truth.size * 4
    assert peak < 40 * volume_bytes, f"peak {peak / 1e6:.1f} MB for 200 boxes of a {volume_bytes / 1e6:.2f} MB volume"
    assert probs is None and set(np.unique(lm)) == set(range(0, 9))  # ties: the first label of each slice


def test_box_limit_is_enforced_with_a_way_to_raise_it():
    backbone = type("B", (), {"dims": 2, "name": "fake"})()
    boxes = {1: [(0, 0, 0, 0, 1, 1)] * 300}
    with pytest.raises(ValueError, match="300 box prompts exceed the limit of 256.*--max-boxes 300"):
        segment_volume_with_boxes(np.zeros((2, 4, 4), np.float32), (1, 1, 1), boxes, backbone)


# ----------------------------------------------------------------------------- the CLI's box checks
@pytest.fixture()
def image(tmp_path, monkeypatch):
    vol = np.zeros((6, 20, 30), np.float32)
    write_image(tmp_path / "img.nii.gz", vol, ImageGeometry((3.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), vol.shape))

    def no_work(*a, **k):
        raise AssertionError("the backbone was built: the boxes were not checked before the work started")

    monkeypatch.setattr("autosam.sam.backbones.build_backbone", no_work)
    return tmp_path


def _cli(tmp_path, text, *extra):
    f = tmp_path / "boxes.json"
    f.write_text(text)
    return segment_box_main(["-i", str(tmp_path / "img.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--boxes-json", str(f),
                             "-q", *extra])


@pytest.mark.parametrize("text, message", [
    ('{"1": [0, 0, 0, 2.5, 5, 5]}', "must be integers .*got 2.5"),  # was rounded silently
    ('{"1": [0, 0, 0, 2, 5, Infinity]}', "must be integers .*got inf"),  # overflowed after the whole run
    ('{"1": [0, 0, 0, 2, 5, 1' + "0" * 400 + ']}', "out of range"),  # OverflowError traceback
    ('{"40000": [0, 0, 0, 2, 5, 5]}', r"label '40000': label values must be integers in 1\.\.32767"),
    ('{"1": [0, 0, 0, 2, 5, 30]}', "x0=0, x1=30 must satisfy"),
    ('{"1": [0, 0, 0, 2, 5, true]}', r"expected \[z0, y0, x0, z1, y1, x1\]"),
    ("[" * 100000 + "]" * 100000, "not a readable JSON file"),  # RecursionError, no file named
    ("{not json", "not a readable JSON file"),
])
def test_cli_refuses_bad_boxes_before_any_work_naming_the_file(image, text, message):
    with pytest.raises(SystemExit) as err:
        _cli(image, text)
    assert str(image / "boxes.json") in str(err.value)
    assert pytest.importorskip("re").search(message, str(err.value)), str(err.value)


def test_cli_refuses_too_many_boxes_and_says_how(image):
    text = json.dumps({str(i): [0, 0, 0, 0, 1, 1] for i in range(1, 301)})
    with pytest.raises(SystemExit, match="300 boxes exceed the limit of 256.*pass --max-boxes 300"):
        _cli(image, text)
    with pytest.raises(SystemExit, match="out of range|must be integers"):
        segment_box_main(["-i", str(image / "img.nii.gz"), "-o", str(image / "o.nii.gz"), "--box", "0", "0", "0", "1",
                          "1", "1" + "0" * 400, "-q"])
    with pytest.raises(SystemExit, match="label values must be integers in 1..32767"):
        segment_box_main(["-i", str(image / "img.nii.gz"), "-o", str(image / "o.nii.gz"), "--box", "0", "0", "0", "1",
                          "1", "1", "--label", "40000", "-q"])
    with pytest.raises(SystemExit):  # argparse: a non-integer --box coordinate is no integer
        segment_box_main(["-i", str(image / "img.nii.gz"), "-o", str(image / "o.nii.gz"), "--box", "0", "0", "0", "1.5",
                          "1", "1", "-q"])


def test_medlsam_bounds_the_boxes_of_a_case():
    """``autosam_predict --boxes-json`` with 100,000 boxes reached 23 GB in medlsam: the boxes of a
    case are now bounded by the method option ``max_boxes`` (``--max-boxes N`` raises it)."""
    from autosam.plugins import get_method
    from autosam_plugins.medlsam.segment import segment_boxes

    with pytest.raises(ValueError, match="300 box prompts exceed the limit of 256.*--max-boxes 300"):
        segment_boxes(None, torch.zeros(1, 2, 4, 4), {1: [np.array([0, 0, 0, 0, 1, 1])] * 300}, 2, spacing=(1, 1, 1),
                      max_boxes=get_method("medlsam").make_options({}, {}).max_boxes)
    assert get_method("medlsam").make_options({}, {"max-boxes": "1000"}).max_boxes == 1000
