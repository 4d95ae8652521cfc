import math

import numpy as np
import pytest
import torch

from autosam.inference.sliding_window import compute_steps, gaussian_importance_map, sliding_window_predict


def two_class_identity(x):
    """Logits (0, x): the probability of class 1 is sigmoid(x), whatever the patch position."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def test_steps_follow_the_overlap_rule():
    assert compute_steps([110], [64], 0.5) == [[0, 23, 46]]
    assert compute_steps([64, 65], [64, 64], 0.5) == [[0], [0, 1]]
    assert compute_steps([128], [64], 0.5) == [[0, 32, 64]]
    assert compute_steps([128], [64], 1.0) == [[0, 64]]
    with pytest.raises(ValueError, match="smaller than the patch"):
        compute_steps([10], [16], 0.5)


def test_gaussian_weights():
    g = gaussian_importance_map((16, 8, 24))
    assert g.shape == (16, 8, 24)
    assert float(g.max()) == pytest.approx(1.0)
    assert float(g[8, 4, 12]) == pytest.approx(1.0)
    # sigma = patch / 8 per axis: one sigma away from the centre the weight is exp(-1/2)
    assert float(g[8 + 2, 4, 12]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(g[8, 4 + 1, 12]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(g[8, 4, 12 + 3]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(g.min()) > 0


@pytest.mark.parametrize("shape,patch", [((1, 20, 23, 17), (8, 8, 8)), ((2, 9, 30, 31), (4, 16, 16))])
def test_position_independent_logits_are_reproduced(shape, patch):
    data = torch.randn(shape)
    probs = sliding_window_predict(two_class_identity, data, patch, 2, "cpu", use_mirroring=True)
    assert probs.shape == (2, *shape[1:]) and probs.dtype == torch.float32
    torch.testing.assert_close(probs[1], torch.sigmoid(data[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(0), torch.ones(shape[1:]), atol=1e-5, rtol=1e-5)


def test_gaussian_weighted_average_of_overlapping_patches():
    calls = []

    def per_call_constant(x):
        value = float(len(calls))
        calls.append(x.shape)
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, 1] = value
        return out

    data = np.zeros((1, 1, 1, 12), dtype=np.float32)
    probs = sliding_window_predict(per_call_constant, data, (1, 1, 8), 2, "cpu", use_mirroring=False)
    assert len(calls) == 2  # patches at x = 0 and x = 4
    g = [math.exp(-0.5 * ((i - 4) / 1.0) ** 2) for i in range(8)]  # sigma = 8 / 8
    for x in range(12):
        w0 = g[x] if x < 8 else 0.0
        w1 = g[x - 4] if x >= 4 else 0.0
        logit = (0.0 * w0 + 1.0 * w1) / (w0 + w1)
        assert float(probs[1, 0, 0, x]) == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-5)


def test_mirroring_averages_over_all_flips_and_unflips_outputs():
    patch = (4, 6, 8)
    ramp = torch.arange(8, dtype=torch.float32)  # position-dependent along the last axis
    seen = []

    def asymmetric(x):
        seen.append(x.clone())
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1] + ramp], dim=1)

    data = torch.randn(1, *patch)
    probs = sliding_window_predict(asymmetric, data, patch, 2, "cpu", use_mirroring=True, mirror_batch=1)
    assert len(seen) == 8  # identity + 7 flips of 3 axes
    assert any(torch.equal(s[0, 0], torch.flip(data[0], (0, 1, 2))) for s in seen)
    seen.clear()
    batched = sliding_window_predict(asymmetric, data, patch, 2, "cpu", use_mirroring=True, mirror_batch=3)
    assert [s.shape[0] for s in seen] == [3, 3, 2]
    torch.testing.assert_close(batched, probs)
    # mean of (x + r) and unflipped (flip(x) + r) along x is x + mean(r) = x + 3.5
    torch.testing.assert_close(probs[1], torch.sigmoid(data[0] + 3.5), atol=1e-5, rtol=1e-5)
    without = sliding_window_predict(asymmetric, data, patch, 2, "cpu", use_mirroring=False)
    torch.testing.assert_close(without[1], torch.sigmoid(data[0] + ramp), atol=1e-5, rtol=1e-5)


def test_image_smaller_than_patch_is_padded_and_cropped_back():
    shapes = []

    def fn(x):
        shapes.append(tuple(x.shape))
        return two_class_identity(x)

    data = np.random.default_rng(0).normal(size=(1, 5, 7, 9)).astype(np.float32)
    probs = sliding_window_predict(fn, data, (8, 8, 8), 2, "cpu", use_mirroring=False)
    assert probs.shape == (2, 5, 7, 9)
    assert set(shapes) == {(1, 1, 8, 8, 8)}
    torch.testing.assert_close(probs[1], torch.sigmoid(torch.from_numpy(data[0])), atol=1e-5, rtol=1e-5)


def test_2d_patches_run_on_slices_with_2d_mirroring():
    shapes = []

    def fn(x):
        shapes.append(tuple(x.shape))
        return two_class_identity(x)

    data = torch.randn(1, 3, 10, 12)
    probs = sliding_window_predict(fn, data, (8, 8), 2, "cpu", use_mirroring=True, batch_size=2, mirror_batch=1)
    assert probs.shape == (2, 3, 10, 12)
    assert all(len(s) == 4 and s[1:] == (1, 8, 8) for s in shapes)
    n_tiles = 3 * 2 * 2  # 3 slices x 2 x 2 positions, 2 patches per call, 4 mirrorings per call
    assert len(shapes) == n_tiles // 2 * 4
    torch.testing.assert_close(probs[1], torch.sigmoid(data[0]), atol=1e-5, rtol=1e-5)


def test_batches_and_progress_callback():
    ticks = []
    data = torch.randn(1, 16, 16, 16)
    a = sliding_window_predict(two_class_identity, data, (8, 8, 8), 2, "cpu", use_mirroring=False, batch_size=3,
                               progress=lambda done, total: ticks.append((done, total)))
    assert ticks[-1] == (27, 27) and len(ticks) == 9
    torch.testing.assert_close(a[1], torch.sigmoid(data[0]), atol=1e-5, rtol=1e-5)


def test_wrong_logits_shape_is_reported():
    with pytest.raises(ValueError, match="logits_fn returned shape"):
        sliding_window_predict(lambda x: x, torch.zeros(1, 8, 8, 8), (8, 8, 8), 3, "cpu")
