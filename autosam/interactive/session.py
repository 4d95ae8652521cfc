"""``InteractiveSession``: one image, encoded once, answering prompts with the updated mask.

What a viewer (napari, 3D Slicer, a web viewer) calls; it has no GUI dependency::

    from autosam.interactive.session import InteractiveSession

    s = InteractiveSession("results/Dataset004_Hippocampus/medlsam__autosamPlans__3d", "case.nii.gz", folds=(0,))
    mask = s.add_box(10, 20, 14, 25, 40, 30)        # label 1 (set_label changes it): Z x Y x X bool
    mask = s.add_point(18, 31, 20, positive=False)  # a click: decoder passes, no encoder pass
    mask = s.undo()                                 # back to the previous state (no computation)
    s.reset()                                       # every prompt gone
    s.segmentation                                  # the label map of every label, input grid

The image (a file, or an array with its spacing) is preprocessed once with the model's plans
(crop, resampling, normalisation: the same steps as ``autosam_predict``) and encoded once by every
fold (:meth:`autosam.method.Method.encode_image`, e.g. SAM's image embeddings). Each prompt change
predicts with the cached encodings (:meth:`autosam.method.Method.predict_with_prompts`), so a click
costs the method's decoder, not its encoder. Prompts are given and masks returned on the INPUT
image's grid (voxel indices ``z, y, x`` in the array order of :func:`autosam.io.image.read_image`);
:mod:`autosam.inference.prompt_mapping` maps them onto the preprocessed grid.

For a method that takes a previous mask (``"mask"`` in its ``prompt_kinds``), the current mask of a
label is passed back with its prompts after the first answer, as the interactive challenge's
protocol does (``feed_back_mask=False`` turns it off). Methods whose encoding is all of their work
(e.g. ``promptunet``: ``encode_image`` returns None) run a full pass per prompt.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from autosam.prompts import Box2D, LabelPrompts, Point


@dataclass
class _State:
    """Prompts per label (input grid) and the label map they gave."""

    prompts: dict[int, LabelPrompts] = field(default_factory=dict)
    segmentation: np.ndarray | None = None


class InteractiveSession:
    """One image of a trained model, encoded once; prompts in, masks out (module docstring).

    :param model: a trained model folder (``.../METHOD__PLANS__CONFIG``) or a loaded
        :class:`autosam.inference.predictor.TrainedModel`.
    :param image: an image file, or an array ``Z x Y x X`` (one channel) / ``C x Z x Y x X``.
    :param spacing: ``(z, y, x)`` voxel size in mm of an array image (files carry their own).
    :param folds: folds to ensemble (a folder only); ``checkpoint``, ``device`` as ``autosam_predict``.
    :param label: the label the prompts are for at first (:meth:`set_label`).
    """

    def __init__(self, model, image, spacing: Sequence[float] | None = None, *, folds: Sequence[int | str] = (0,),
                 checkpoint: str = "final", device: str | None = "cpu", label: int = 1, feed_back_mask: bool = True,
                 use_mirroring: bool = False):
        from autosam.inference.predictor import TrainedModel, load_trained_model
        from autosam.inference.prompted import accepted_prompt_kinds, encode_case
        from autosam.preprocessing.preprocessor import preprocess_arrays

        self.model = model if isinstance(model, TrainedModel) else load_trained_model(model, folds, checkpoint, device)
        self.kinds = accepted_prompt_kinds(self.model.method)
        if not self.kinds:
            from autosam.inference.prompted import methods_taking_prompts

            raise ValueError(f"method {self.model.method.name!r} takes no prompts (it segments automatically); methods "
                             f"that do: {', '.join(methods_taking_prompts()) or 'none installed'}")
        array, geometry = self._read(image, spacing)
        self.image_shape = tuple(int(s) for s in array.shape[1:])
        self.data, _, self.properties = preprocess_arrays(array, geometry, self.model.plans, self.model.configuration.name)
        start = time.perf_counter()
        self.caches = encode_case(self.model.method, self.model.folds, self.data, self.properties, self.model.ctx)
        #: seconds of the one-off encoding, and of the last answer
        self.encode_seconds = time.perf_counter() - start
        self.last_seconds = 0.0
        self.feed_back_mask = feed_back_mask and "mask" in self.kinds
        self.use_mirroring = use_mirroring
        self.label = self._check_label(label)
        self._history: list[_State] = [_State()]

    # ------------------------------------------------------------------ input
    @staticmethod
    def _read(image, spacing):
        from autosam.io.image import ImageGeometry, read_image

        if isinstance(image, (str, Path)):
            array, geometry = read_image(image)
            array = np.asarray(array, dtype=np.float32)[None]
            if spacing is not None:
                raise ValueError("spacing is read from the image file; give it only with an array")
            return array, geometry
        array = np.asarray(image, dtype=np.float32)
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4:
            raise ValueError(f"image must be Z x Y x X or C x Z x Y x X, got shape {np.asarray(image).shape}")
        if spacing is None or len(spacing) != 3:
            raise ValueError("an array image needs spacing=(z, y, x) in mm")
        return array, ImageGeometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0),
                                    (1, 0, 0, 0, 1, 0, 0, 0, 1), tuple(array.shape[1:]))

    def _check_label(self, label: int) -> int:
        labels = self.model.ctx.label_manager.foreground_labels
        if int(label) not in labels:
            raise ValueError(f"label {label}: the model segments labels {', '.join(map(str, labels))}")
        return int(label)

    # ------------------------------------------------------------------ state
    @property
    def prompts(self) -> dict[int, LabelPrompts]:
        """The current prompts per label (input grid; previous masks not included)."""
        return self._history[-1].prompts

    @property
    def segmentation(self) -> np.ndarray:
        """The current label map on the input grid (zeros before the first prompt)."""
        seg = self._history[-1].segmentation
        return seg if seg is not None else np.zeros(self.image_shape, dtype=np.uint8)

    def mask(self, label: int | None = None) -> np.ndarray:
        """The current mask of ``label`` (default: the session's label), bool ``Z x Y x X``."""
        return self.segmentation == (self.label if label is None else self._check_label(label))

    def set_label(self, label: int) -> np.ndarray:
        """Direct the next prompts to ``label``; returns its current mask."""
        self.label = self._check_label(label)
        return self.mask()

    # ------------------------------------------------------------------ prompts
    def add_box(self, z0: int, y0: int, x0: int, z1: int, y1: int, x1: int) -> np.ndarray:
        """A 3D box (inclusive voxel indices) for the current label; returns its updated mask."""
        return self._add("box3d", lambda p: p.boxes3d.append(tuple(int(v) for v in (z0, y0, x0, z1, y1, x1))))

    def add_box2d(self, z: int, y0: int, x0: int, y1: int, x1: int, z_lo: int, z_hi: int) -> np.ndarray:
        """The challenge's box: a 2D box on slice ``z`` and the z range ``z_lo..z_hi`` of the structure
        (replaces an earlier 2D box of the label)."""
        b = Box2D(z=int(z), y0=int(y0), x0=int(x0), y1=int(y1), x1=int(x1), z_lo=int(z_lo), z_hi=int(z_hi))
        return self._add("box2d", lambda p: setattr(p, "box2d", b))

    def add_point(self, z: int, y: int, x: int, positive: bool = True) -> np.ndarray:
        """A click: positive inside the structure, negative outside."""
        return self._add("points", lambda p: p.points.append(Point(int(z), int(y), int(x), bool(positive))))

    def undo(self) -> np.ndarray:
        """Back to the state before the last prompt (its answer was kept: nothing is computed)."""
        if len(self._history) > 1:
            self._history.pop()
        return self.mask()

    def reset(self) -> np.ndarray:
        """Remove every prompt of every label (undo brings them back)."""
        self._history.append(_State())
        return self.mask()

    def _add(self, kind: str, change) -> np.ndarray:
        if kind not in self.kinds:
            raise ValueError(f"method {self.model.method.name!r} does not take {kind} prompts; it takes: "
                             f"{', '.join(sorted(self.kinds))}")
        prompts = copy.deepcopy(self.prompts)
        change(prompts.setdefault(self.label, LabelPrompts()))
        prompts[self.label].validate(self.image_shape, self.label)
        segmentation = self._predict(prompts)
        self._history.append(_State(prompts, segmentation))
        return self.mask()

    def _predict(self, prompts: dict[int, LabelPrompts]) -> np.ndarray:
        from autosam.inference.export import probabilities_to_segmentation
        from autosam.inference.prompted import predict_case_with_prompts

        start = time.perf_counter()
        given = copy.deepcopy(prompts)
        if self.feed_back_mask:
            for label, p in given.items():
                if self._history[-1].segmentation is not None and label in self._history[-1].prompts:
                    p.previous_mask = self._history[-1].segmentation == label
        probs = predict_case_with_prompts(self.model.method, self.model.folds, self.data, self.properties,
                                          self.model.ctx, given, use_mirroring=self.use_mirroring, caches=self.caches)
        seg = probabilities_to_segmentation(probs, self.properties, self.model.configuration,
                                            label_manager=self.model.ctx.label_manager)
        self.last_seconds = time.perf_counter() - start
        return seg
