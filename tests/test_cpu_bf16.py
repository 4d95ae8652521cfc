"""Every method predicts on the CPU under bf16 autocast (``--bf16``; ``--fast`` turns it on on CPUs
with native bf16): no dtype clash in any method's own code, a valid label map, and the run recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_device_guard import TINY_OPTIONS
from test_fake_cuda import _fold, _train, tiny  # noqa: F401  (the fixture)
from training_data import NAME, make_case


@pytest.mark.parametrize("method", sorted(TINY_OPTIONS))
def test_every_method_predicts_under_cpu_bf16(method, tiny, tmp_path):  # noqa: F811
    from autosam.cli.predict import main as predict_main
    from autosam.io.image import ImageGeometry, read_image, write_image

    assert _train(method, "--device", "cpu") == 0
    img, _ = make_case(np.random.default_rng(3))
    images = tmp_path / "images"
    write_image(images / "case_900_0000.nii.gz", img[0], ImageGeometry(spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0),
                                                                     direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                                                                     shape=img.shape[1:]))
    out = tmp_path / "pred"
    assert predict_main(["-i", str(images), "-o", str(out), "-d", NAME, "-c", "3d", "-m", method, "-f", "0",
                         "--device", "cpu", "--bf16", "--disable_tta", "--quiet"]) == 0
    seg, _ = read_image(out / "case_900.nii.gz")
    assert seg.shape == img.shape[1:]
    labels = json.loads((_fold(tiny, method).parent / "dataset.json").read_text())["labels"]
    assert set(np.unique(seg).tolist()) <= {int(v) for v in labels.values() if not isinstance(v, list)}
    assert json.loads((out / "predict_args.json").read_text())["cpu_bf16"] is True
