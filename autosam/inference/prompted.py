"""Prediction with prompts: the ``--prompts-json`` file of ``autosam_predict`` and the fold-ensemble
call of :meth:`autosam.method.Method.predict_with_prompts`.

The file maps each case to its prompts, per label (its value or its name in ``dataset.json``)::

    {
      "case_007": {
        "liver": {"box3d": [12, 30, 20, 40, 80, 70],
                  "points": [[26, 55, 44, 1], [30, 70, 60, -1]]},
        "2": {"box2d": {"z": 20, "y0": 10, "x0": 12, "y1": 30, "x1": 28, "z_lo": 15, "z_hi": 26}}
      },
      "case_008": {"1": [10, 28, 22, 38, 79, 71]}
    }

- ``box3d``: ``[z0, y0, x0, z1, y1, x1]`` or a list of them (one prompt per box);
- ``box2d``: the CVPR 2025 interactive challenge's box: ``y0..y1``, ``x0..x1`` on slice ``z``, the
  structure spanning slices ``z_lo..z_hi`` (``z_lo <= z <= z_hi``);
- ``points``: clicks ``[z, y, x, 1]`` (inside the structure) or ``[z, y, x, -1]`` (outside);
- a bare list instead of the object is ``box3d`` (so a ``--boxes-json`` file is a prompts file).

Every coordinate is a voxel index of the INPUT image in the array order of SimpleITK (z, y, x),
inclusive at both ends; prompts are mapped onto the configuration's preprocessed grid per case
(:mod:`autosam.inference.prompt_mapping`). Every case of the input folder needs an entry. A
previous mask to refine is a prompt of the Python API only (``Predictor.predict_single_npy_array``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from autosam.inference.box_prompts import read_case_label_file
from autosam.inference.case_prediction import predict_preprocessed_case
from autosam.inference.model_loading import FoldModel
from autosam.inference.prompt_mapping import prompts_to_preprocessed
from autosam.prompts import PROMPT_KINDS, Box2D, LabelPrompts, Point, check_prompt_kinds
from autosam.utils import precision

JSON_KEYS = ("box3d", "box2d", "points")
BOX2D_KEYS = ("z", "y0", "x0", "y1", "x1", "z_lo", "z_hi")


def accepted_prompt_kinds(method) -> frozenset[str]:
    """The prompt kinds a method takes: its ``prompt_kinds``, plus ``box3d`` for ``accepts_boxes``."""
    return frozenset(method.prompt_kinds) | (frozenset({"box3d"}) if method.accepts_boxes else frozenset())


def methods_taking_prompts() -> list[str]:
    from autosam.plugins import get_plugin_system

    methods = get_plugin_system().methods
    return sorted(n for n in methods.names() if accepted_prompt_kinds(methods.get(n)))


def check_method_takes(method, prompts_by_case: dict, where: str) -> None:
    """``ValueError`` naming ``where`` (the file) when the method refuses a kind used in the prompts."""
    if not accepted_prompt_kinds(method):
        raise ValueError(f"{where}: method {method.name!r} takes no prompts (it segments automatically); methods "
                         f"that take prompts: {', '.join(methods_taking_prompts()) or 'none installed'}")
    for case, prompts in prompts_by_case.items():
        try:
            check_prompt_kinds(method.name, accepted_prompt_kinds(method), prompts)
        except ValueError as exc:
            raise ValueError(f"{where}: case {case!r}: {exc}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer()


def _parse_label(value: Any, where: str, problems: list[str]) -> LabelPrompts | None:
    if isinstance(value, list):
        value = {"box3d": value}
    if not isinstance(value, dict) or not value:
        problems.append(f'{where}: expected an object {{"box3d": [...], "box2d": {{...}}, "points": [[z, y, x, 1], ...]}} '
                        f"or a 3D box list, got {value!r}")
        return None
    unknown = sorted(set(value) - set(JSON_KEYS))
    if unknown:
        problems.append(f"{where}: unknown prompt kind(s) {', '.join(map(repr, unknown))} (known: {', '.join(JSON_KEYS)})")
        return None
    out = LabelPrompts()
    n_before = len(problems)
    boxes = value.get("box3d", [])
    boxes = boxes if isinstance(boxes, list) and boxes and all(isinstance(b, list) for b in boxes) else (
        [boxes] if "box3d" in value else [])
    for box in boxes:
        if not (isinstance(box, list) and len(box) == 6 and all(_is_int(v) for v in box)):
            problems.append(f"{where}: box3d: expected [z0, y0, x0, z1, y1, x1] (6 integers) or a list of them, got {box!r}")
            continue
        b = [int(v) for v in box]
        if min(b) < 0 or any(b[a] > b[a + 3] for a in range(3)):
            problems.append(f"{where}: box3d {b} needs 0 <= z0 <= z1, 0 <= y0 <= y1, 0 <= x0 <= x1")
            continue
        out.boxes3d.append(tuple(b))
    if "box2d" in value:
        b2 = value["box2d"]
        if not (isinstance(b2, dict) and set(b2) == set(BOX2D_KEYS) and all(_is_int(b2[k]) for k in BOX2D_KEYS)):
            problems.append(f"{where}: box2d: expected {{{', '.join(f'{k!r}: int' for k in BOX2D_KEYS)}}}, got {b2!r}")
        else:
            box2d = Box2D(**{k: int(b2[k]) for k in BOX2D_KEYS})
            if min(b2[k] for k in BOX2D_KEYS) < 0 or not (box2d.z_lo <= box2d.z <= box2d.z_hi and box2d.y0 <= box2d.y1
                                                           and box2d.x0 <= box2d.x1):
                problems.append(f"{where}: box2d {b2} needs 0 <= z_lo <= z <= z_hi, 0 <= y0 <= y1, 0 <= x0 <= x1")
            else:
                out.box2d = box2d
    points = value.get("points", [])
    if not isinstance(points, list) or ("points" in value and not points):
        problems.append(f"{where}: points: expected a non-empty list of [z, y, x, 1 or -1], got {points!r}")
        points = []
    for p in points:
        if not (isinstance(p, list) and len(p) == 4 and all(_is_int(v) for v in p) and int(p[3]) in (1, -1)
                and min(p[:3]) >= 0):
            problems.append(f"{where}: point {p!r}: expected [z, y, x, 1] (inside) or [z, y, x, -1] (outside), "
                            "non-negative voxel indices")
            continue
        out.points.append(Point(int(p[0]), int(p[1]), int(p[2]), positive=int(p[3]) == 1))
    return out if len(problems) == n_before else None


def read_prompts_json(path: str | Path, case_ids: Sequence[str], dataset_json: dict) -> dict[str, dict[int, LabelPrompts]]:
    """Read and check a prompts file (format: module docstring) for the cases ``case_ids``
    (:func:`autosam.inference.box_prompts.read_case_label_file`'s rules: every problem at once,
    naming the file, the case and the label; a label given twice is refused).
    :returns: case -> label value -> :class:`LabelPrompts` (input-image voxels)."""
    return read_case_label_file(path, case_ids, dataset_json, "prompts", '{"box3d": [...], "points": [...]}',
                                _parse_label)


def check_prompts_in_image(path: str | Path, case: str, prompts: dict[int, LabelPrompts], shape: Sequence[int]) -> None:
    """Every prompt of ``case`` lies inside its input image of ``shape`` (z, y, x)."""
    for label, p in prompts.items():
        try:
            p.validate(tuple(int(s) for s in shape), label)
        except ValueError as exc:
            raise ValueError(f"{path}: case {case!r}, {exc}") from None


def prompts_record(prompts: dict[int, LabelPrompts]) -> dict:
    """JSON form of one case's prompts (the file's format; a previous mask as its voxel count)."""
    out = {}
    for label, p in prompts.items():
        entry: dict[str, Any] = {}
        if p.boxes3d:
            entry["box3d"] = [list(map(int, b)) for b in p.boxes3d]
        if p.box2d is not None:
            entry["box2d"] = {k: int(getattr(p.box2d, k)) for k in BOX2D_KEYS}
        if p.points:
            entry["points"] = [[q.z, q.y, q.x, 1 if q.positive else -1] for q in p.points]
        if p.previous_mask is not None:
            entry["previous_mask_voxels"] = int(np.count_nonzero(p.previous_mask))
        out[str(label)] = entry
    return out


def read_user_prompts(prompts_json, model, cases) -> dict[str, dict[int, LabelPrompts]]:
    """The prompts of ``--prompts-json`` for the input ``cases`` (:func:`autosam.io.dataset.list_prediction_inputs`),
    checked against the method's prompt kinds, the labels and every input image's shape."""
    import SimpleITK as sitk

    if not accepted_prompt_kinds(model.method):
        check_method_takes(model.method, {}, str(prompts_json))
    prompts = read_prompts_json(prompts_json, [c.identifier for c in cases], model.dataset_json)
    check_method_takes(model.method, prompts, str(prompts_json))
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.images[0]))
        reader.ReadImageInformation()
        check_prompts_in_image(prompts_json, case.identifier, prompts[case.identifier],
                               tuple(reversed(reader.GetSize()))[-3:])
    return prompts


# ------------------------------------------------------------------------------ prediction
def _as_tensor(data) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    return torch.from_numpy(np.require(np.asarray(data, dtype=np.float32), requirements=["C", "W"]))


def encode_case(method, folds: Sequence, data, properties: dict | None, ctx) -> list:
    """:meth:`Method.encode_image` of one preprocessed case with every fold's network (one cache per fold)."""
    tensor = _as_tensor(data)
    caches = []
    previous = ctx.extra.get("case_properties")
    ctx.extra["case_properties"] = properties
    try:
        for item in folds:
            network = item.network if isinstance(item, FoldModel) else item
            if isinstance(item, FoldModel):
                method.load_extra_state(item.method_state)
            network.eval()
            with torch.no_grad(), precision.autocast(ctx.device):
                caches.append(method.encode_image(network, tensor, ctx))
    finally:
        ctx.extra["case_properties"] = previous
    return caches


