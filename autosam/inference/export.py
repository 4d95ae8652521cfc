"""Export of predicted probabilities in the geometry of the original image.

The network predicts on the preprocessed grid: cropped to the non-zero region and resampled to the
plans' target spacing. Export undoes both:

1. resample to ``shape_after_cropping_and_before_resampling`` in logit space, as nnU-Net resamples
   its logits: linear interpolation (nnU-Net's order 1 for probabilities) of the log-probabilities
   (softmax) or of the logits log(p / (1 - p)) (sigmoid regions), then back to probabilities.
   log p_k = z_k - logsumexp(z) differs from the logit z_k by a term that is the same for every
   class, so interpolating it and taking the softmax or argmax gives exactly nnU-Net's result
   from the probabilities the sliding window returns (interpolating the probabilities themselves
   moved 0.1 % of the example dataset's voxels at class borders, Dice -0.003). When the spacing is
   anisotropic (coarsest / finest > the plans' ``separate_z_anisotropy_threshold``) the coarse axis
   is resampled separately with ``label_order_z`` (0 = nearest), as preprocessing did;
2. take the argmax (the class index is the label value, labels being 0..K-1), or for a region-based
   dataset paint each region with its ``regions_class_order`` value where its sigmoid probability
   exceeds 0.5 (:meth:`autosam.io.labels.LabelManager.convert_probabilities_to_segmentation`);
3. un-crop into ``shape_before_cropping`` (background outside the crop box) and write with the
   original spacing, origin and direction.

Without ``save_probabilities`` the resampling runs a few output slices at a time, so the full
resolution K x Z x Y x X array never exists; with it, ``<case>.npz`` (``probabilities``: K x Z x Y x X
float32 in the original geometry, background 1 outside the crop box) and ``<case>.json`` are written.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autosam.experiment_planning.plans import ConfigurationPlan, ResamplingPlan
from autosam.io.image import ImageGeometry, file_ending_of, write_image
from autosam.preprocessing.resampling import separate_axis
from autosam.utils.files import save_npz, write_json

logger = logging.getLogger(__name__)

REQUIRED_PROPERTIES = ("geometry", "shape_before_cropping", "bbox_used_for_cropping",
                       "shape_after_cropping_and_before_resampling")


# ------------------------------------------------------------------------------------ resampling
def _source_index(out_size: int, in_size: int, start: int, stop: int, linear: bool):
    """Source indices/weights of output positions ``start:stop`` (align_corners=False convention)."""
    scale = in_size / out_size
    pos = (torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale
    if not linear:
        idx = torch.clamp(torch.floor(pos).long(), 0, in_size - 1)
        return idx, idx, torch.zeros(len(idx), dtype=torch.float32)
    src = torch.clamp(pos - 0.5, min=0.0)
    i0 = torch.clamp(torch.floor(src).long(), max=in_size - 1)
    i1 = torch.clamp(i0 + 1, max=in_size - 1)
    return i0, i1, (src - i0.double()).float()


# p (and 1 - p for a region) is clamped to at least TINY before the log: a float32 softmax
# underflows to 0 (log: -inf) for logit gaps beyond ~100, far past any gap that decides an argmax
_TINY = 1e-30


def to_logit_space(probabilities: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """log p (softmax classes) or log(p / (1 - p)) (sigmoid regions), float32: the space nnU-Net
    resamples in (its logits, up to a per-voxel constant for the softmax)."""
    p = probabilities.float().clamp(_TINY, 1.0)
    if not sigmoid:
        return p.log()
    return p.log() - (1.0 - p).clamp_min(_TINY).log()


def from_logit_space(values: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """The inverse of :func:`to_logit_space`: a softmax over the classes (dim 0) or a sigmoid."""
    return values.sigmoid() if sigmoid else torch.softmax(values, dim=0)


def resample_probabilities(probabilities: torch.Tensor, new_shape: Sequence[int], separate: int | None = None,
                           order_separate: int = 0, z_range: tuple[int, int] | None = None,
                           transform=None) -> torch.Tensor:
    """Resample K x Z x Y x X values to K x ``new_shape`` (linear; the axis ``separate`` with
    ``order_separate``: 0 nearest, otherwise linear). ``z_range`` returns only those output slices.
    ``transform`` (e.g. :func:`to_logit_space`) is applied to the input slices that the output
    slices read, before interpolating, so a chunked caller never transforms the whole volume."""
    new_shape = [int(s) for s in new_shape]
    z0, z1 = z_range if z_range is not None else (0, new_shape[0])
    in_shape = list(probabilities.shape[1:])
    linear = [not (separate == axis and order_separate == 0) for axis in range(3)]
    if in_shape == new_shape:
        result = probabilities[:, z0:z1]
        if transform is not None:
            result = transform(result)
    else:
        i0, i1, w = _source_index(new_shape[0], in_shape[0], z0, z1, linear[0])
        lo, hi = int(i0.min()), int(i1.max()) + 1
        window = probabilities[:, lo:hi].float()
        if transform is not None:
            window = transform(window)
        a = window.index_select(1, i0 - lo)
        result = torch.lerp(a, window.index_select(1, i1 - lo), w.view(1, -1, 1, 1)) if linear[0] else a
        for axis in (1, 2):
            if in_shape[axis] != new_shape[axis]:
                j0, j1, wj = _source_index(new_shape[axis], in_shape[axis], 0, new_shape[axis], linear[axis])
                a = result.index_select(axis + 1, j0)
                if linear[axis]:
                    shape = [1, 1, 1, 1]
                    shape[axis + 1] = -1
                    a = torch.lerp(a, result.index_select(axis + 1, j1), wj.view(shape))
                result = a
    return result


# ------------------------------------------------------------------------------------ export
def check_properties(properties: dict) -> None:
    missing = [k for k in REQUIRED_PROPERTIES if k not in properties]
    if missing:
        raise ValueError(f"case properties lack {missing}; they come from autosam's preprocessing (preprocess_case)")


def _resampling_of(configuration) -> ResamplingPlan:
    if configuration is None:
        return ResamplingPlan()
    if isinstance(configuration, ResamplingPlan):
        return configuration
    if isinstance(configuration, ConfigurationPlan):
        return configuration.resampling
    raise TypeError(f"export needs a ConfigurationPlan or ResamplingPlan, got {type(configuration).__name__}")


def probabilities_to_segmentation(probabilities, properties: dict, configuration=None,
                                  return_probabilities: bool = False, chunk_voxels: int = 1 << 24,
                                  label_manager=None):
    """Label map (and optionally probabilities) in the original image geometry.

    ``label_manager``: the dataset's :class:`~autosam.io.labels.LabelManager`; needed for a
    region-based dataset (sigmoid probabilities per region), optional otherwise (argmax).

    :returns: ``segmentation`` (Z x Y x X, uint8 or int16) or ``(segmentation, probabilities)``.
    """
    check_properties(properties)
    probs = torch.as_tensor(probabilities).detach().to("cpu", torch.float32)
    if probs.ndim != 4:
        raise ValueError(f"probabilities must be K x Z x Y x X, got shape {tuple(probs.shape)}")
    num_classes = probs.shape[0]
    crop_shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    full_shape = [int(s) for s in properties["shape_before_cropping"]]
    bbox = [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"]]
    if [b - a for a, b in bbox] != crop_shape:
        raise ValueError(f"crop box {bbox} does not match shape_after_cropping_and_before_resampling {crop_shape}")
    resampling = _resampling_of(configuration)
    original_spacing = properties["geometry"]["spacing"]
    current_spacing = properties.get("spacing", original_spacing)
    axis = separate_axis(current_spacing, original_spacing, resampling.separate_z_anisotropy_threshold)
    box = tuple(slice(a, b) for a, b in bbox)

    regions = label_manager is not None and label_manager.has_regions
    if label_manager is not None and num_classes != label_manager.num_segmentation_heads:
        raise ValueError(f"{num_classes} probability channels, but the labels need {label_manager.num_segmentation_heads}")
    top_label = max(label_manager.regions_class_order) if regions else num_classes - 1
    seg_dtype = np.uint8 if top_label < 256 else np.int16
    segmentation = np.zeros(full_shape, dtype=seg_dtype)
    seg_crop = segmentation[box]
    full_probs = None
    if return_probabilities:
        full_probs = np.zeros((num_classes, *full_shape), dtype=np.float32)
        if not regions:
            full_probs[0] = 1.0  # background outside the crop box (regions: probability 0 there)
    per_slice = num_classes * crop_shape[1] * crop_shape[2]
    step = max(1, chunk_voxels // max(per_slice, 1))
    resampled = list(probs.shape[1:]) != crop_shape
    to_logits = (lambda p: to_logit_space(p, sigmoid=regions)) if resampled else None  # noqa: E731
    for z0 in range(0, crop_shape[0], step):
        z1 = min(crop_shape[0], z0 + step)
        block = resample_probabilities(probs, crop_shape, axis, resampling.label_order_z, z_range=(z0, z1),
                                       transform=to_logits)
        if resampled and (regions or full_probs is not None):
            block = from_logit_space(block, sigmoid=regions)
        # the argmax of log-probabilities is the argmax of the probabilities
        labels = label_manager.convert_probabilities_to_segmentation(block) if regions else torch.argmax(block, dim=0)
        seg_crop[z0:z1] = labels.numpy().astype(seg_dtype, copy=False)
        if full_probs is not None:
            full_probs[(slice(None), slice(bbox[0][0] + z0, bbox[0][0] + z1), box[1], box[2])] = block.numpy()
    return (segmentation, full_probs) if return_probabilities else segmentation


def output_stem(output_file: str | Path) -> Path:
    """``out/case.nii.gz`` -> ``out/case``."""
    output_file = Path(output_file)
    ending = file_ending_of(output_file)
    return output_file.with_name(output_file.name[: -len(ending)] if ending else output_file.name)


def export_prediction(probabilities, properties: dict, configuration, output_file: str | Path,
                      save_probabilities: bool = False, label_manager=None) -> Path:
    """Write the label map of ``probabilities`` (K x Z x Y x X on the preprocessed grid) to
    ``output_file`` with exactly the original image's shape, origin, spacing and direction.

    With ``save_probabilities``, also ``<case>.npz`` (``probabilities``, K x Z x Y x X float32 in the
    original geometry) and ``<case>.json`` (geometry, class values of the probability channels, or
    for a region-based dataset the regions and ``regions_class_order``: then the channels are the
    regions' sigmoid probabilities). Every file is written atomically. Returns ``output_file``.
    """
    output_file = Path(output_file)
    check_properties(properties)
    geometry = ImageGeometry.from_dict(properties["geometry"])
    if list(geometry.shape) != [int(s) for s in properties["shape_before_cropping"]]:
        raise ValueError(f"{output_file}: properties' geometry shape {geometry.shape} differs from "
                         f"shape_before_cropping {properties['shape_before_cropping']}")
    result = probabilities_to_segmentation(probabilities, properties, configuration, return_probabilities=save_probabilities,
                                           label_manager=label_manager)
    if save_probabilities:
        segmentation, probs = result
        stem = output_stem(output_file)
        save_npz(stem.with_name(stem.name + ".npz"), probabilities=probs)
        info = {"geometry": geometry.to_dict(), "probabilities_shape": list(probs.shape), "label_file": output_file.name}
        if label_manager is not None and label_manager.has_regions:
            info.update(regions=[list(r) for r in label_manager.foreground_regions], region_names=label_manager.region_names,
                        regions_class_order=label_manager.regions_class_order)
        else:
            info["class_values"] = list(range(probs.shape[0]))
        write_json(stem.with_name(stem.name + ".json"), info)
    else:
        segmentation = result
    write_image(output_file, segmentation, geometry)
    return output_file
