"""One case through the CVPR 2025 interactive challenge's protocol.

Every foreground label present in the reference is one structure; all structures are prompted and
predicted together (one call of the method per step, as in the challenge), each with its own prompts:

- step 0: the challenge's box: :func:`autosam.prompts.box2d_from_mask` of the reference (the 2D box
  on the middle slice of the structure plus its z range). A method that takes 3D boxes but not
  ``box2d`` gets the box the 2D box and its range span (:meth:`Box2D.as_box3d`); a method that takes
  clicks but no box starts with a click instead (the centre of the structure, the challenge's rule
  for structures without a box);
- steps 1 .. ``num_clicks``: per structure, one click from :func:`autosam.interactive.clicks.simulate_click`
  on the previous step's prediction, added to the earlier clicks; the box stays; the previous
  prediction of the structure is passed back as ``previous_mask``;
- the image is encoded once per case (:meth:`Method.encode_image`, per fold) and the cache reused
  at every step, so a step costs what a click costs in a viewer.

Clicks and masks are simulated on the input image's grid (where the reference lives) and mapped
onto the preprocessed grid per step (:mod:`autosam.inference.prompt_mapping`); each step's
probabilities are exported back to the input grid exactly as ``autosam_predict`` does before scoring.

A method that takes no prompts (``unet``) is the automatic reference: it predicts once, without
prompts, and that prediction scores every step. A method that takes boxes but neither clicks nor
masks is predicted once too (its later steps would get the same prompts). Skipped predictions
cost 0 s in ``seconds_per_step``.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from autosam.inference.export import probabilities_to_segmentation
from autosam.inference.predictor import TrainedModel, predict_preprocessed_case
from autosam.inference.prompted import accepted_prompt_kinds, encode_case, predict_case_with_prompts
from autosam.interactive.clicks import simulate_click
from autosam.interactive.metrics import DEFAULT_TOLERANCE_MM, auc, dice, nanmean, nsd
from autosam.prompts import LabelPrompts, Point, box2d_from_mask

NUM_CLICKS = 5
PROMPT_KINDS_USED = ("box3d", "box2d", "points", "mask")


def evaluation_mode(method) -> str:
    """``prompted`` (the method takes boxes or clicks) or ``automatic`` (it takes neither)."""
    return "prompted" if accepted_prompt_kinds(method) & {"box3d", "box2d", "points"} else "automatic"


def step_names(num_clicks: int = NUM_CLICKS) -> list[str]:
    return ["box"] + [f"click {k}" for k in range(1, num_clicks + 1)]


def first_prompt_kind(kinds) -> str:
    """What step 0 gives a method with these prompt kinds: ``box2d``, ``box3d`` or ``click``."""
    if "box2d" in kinds:
        return "box2d"
    if "box3d" in kinds:
        return "box3d"
    return "click"


def _given(p: LabelPrompts, kinds) -> LabelPrompts:
    """The part of the simulated prompts the method takes (the 2D box as a 3D box where needed)."""
    boxes = [p.box2d.as_box3d()] if p.box2d is not None and "box2d" not in kinds and "box3d" in kinds else []
    return LabelPrompts(boxes3d=boxes, box2d=p.box2d if "box2d" in kinds else None,
                        points=list(p.points) if "points" in kinds else [],
                        previous_mask=p.previous_mask if "mask" in kinds else None)


def _click_record(click: Point | None) -> list[int] | None:
    return None if click is None else [click.z, click.y, click.x, 1 if click.positive else -1]


def case_labels(reference: np.ndarray, label_manager) -> list[int]:
    """The structures of a case: the foreground labels present in its reference."""
    present = set(int(v) for v in np.unique(reference))
    return [int(v) for v in label_manager.foreground_labels if int(v) in present]


def run_case(model: TrainedModel, data, properties: dict, reference: np.ndarray, spacing: Sequence[float], *,
             num_clicks: int = NUM_CLICKS, tolerance_mm: float = DEFAULT_TOLERANCE_MM, use_mirroring: bool = False,
             on_step: Callable[[int, np.ndarray], None] | None = None) -> dict:
    """The protocol on one case (module docstring). ``data``/``properties``: the preprocessed case;
    ``reference``: its label map on the input grid (Z x Y x X) with voxel ``spacing`` (z, y, x, mm).
    ``on_step(step, segmentation)`` sees each step's label map on the input grid.

    :returns: the case's record: per step the clicks, Dice and NSD per label and the seconds; the
        curves averaged over the labels (``dice_per_step``, ``nsd_per_step``), their AUCs, the final
        values and ``encode_seconds``."""
    method, ctx, lm = model.method, model.ctx, model.ctx.label_manager
    reference = np.asarray(reference)
    if tuple(reference.shape) != tuple(int(s) for s in properties["shape_before_cropping"]):
        raise ValueError(f"reference shape {tuple(reference.shape)} differs from the image's "
                         f"{tuple(properties['shape_before_cropping'])}")
    tensor = data if isinstance(data, torch.Tensor) else torch.from_numpy(
        np.require(np.asarray(data, dtype=np.float32), requirements=["C", "W"]))
    labels = case_labels(reference, lm)
    valid = reference != lm.ignore_label if lm.has_ignore_label else None
    refs = {lab: reference == lab for lab in labels}
    kinds = accepted_prompt_kinds(method)
    mode = evaluation_mode(method)

    def segment(probs: torch.Tensor) -> np.ndarray:
        return probabilities_to_segmentation(probs, properties, model.configuration, label_manager=lm)

    steps: list[dict[str, Any]] = []
    encode_seconds = 0.0
    prompts: dict[int, LabelPrompts] = {}
    caches = None
    if mode == "prompted":
        start = time.perf_counter()
        caches = encode_case(method, model.folds, tensor, properties, ctx)
        encode_seconds = time.perf_counter() - start
        for lab in labels:
            if first_prompt_kind(kinds) == "click":
                prompts[lab] = LabelPrompts(points=[simulate_click(refs[lab], np.zeros_like(refs[lab]), spacing, valid)])
            else:
                prompts[lab] = LabelPrompts(box2d=box2d_from_mask(refs[lab]))
    seg = None
    for step in range(num_clicks + 1):
        clicks: dict[str, list[int] | None] = {}
        if step > 0 and mode == "prompted":
            for lab in labels:
                pred_lab = seg == lab
                click = simulate_click(refs[lab], pred_lab, spacing, valid)
                clicks[str(lab)] = _click_record(click)
                prompts[lab] = replace(prompts[lab], points=prompts[lab].points + ([click] if click else []),
                                       previous_mask=pred_lab)
        recompute = seg is None or (mode == "prompted" and ("mask" in kinds or (
            "points" in kinds and any(c is not None for c in clicks.values()))))
        seconds = 0.0
        if recompute:
            start = time.perf_counter()
            if mode == "automatic":
                probs = predict_preprocessed_case(method, model.folds, tensor, properties, ctx, use_mirroring)
            else:
                given = {lab: _given(p, kinds) for lab, p in prompts.items()}
                probs = predict_case_with_prompts(method, model.folds, tensor, properties, ctx, given,
                                                  use_mirroring=use_mirroring, caches=caches)
            seg = segment(probs)
            seconds = time.perf_counter() - start
        if on_step is not None:
            on_step(step, seg)
        steps.append({
            "step": step, "name": step_names(num_clicks)[step], "clicks": clicks, "predicted": recompute,
            "seconds": seconds,
            "dice": {str(lab): dice(refs[lab] if valid is None else refs[lab] & valid,
                                    (seg == lab) if valid is None else (seg == lab) & valid) for lab in labels},
            "nsd": {str(lab): nsd(refs[lab], seg == lab, spacing, tolerance_mm) for lab in labels},
        })
    dice_curve = [nanmean(s["dice"].values()) for s in steps]
    nsd_curve = [nanmean(s["nsd"].values()) for s in steps]
    per_label = {str(lab): {"dice_per_step": [s["dice"][str(lab)] for s in steps],
                            "nsd_per_step": [s["nsd"][str(lab)] for s in steps]} for lab in labels}
    for entry in per_label.values():
        entry["dsc_auc"], entry["nsd_auc"] = auc(entry["dice_per_step"]), auc(entry["nsd_per_step"])
    return {
        "labels": labels, "mode": mode,
        "first_prompt": first_prompt_kind(kinds) if mode == "prompted" else None,
        "steps": steps, "per_label": per_label,
        "dice_per_step": dice_curve, "nsd_per_step": nsd_curve,
        "dsc_auc": auc(dice_curve) if labels else None, "nsd_auc": auc(nsd_curve) if labels else None,
        "final_dice": dice_curve[-1], "final_nsd": nsd_curve[-1],
        "seconds_per_step": [s["seconds"] for s in steps], "encode_seconds": encode_seconds,
    }
