"""Box prompts given by the user at prediction (``autosam_predict --boxes-json FILE``).

A method that takes box prompts (``Method.accepts_boxes``, e.g. ``medlsam``: the paper's "manual
box" columns) then skips its own localisation and segments inside the given boxes.

The file maps each case to its boxes, per label::

    {
      "case_007": {"liver": [12, 30, 20, 40, 80, 70], "2": [[5, 10, 10, 9, 20, 20], [5, 10, 50, 9, 20, 60]]},
      "case_008": {"1": [10, 28, 22, 38, 79, 71]}
    }

- case: the image's case identifier (``case_007`` for ``case_007_0000.nii.gz``);
- label: its value (``"1"``) or its name in ``dataset.json``;
- box: ``[z0, y0, x0, z1, y1, x1]``, voxel indices of the INPUT image in the array order of
  SimpleITK (z, y, x), inclusive at both ends (the min and max voxel of the structure), as in
  ``autosam_segment_box``; a list of boxes gives one prompt per box (e.g. both kidneys).

The boxes are mapped onto the configuration's preprocessed grid with the case's own crop and
resampling (:func:`to_preprocessed_grid`): each box keeps every voxel it touches.
"""
from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

Box = list[int]


def _label_values(dataset_json: dict) -> dict[str, int]:
    out = {}
    for name, value in (dataset_json.get("labels") or {}).items():
        if isinstance(value, (int, float)) and int(value) > 0:
            out[str(name)] = int(value)
            out[str(int(value))] = int(value)
    return out


#: Largest coordinate a box may hold (a larger one cannot index any image).
MAX_COORDINATE = 2**31 - 1


def load_boxes_file(path: Path, what: str = "boxes"):
    """The JSON value of a ``what`` file; every failure (missing, unreadable, not JSON, nested too
    deeply) is one error naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a readable JSON file (nested too deeply)") from None


def box_problem(box) -> str | None:
    """Why ``box`` is not ``[z0, y0, x0, z1, y1, x1]`` of whole, finite, non-negative numbers with
    ``z0 <= z1``, ``y0 <= y1``, ``x0 <= x1`` (None when it is). Nothing is rounded: 2.5 is refused."""
    if not (isinstance(box, list) and len(box) == 6
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        return f"expected [z0, y0, x0, z1, y1, x1] (6 integers) or a list of them, got {reprlib.repr(box)}"
    for v in box:
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            return f"box {reprlib.repr(box)}: coordinates must be integers (voxel indices), got {v!r}"
        if abs(v) > MAX_COORDINATE:
            return f"box {reprlib.repr(box)}: coordinate {reprlib.repr(v)} is out of range"
    b = [int(v) for v in box]
    if any(b[a] > b[a + 3] for a in range(3)) or min(b) < 0:
        return f"box {b} needs 0 <= z0 <= z1, 0 <= y0 <= y1, 0 <= x0 <= x1"
    return None


def read_case_label_file(path: str | Path, case_ids: Sequence[str], dataset_json: dict, what: str, example: str,
                         parse: Callable[[Any, str, list[str]], Any], merge: Callable[[Any, Any], Any] | None = None
                         ) -> dict[str, dict[int, Any]]:
    """Read a JSON file of ``{case: {label: value}}`` (boxes, prompts) for the cases ``case_ids``.

    Every problem is reported at once in one ``ValueError`` naming the file, the case and the label:
    every case to be predicted needs an entry (a case without one would silently get an empty
    prediction), an entry for a case not in ``case_ids`` is a likely typo, a label is its name or
    value in ``dataset.json``. ``parse(value, where, problems)`` checks one label's value (appending
    to ``problems``, returning None on failure); a label given twice (name and value) is merged with
    ``merge`` or refused without it. ``what``: the kind of file, ``example``: an entry's form."""
    path = Path(path)
    raw = load_boxes_file(path, what)
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f'{path}: expected a non-empty object {{"case": {{"label": {example}}}}}')
    labels = _label_values(dataset_json)
    problems = [f"case {c!r}: no {what} (every case of the input folder needs an entry)" for c in case_ids if c not in raw]
    problems += [f"case {c!r}: not in the input folder (cases there: {', '.join(sorted(case_ids))})"
                 for c in raw if c not in case_ids]
    out: dict[str, dict[int, Any]] = {}
    for case, entry in raw.items():
        if case not in case_ids:
            continue
        if not isinstance(entry, dict) or not entry:
            problems.append(f'case {case!r}: expected an object {{"label": {example}, ...}}')
            continue
        per_label: dict[int, Any] = {}
        for key, value in entry.items():
            where = f"case {case!r}, label {key!r}"
            if str(key) not in labels:
                problems.append(f"{where}: unknown label (dataset.json labels: "
                                f"{', '.join(k for k in labels if not k.isdigit())}; or their values)")
                continue
            label = labels[str(key)]
            if label in per_label and merge is None:
                problems.append(f"{where}: label {label} given twice (by name and by value)")
                continue
            parsed = parse(value, where, problems)
            if parsed is not None:
                per_label[label] = merge(per_label[label], parsed) if label in per_label else parsed
        out[case] = per_label
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return out


