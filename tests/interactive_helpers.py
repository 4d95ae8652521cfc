"""A promptable test method (``oracle``) and a fixture that registers it, for the prompt and
interactive-evaluator tests (not a test module).

``oracle`` has unet's network (so that checkpoints save and load like any method's) but ignores it:
it paints every prompt it gets: the previous mask, the 3D box or the challenge's 2D box (on every
slice of its z range), a ball of radius 2 voxels around each positive click, and removes a ball
around each negative click. A box prompt thus gives a box-shaped prediction (Dice below 1 for a
round structure) that clicks at the centre of the largest error improve. It counts its
``encode_image`` and ``predict_with_prompts`` calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autosam import hookimpl
from autosam.prompts import check_prompt_kinds
from autosam_plugins.unet.plugin import UNetMethod


def ball(shape, centre, radius=2.0) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


class OracleMethod(UNetMethod):
    name = "oracle"
    description = "test method: paints its prompts"
    prompt_kinds = frozenset({"box3d", "box2d", "points", "mask"})
    calls = {"encode": 0, "predict": 0}
    last_prompts: dict = {}

    def encode_image(self, network, data, ctx):
        type(self).calls["encode"] += 1
        return {"shape": tuple(data.shape[1:])}

    def predict_with_prompts(self, network, data, prompts, ctx, *, cache=None, use_mirroring=False):
        check_prompt_kinds(self.name, self.prompt_kinds, prompts)
        type(self).calls["predict"] += 1
        OracleMethod.last_prompts = dict(prompts)
        shape = tuple(data.shape[1:])
        assert cache is None or cache["shape"] == shape
        probs = torch.zeros(ctx.num_classes, *shape)
        for label, p in prompts.items():
            m = np.zeros(shape, bool) if p.previous_mask is None else p.previous_mask.copy()
            boxes = list(p.boxes3d) + ([p.box2d.as_box3d()] if p.box2d is not None else [])
            for b in boxes:
                m[b[0]:b[3] + 1, b[1]:b[4] + 1, b[2]:b[5] + 1] = True
            for q in p.points:
                if q.positive:
                    m |= ball(shape, (q.z, q.y, q.x))
                else:
                    m &= ~ball(shape, (q.z, q.y, q.x))
            probs[label] = torch.from_numpy(m.astype(np.float32))
        probs[0] = 1 - probs[1:].amax(0).clamp(max=1)
        return probs


class BoxOnlyMethod(OracleMethod):
    """Takes 3D boxes only (as ``accepts_boxes`` methods do): the evaluator gives it the 3D box of the
    challenge's 2D box and cannot give it clicks."""

    name = "boxonly"
    prompt_kinds = frozenset({"box3d"})


def model_folder(results, method: str, fold: str = "0"):
    """``results/Dataset990_Tiny/<method>__autosamPlans__3d`` with an untrained ``fold_<fold>``."""
    import shutil

    from autosam.utils.files import write_json
    from training_data import DATASET_JSON, NAME, tiny_plans, untrained_model

    folder = results / NAME / f"{method}__autosamPlans__3d"
    plans = tiny_plans(features=(2, 4, 8))
    folder.mkdir(parents=True)
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", DATASET_JSON)
    untrained_model(plans, folder, method=method)
    if fold != "all":
        shutil.move(folder / "fold_all", folder / f"fold_{fold}")
    return folder


class _Plugin:
    @hookimpl
    def register_methods(self, register):
        register(OracleMethod())
        register(BoxOnlyMethod())


@pytest.fixture
def oracle_method(monkeypatch):
    """Register ``oracle`` and ``boxonly`` beside the installed methods for one test."""
    from autosam import plugins

    original = plugins.build_plugin_system
    monkeypatch.setattr(plugins, "build_plugin_system",
                        lambda extra=None, **kw: original([("oracle_test", _Plugin())] + list(extra or []), **kw))
    plugins.reset_plugin_system()
    OracleMethod.calls.update(encode=0, predict=0)
    yield OracleMethod
    monkeypatch.undo()
    plugins.reset_plugin_system()