def predict_case_with_prompts(method, folds: Sequence, data, properties: dict, ctx, prompts: dict[int, LabelPrompts], *,
                              use_mirroring: bool = False, caches: Sequence | None = None,
                              on_preprocessed_grid: bool = False) -> torch.Tensor:
    """Fold-ensemble probabilities (K x Z x Y x X, float32, CPU, preprocessed grid) of one preprocessed
    case given ``prompts`` (label -> :class:`LabelPrompts` on the INPUT grid, mapped here, unless
    ``on_preprocessed_grid``). ``caches``: :func:`encode_case`'s result for this case (None: each
    fold encodes the image itself). A kind the method does not take is a ``ValueError``."""
    check_prompt_kinds(method.name, accepted_prompt_kinds(method), prompts)
    unknown = sorted(set(int(k) for k in prompts) - set(ctx.label_manager.foreground_labels))
    if unknown:
        raise ValueError(f"prompts for label(s) {unknown}, which the model does not segment (foreground labels: "
                         f"{ctx.label_manager.foreground_labels})")
    tensor = _as_tensor(data)
    if tensor.ndim != 4:
        raise ValueError(f"preprocessed data must be C x Z x Y x X, got shape {tuple(tensor.shape)}")
    mapped = dict(prompts) if on_preprocessed_grid else prompts_to_preprocessed(prompts, properties, tensor.shape[1:])
    for label, p in mapped.items():
        p.validate(tuple(tensor.shape[1:]), label)

    def predict(network, tensor, i):
        return method.predict_with_prompts(network, tensor, mapped, ctx, cache=caches[i] if caches is not None else None,
                                           use_mirroring=use_mirroring)

    with torch.no_grad():
        return predict_preprocessed_case(method, folds, tensor, properties, ctx, use_mirroring, predict=predict)


__all__ = ["PROMPT_KINDS", "accepted_prompt_kinds", "check_method_takes", "check_prompts_in_image", "encode_case",
           "methods_taking_prompts", "predict_case_with_prompts", "prompts_record", "read_prompts_json",
           "read_user_prompts"]