def _parse_boxes(value: Any, where: str, problems: list[str]) -> list[Box] | None:
    boxes = value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
    good = []
    for box in boxes:
        problem = box_problem(box)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        good.append([int(v) for v in box])
    return good or None


def read_boxes_json(path: str | Path, case_ids: Sequence[str], dataset_json: dict) -> dict[str, dict[int, list[Box]]]:
    """Read and check a boxes file (format: module docstring) for the cases ``case_ids``
    (:func:`read_case_label_file`'s rules; a label given by name and by value gets both boxes).
    :returns: case -> label value -> list of ``[z0, y0, x0, z1, y1, x1]`` (input-image voxels)."""
    return read_case_label_file(path, case_ids, dataset_json, "boxes", "[z0, y0, x0, z1, y1, x1]", _parse_boxes,
                                merge=lambda a, b: a + b)


def check_in_image(path: str | Path, case: str, boxes: dict[int, list[Box]], shape: Sequence[int]) -> None:
    """Every box lies inside the input image of ``shape`` (z, y, x)."""
    for label, blist in boxes.items():
        for b in blist:
            if any(b[a + 3] >= int(shape[a]) for a in range(3)):
                raise ValueError(f"{path}: case {case!r}, label {label}: box {b} reaches outside the image "
                                 f"(shape z, y, x = {tuple(int(s) for s in shape)})")


def to_preprocessed_grid(boxes: dict[int, list[Box]], properties: dict, preprocessed_shape: Sequence[int]) -> dict[int, list[np.ndarray]]:
    """Map input-image boxes onto the preprocessed grid of one case (``properties`` of
    :func:`autosam.preprocessing.preprocessor.preprocess_case`): shift by the crop, then scale each
    voxel's extent ``[i, i + 1)`` by the resampling factor; the box keeps every voxel it touches.
    A box outside the crop (all-zero image region) is clipped to it."""
    bbox = [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"]]
    crop = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    new = [int(s) for s in preprocessed_shape]
    out: dict[int, list[np.ndarray]] = {}
    for label, blist in boxes.items():
        for b in blist:
            lo, hi = [], []
            for a in range(3):
                scale = new[a] / crop[a]
                c0 = min(max(b[a] - bbox[a][0], 0), crop[a] - 1)
                c1 = min(max(b[a + 3] - bbox[a][0], 0), crop[a] - 1)
                lo.append(max(0, min(new[a] - 1, math.floor(c0 * scale + 1e-6))))
                hi.append(max(0, min(new[a] - 1, math.ceil((c1 + 1) * scale - 1e-6) - 1)))
            out.setdefault(int(label), []).append(np.array(lo + hi, dtype=int))
    return out


def read_user_boxes(boxes_json, model, cases) -> dict:
    """The boxes of ``--boxes-json`` for the input ``cases`` (:func:`autosam.io.dataset.list_prediction_inputs`),
    checked against the method (a :class:`~autosam.inference.model_loading.TrainedModel`'s), the labels and
    every input image."""
    import SimpleITK as sitk

    from autosam.plugins import get_plugin_system

    if not model.method.accepts_boxes:
        methods = get_plugin_system().methods
        takers = sorted(n for n in methods.names() if methods.get(n).accepts_boxes)
        raise ValueError(f"--boxes-json: method {model.method.name!r} takes no box prompts "
                         f"(methods that do: {', '.join(takers) or 'none installed'})")
    boxes = read_boxes_json(boxes_json, [c.identifier for c in cases], model.dataset_json)
    for case in cases:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(case.images[0]))
        reader.ReadImageInformation()
        check_in_image(boxes_json, case.identifier, boxes[case.identifier], tuple(reversed(reader.GetSize()))[-3:])
    return boxes
