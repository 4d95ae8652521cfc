"""The interactive API (issue 27 §4): ``InteractiveSession`` holds one image, encodes it once and
answers box, 2D-box and click prompts, undo, reset and set_label with masks on the input grid; a
prompt never re-runs the image encoder (counted on the real methods with tiny backbones)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autosam.interactive.session import InteractiveSession
from interactive_helpers import oracle_method  # noqa: F401  (fixture)

SHAPE = (18, 34, 30)
SPACING = (2.6, 1.3, 0.8)  # resampled to the plans' 2 x 1 x 1 mm: the input and preprocessed grids differ


def _model(tmp_path, method, overrides=None):
    from autosam.inference.predictor import load_trained_model
    from autosam.utils.files import write_json
    from training_data import DATASET_JSON, tiny_plans, untrained_model

    folder = tmp_path / "Dataset990_Tiny" / f"{method}__autosamPlans__3d"
    plans = tiny_plans(features=(2, 4, 8))
    folder.mkdir(parents=True)
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", DATASET_JSON)
    untrained_model(plans, folder, method=method, overrides=overrides)
    return load_trained_model(folder, ["all"], device="cpu")


def _image():
    rng = np.random.default_rng(0)
    img = rng.normal(1.0, 0.2, SHAPE).astype(np.float32)
    img[4:12, 10:22, 8:20] += 2
    img[:, :, :2] = 0  # a zero border: the preprocessing crops it
    return img


class EncoderCalls:
    def __init__(self, encoder):
        self.n = 0
        encoder.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))


def test_session_prompts_undo_reset_and_labels_on_the_input_grid(tmp_path, oracle_method):
    s = InteractiveSession(_model(tmp_path, "oracle"), _image(), SPACING)
    assert oracle_method.calls["encode"] == 1 and not s.mask().any()
    box = (4, 10, 8, 11, 21, 19)
    m1 = s.add_box(*box)
    assert m1.shape == SHAPE and m1[4:12, 10:22, 8:20].all()  # the oracle paints the box: it comes back where given
    assert not m1[:3].any() and not m1[13:].any() and not m1[:, :9].any() and not m1[:, :, :7].any()
    m2 = s.add_point(15, 5, 5, positive=True)  # a positive click far from the box
    assert m2[15, 5, 5] and m1.sum() < m2.sum()
    assert s.prompts[1].points[0].positive and s.prompts[1].boxes3d == [box]
    assert oracle_method.last_prompts[1].previous_mask is not None  # the current mask is fed back
    m3 = s.add_point(7, 15, 12, positive=False)
    assert not m3[7, 15, 12] and m3.sum() < m2.sum()
    calls = oracle_method.calls["predict"]
    assert np.array_equal(s.undo(), m2) and np.array_equal(s.undo(), m1)  # undo costs nothing
    assert oracle_method.calls["predict"] == calls
    s.set_label(2)
    s.add_box2d(8, 2, 22, 6, 27, 6, 10)
    assert s.mask(2)[6:11, 2:7, 22:28].any() and np.array_equal(s.mask(1), m1)  # label 1 keeps its mask
    assert set(np.unique(s.segmentation)) == {0, 1, 2}
    assert not s.reset().any() and not s.segmentation.any()
    assert s.undo()[6:11, 2:7, 22:28].any()  # reset can be undone
    assert oracle_method.calls["encode"] == 1  # one encoding for the whole session
    with pytest.raises(ValueError, match="outside the image"):
        s.add_point(18, 0, 0)
    with pytest.raises(ValueError, match="label 7: the model segments labels 1, 2"):
        s.set_label(7)


def test_session_refuses_a_method_without_prompts_and_kinds_it_does_not_take(tmp_path, oracle_method):
    with pytest.raises(ValueError, match="method 'unet' takes no prompts"):
        InteractiveSession(_model(tmp_path / "u", "unet"), _image(), SPACING)
    s = InteractiveSession(_model(tmp_path / "b", "boxonly"), _image(), SPACING)
    with pytest.raises(ValueError, match="does not take points prompts; it takes: box3d"):
        s.add_point(5, 5, 5)
    with pytest.raises(ValueError, match="needs spacing"):
        InteractiveSession(_model(tmp_path / "c", "boxonly"), _image())


@pytest.mark.parametrize("method, overrides, encoder_of, actions", [
    ("sautomed", {"backbone": "tiny", "allow_random_init": "true", "input_size": "64", "slice_size": "32 32",
                  "attention_heads": "2", "history_tokens": "4"},
     lambda model: model.folds[0].network.backbone.image_encoder,
     [("add_box", (4, 10, 8, 11, 21, 19)), ("add_box2d", (8, 10, 8, 21, 19, 4, 11))]),
    ("msam", {"backbone": "tiny3d"}, lambda model: model.folds[0].network.backbone.image_encoder,
     [("add_point", (8, 15, 12, True)), ("add_point", (2, 30, 25, False))]),
    ("medlsam", {"backbone": "tiny", "patch": "16", "base_width": "8", "num_pool": "2", "feature_dim": "8",
                 "r_mm": "120 120 120"},
     lambda model: model.method._backbone(model.ctx).image_encoder,
     [("add_box", (4, 10, 8, 11, 21, 19)), ("add_box2d", (8, 10, 8, 21, 19, 5, 10))]),
])
def test_a_prompt_does_not_rerun_the_encoder(tmp_path, method, overrides, encoder_of, actions):
    torch.manual_seed(0)
    model = _model(tmp_path, method, overrides)
    calls = EncoderCalls(encoder_of(model))
    s = InteractiveSession(model, _image(), SPACING)
    encoded = calls.n
    first = getattr(s, actions[0][0])(*actions[0][1])
    after_first = calls.n  # medlsam encodes slices lazily: the first box encodes its slices
    assert first.shape == SHAPE and s.last_seconds > 0
    getattr(s, actions[1][0])(*actions[1][1])
    s.undo()
    getattr(s, actions[1][0])(*actions[1][1])
    assert calls.n == after_first, f"{method}: a later prompt ran the encoder"
    if method != "medlsam":
        assert encoded > 0 and after_first == encoded  # encoded once, when the session opened
