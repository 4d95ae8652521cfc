"""The labels of a dataset, read from ``dataset.json`` exactly as nnU-Net v2 reads them.

``labels`` maps a name to

- an integer: an ordinary class (``"background": 0`` is required; a network with a softmax over
  ``0..max`` is trained);
- a list of integers: a *region*, the union of those labels (BraTS: ``"whole tumour": [1, 2, 3]``,
  ``"tumour core": [2, 3]``, ``"enhancing tumour": [3]``). As soon as one list has more than one
  entry the dataset is *region-based*: the network has one sigmoid output per foreground region,
  and ``regions_class_order`` (one label value per region, in the order of ``labels``) says how a
  prediction is written back to an integer label map: the regions are painted in that order, each
  with its value, where its probability exceeds 0.5 (later regions overwrite earlier ones).

A label named ``ignore`` (an integer, the highest label value: ``max(labels) + 1``) marks voxels
without annotation: they count in no loss, no metric and no foreground sampling, and no
prediction contains the value.

Everything in autosam that counts outputs or foreground classes goes through :class:`LabelManager`.
"""
from __future__ import annotations

from typing import Sequence

import sys

import numpy as np

# torch is imported where a tensor is handled, not here: preprocessing and evaluation workers read
# labels without torch (importing it costs seconds per worker process).


def _is_tensor(x) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)

IGNORE_NAME = "ignore"
#: The largest label value (label maps and painted regions are int16).
MAX_LABEL_VALUE = 32767


class LabelError(ValueError):
    """A problem with ``labels`` / ``regions_class_order``; the message names the file."""


def _as_int(value, source: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise LabelError(f"{source}: label {name!r} has value {value!r}; expected an integer or a list of integers")
    return int(value)


def _check_unique_and_consecutive(parsed: dict, source: str, has_regions: bool) -> None:
    """Two names for one value (or one region) are an error naming both. Plain labels must be 0, 1,
    2, ... without gaps, as nnU-Net requires: the network has one output per value up to the
    largest, so a value of 100000000 would ask for that many outputs. Regions (one output each) may
    skip values, but every value must fit the int16 label maps they are painted into."""
    by_value: dict[tuple[int, ...], str] = {}
    for name, value in parsed.items():
        key = tuple(sorted(set(value))) if isinstance(value, tuple) else (value,)
        if key in by_value:
            shown = value if not isinstance(value, tuple) else list(value)
            raise LabelError(f"{source}: labels {by_value[key]!r} and {name!r} have the same value {shown}; "
                             "give each label its own value")
        by_value[key] = name
    values = sorted({v for name, value in parsed.items() if name != IGNORE_NAME
                     for v in (value if isinstance(value, tuple) else (value,))})
    if not values:
        return
    if has_regions:
        if values[-1] > MAX_LABEL_VALUE:
            raise LabelError(f"{source}: label value {values[-1]} is too large (at most {MAX_LABEL_VALUE}, the label "
                             "maps are int16)")
        return
    missing = sorted(set(range(values[-1] + 1)) - set(values)) if values[-1] <= MAX_LABEL_VALUE else None
    if missing is None or missing:
        gap = (f"{len(missing)} value(s) are missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}"
               if missing else f"the largest is {values[-1]} for {len(values)} declared value(s)")
        raise LabelError(f"{source}: label values must be consecutive, 0, 1, 2, ... (as in nnU-Net); {gap}. "
                         "Renumber the labels in dataset.json and in the label files")


class LabelManager:
    """Classes or regions of a dataset, its ignore label, and the conversions between label maps,
    network outputs and per-output masks (nnU-Net v2's ``LabelManager`` semantics)."""

    def __init__(self, labels: dict, regions_class_order: Sequence[int] | None = None, source: str = "dataset.json"):
        if not isinstance(labels, dict) or not labels:
            raise LabelError(f"{source}: 'labels' must be a non-empty mapping name -> value")
        self.source = source
        parsed: dict[str, int | tuple[int, ...]] = {}
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                if not value:
                    raise LabelError(f"{source}: region {name!r} is an empty list")
                parsed[name] = tuple(_as_int(v, source, name) for v in value)
            else:
                parsed[name] = _as_int(value, source, name)
        self.has_regions = any(isinstance(v, tuple) and len(v) > 1 for v in parsed.values())
        if not self.has_regions:  # single-entry lists are plain labels, as in nnU-Net
            parsed = {k: (v[0] if isinstance(v, tuple) else v) for k, v in parsed.items()}
        self.label_dict = parsed

        if 0 not in [v for v in parsed.values() if not isinstance(v, tuple)]:
            raise LabelError(f"{source}: 'labels' must map a name (usually 'background') to 0")
        if any(isinstance(v, tuple) and 0 in v for v in parsed.values()):
            bad = next(k for k, v in parsed.items() if isinstance(v, tuple) and 0 in v)
            raise LabelError(f"{source}: region {bad!r} contains the background value 0")
        if any((v < 0 if isinstance(v, int) else min(v) < 0) for v in parsed.values()):
            raise LabelError(f"{source}: label values must not be negative")

        _check_unique_and_consecutive(parsed, source, self.has_regions)
        ignore = parsed.get(IGNORE_NAME)
        if isinstance(ignore, tuple):
            raise LabelError(f"{source}: the 'ignore' label must be one integer, not a region ({list(ignore)})")
        values: set[int] = set()
        for name, value in parsed.items():
            if name != IGNORE_NAME:
                values.update(value if isinstance(value, tuple) else (value,))
        self.all_labels: list[int] = sorted(values)
        self.ignore_label: int | None = ignore
        if ignore is not None and ignore != max(self.all_labels) + 1:
            raise LabelError(f"{source}: the 'ignore' label must have the highest value, {max(self.all_labels) + 1} "
                             f"(one above the other labels), not {ignore}")

        self.regions_class_order: list[int] | None = None
        self.foreground_regions: list[tuple[int, ...]] | None = None
        self.region_names: list[str] = []
        self._region_keys: list[int | tuple[int, ...]] = []
        if self.has_regions:
            regions = []
            for name, value in parsed.items():
                if name == IGNORE_NAME or value == 0:
                    continue
                regions.append(value if isinstance(value, tuple) else (value,))
                self._region_keys.append(value)  # as declared: an integer region keeps its key "3"
                self.region_names.append(name)
            if regions_class_order is None:
                raise LabelError(f"{source}: 'labels' defines regions (lists of labels), so 'regions_class_order' is "
                                 f"required: one label value per region ({', '.join(self.region_names)})")
            order = [_as_int(v, source, "regions_class_order") for v in regions_class_order]
            if len(order) != len(regions):
                raise LabelError(f"{source}: 'regions_class_order' has {len(order)} entries but there are "
                                 f"{len(regions)} regions ({', '.join(self.region_names)})")
            unknown = [v for v in order if v not in self.all_labels or v == 0]
            if unknown:
                raise LabelError(f"{source}: 'regions_class_order' value(s) {unknown} are not foreground labels "
                                 f"of the regions (labels: {[v for v in self.all_labels if v != 0]})")
            self.foreground_regions, self.regions_class_order = regions, order
        elif regions_class_order is not None:
            raise LabelError(f"{source}: 'regions_class_order' is given but 'labels' defines no region "
                             "(a region is a list of two or more label values)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset_json(cls, dataset_json: dict, source: str = "dataset.json") -> "LabelManager":
        if "labels" not in dataset_json:
            raise LabelError(f"{source}: missing 'labels'")
        return cls(dataset_json["labels"], dataset_json.get("regions_class_order"), source)

    # ------------------------------------------------------------------ counts and names
    @property
    def has_ignore_label(self) -> bool:
        return self.ignore_label is not None

    @property
    def foreground_labels(self) -> list[int]:
        """Label values other than background and ``ignore``."""
        return [v for v in self.all_labels if v != 0]

    @property
    def declared_values(self) -> list[int]:
        """Every value a reference label map may contain (``ignore`` included)."""
        return sorted(set(self.all_labels) | ({self.ignore_label} if self.has_ignore_label else set()))

    @property
    def num_segmentation_heads(self) -> int:
        """Network outputs: one per foreground region, or one per class ``0..max`` (background included)."""
        if self.has_regions:
            return len(self.foreground_regions)
        return max(self.all_labels) + 1

    @property
    def evaluation_keys(self) -> list[int | tuple[int, ...]]:
        """What is scored: the foreground regions (tuples; a region declared as one integer stays an
        integer, as in nnU-Net) or the foreground labels (ints)."""
        return list(self._region_keys) if self.has_regions else self.foreground_labels

    @property
    def output_names(self) -> list[str]:
        """A name per scored output (foreground region or foreground label), in evaluation order."""
        if self.has_regions:
            return list(self.region_names)
        by_value = {v: k for k, v in self.label_dict.items() if k != IGNORE_NAME}
        return [by_value.get(v, str(v)) for v in self.foreground_labels]

    def label_names(self) -> dict[str, int]:
        """Name -> value of every foreground integer label (``label_<v>`` for values that appear only
        inside regions)."""
        named = {k: v for k, v in self.label_dict.items() if isinstance(v, int) and k != IGNORE_NAME and v != 0}
        known = set(named.values())
        named.update({f"label_{v}": v for v in self.foreground_labels if v not in known})
        return dict(sorted(named.items(), key=lambda kv: kv[1]))

    def to_json(self) -> dict:
        """``labels`` (regions as lists) and ``regions_class_order`` for plans and dataset.json."""
        labels = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.label_dict.items()}
        return {"labels": labels, "regions_class_order": self.regions_class_order}

    # ------------------------------------------------------------------ label maps -> masks
    def masks_of(self, seg, keys: Sequence[int | tuple[int, ...]] | None = None):
        """Boolean masks, one per evaluation key (new first axis), of an integer label map (numpy or
        torch, any shape): ``seg == label`` or ``seg in region``."""
        keys = self.evaluation_keys if keys is None else keys
        if _is_tensor(seg):
            import torch

            return torch.stack([torch.isin(seg, torch.as_tensor(k if isinstance(k, tuple) else (k,), device=seg.device))
                                for k in keys])
        seg = np.asarray(seg)
        return np.stack([np.isin(seg, k if isinstance(k, tuple) else (k,)) for k in keys])

    def valid_mask(self, seg):
        """True where the label map is annotated (not ``ignore``); None without an ignore label."""
        if not self.has_ignore_label:
            return None
        return seg != self.ignore_label

    # ------------------------------------------------------------------ network outputs
    def apply_inference_nonlin(self, logits: "torch.Tensor", dim: int = 0) -> "torch.Tensor":
        """Sigmoid per region (region-based) or softmax over the classes."""
        import torch

        return torch.sigmoid(logits) if self.has_regions else torch.softmax(logits, dim)

    def convert_probabilities_to_segmentation(self, probabilities: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Integer label map from K x *S probabilities (``dim`` is the class axis): the argmax, or for
        regions each region painted with its ``regions_class_order`` value where p > 0.5."""
        if probabilities.shape[dim] != self.num_segmentation_heads:
            raise ValueError(f"expected {self.num_segmentation_heads} probability channels, got shape "
                             f"{tuple(probabilities.shape)}")
        if not self.has_regions:
            return probabilities.argmax(dim)
        return paint_regions(probabilities.movedim(dim, 0), self.regions_class_order)

    def convert_logits_to_segmentation(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return self.convert_probabilities_to_segmentation(self.apply_inference_nonlin(logits.float(), dim), dim)

    def predicted_masks(self, logits: torch.Tensor) -> torch.Tensor:
        """B x K x *S logits -> R x B x *S boolean masks of the scored outputs (regions: p > 0.5,
        which is logit > 0; classes: argmax == label)."""
        if self.has_regions:
            return (logits > 0).transpose(0, 1)
        return self.masks_of(logits.argmax(1))


def paint_regions(probabilities, regions_class_order: Sequence[int]):
    """Label map from R x *S region probabilities (numpy or torch): from background, region ``r`` is
    painted with ``regions_class_order[r]`` where its probability exceeds 0.5, later regions on top."""
    if _is_tensor(probabilities):
        import torch

        seg = torch.zeros(probabilities.shape[1:], dtype=torch.int16, device=probabilities.device)
    else:
        seg = np.zeros(probabilities.shape[1:], dtype=np.uint8 if max(regions_class_order) < 256 else np.uint16)
    for channel, value in enumerate(regions_class_order):
        seg[probabilities[channel] > 0.5] = value
    return seg


def metric_key(key: int | tuple[int, ...]) -> str:
    """nnU-Net's ``summary.json`` key of a label (``"1"``) or a region (``"(1, 2, 3)"``)."""
    return str(tuple(int(v) for v in key)) if isinstance(key, tuple) else str(int(key))


def sort_metric_keys(keys) -> list[str]:
    """Metric keys in order: labels by value, then regions by their label tuples."""
    def order(k: str):
        if k.startswith("("):
            return (1, tuple(int(v) for v in k.strip("(),").split(",") if v.strip()))
        return (0, (int(k),))
    return sorted(keys, key=order)
