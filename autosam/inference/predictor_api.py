"""The in-memory Python API (:class:`Predictor`), in the manner of nnU-Net v2's ``nnUNetPredictor``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from autosam.inference.case_prediction import predict_preprocessed_case
from autosam.inference.export import export_prediction, probabilities_to_segmentation
from autosam.inference.folder_prediction import predict_folder_with_model
from autosam.inference.model_loading import TrainedModel, checkpoint_file_name, folds_with_checkpoint, load_trained_model
from autosam.inference.prompted import check_method_takes, predict_case_with_prompts
from autosam.preprocessing.preprocessor import geometry_of_array, preprocess_arrays

logger = logging.getLogger(__name__)


class Predictor:
    """Prediction from Python, in the manner of nnU-Net v2's ``nnUNetPredictor``::

        predictor = Predictor(device="cpu")
        predictor.initialize_from_trained_model_folder("results/Dataset004_Hippocampus/unet__autosamPlans__3d")
        seg = predictor.predict_single_npy_array(image, {"spacing": [1.0, 0.8, 0.8]})

    ``image`` is C x Z x Y x X (one channel per input modality, in the order of ``channel_names``),
    ``spacing`` is (z, y, x) in mm, as :func:`autosam.io.image.read_image` returns them. The array
    goes through exactly the steps a file goes through in :func:`predict_folder` (same
    preprocessing, fold ensemble and export), so the same image gives the same mask either way.
    ``cpu_bf16=True`` predicts on the CPU under bfloat16 autocast (as ``--bf16``).
    """

    def __init__(self, use_mirroring: bool = True, device: str | torch.device = "cpu", progress: bool = False,
                 step_size: float = 0.5, cpu_bf16: bool = False):
        if not 0 < step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {step_size}")
        self.use_mirroring = use_mirroring
        self.device = device
        self.progress = progress
        self.step_size = step_size
        self.cpu_bf16 = cpu_bf16
        self.model: TrainedModel | None = None

    def initialize_from_trained_model_folder(self, model_folder: str | Path, use_folds: Sequence[int | str] | None = None,
                                             checkpoint_name: str = "checkpoint_final.pth",
                                             method_overrides: dict | None = None) -> "Predictor":
        """Load the folds (default: every fold that has the checkpoint, logged) of a model folder
        ``<method>__<plans>__<configuration>``, anywhere on disk."""
        folds = list(use_folds) if use_folds else folds_with_checkpoint(model_folder, checkpoint_name)
        if not use_folds:
            logger.info("folds with %s in %s: %s", checkpoint_file_name(checkpoint_name), model_folder,
                        ", ".join(map(str, folds)))
        self.model = load_trained_model(model_folder, folds, checkpoint_name, self.device, method_overrides)
        self.model.ctx.step_size = self.step_size
        self.model.ctx.cpu_bf16 = self.cpu_bf16
        return self

    def _require_model(self) -> TrainedModel:
        if self.model is None:
            raise RuntimeError("call initialize_from_trained_model_folder first")
        return self.model

    def predict_single_npy_array(self, image: np.ndarray, properties: dict, output_file_truncated: str | Path | None = None,
                                 save_or_return_probabilities: bool = False, prompts: dict | None = None):
        """Segment one image held in memory.

        :param image: C x Z x Y x X array.
        :param properties: ``{"spacing": [z, y, x]}``, optionally ``origin`` and ``direction``
            (SimpleITK convention, used when writing a file), or autosam case properties with ``geometry``.
        :param prompts: label -> :class:`autosam.prompts.LabelPrompts` in voxels of ``image`` (z, y, x), for a
            method that takes them (:meth:`Method.predict_with_prompts`; others refuse with a clear error).
        :param output_file_truncated: when given, write ``<output_file_truncated><file_ending>``
            (and with ``save_or_return_probabilities`` the ``.npz``/``.json`` next to it) and return its path.
        :returns: the label map (Z x Y x X, uint8 or int16) in the image's geometry, or
            ``(label map, probabilities K x Z x Y x X)`` with ``save_or_return_probabilities``.
        """
        model = self._require_model()
        image = np.asarray(image)
        geometry = geometry_of_array(image, properties)
        if prompts is not None:
            check_method_takes(model.method, {"image": prompts}, "prompts")
            for label, p in prompts.items():
                p.validate(tuple(image.shape[1:]), label)
        data, _seg, case_properties = preprocess_arrays(image, geometry, model.plans, model.configuration.name)
        if prompts is not None:
            probs = predict_case_with_prompts(model.method, model.folds, data, case_properties, model.ctx, prompts,
                                              use_mirroring=self.use_mirroring)
        else:
            probs = predict_preprocessed_case(model.method, model.folds, data, case_properties, model.ctx,
                                              self.use_mirroring, progress=self.progress)
        if output_file_truncated is not None:
            out = Path(f"{output_file_truncated}{model.dataset_json['file_ending']}")
            export_prediction(probs, case_properties, model.configuration, out, save_or_return_probabilities,
                              model.ctx.label_manager)
            return out
        return probabilities_to_segmentation(probs, case_properties, model.configuration,
                                             return_probabilities=save_or_return_probabilities,
                                             label_manager=model.ctx.label_manager)

    def predict_from_list_of_npy_arrays(self, images: Sequence[np.ndarray], properties: Sequence[dict],
                                        output_files_truncated: Sequence[str | Path] | None = None,
                                        save_probabilities: bool = False) -> list:
        """:meth:`predict_single_npy_array` for each image (``properties`` one dict per image, or a
        single dict shared by all); returns the label maps, or the written paths when
        ``output_files_truncated`` is given."""
        if isinstance(properties, dict):
            properties = [properties] * len(images)
        if len(properties) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(properties)} properties")
        if output_files_truncated is not None and len(output_files_truncated) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(output_files_truncated)} output file name(s)")
        results = []
        for i, (image, props) in enumerate(zip(images, properties)):
            out = output_files_truncated[i] if output_files_truncated is not None else None
            results.append(self.predict_single_npy_array(image, props, out, save_probabilities))
        return results

    def predict_from_files(self, input_folder: str | Path, output_folder: str | Path, save_probabilities: bool = False,
                           num_processes: int = 2) -> list[Path]:
        """Every case of ``input_folder`` into ``output_folder`` (as ``autosam_predict``)."""
        return predict_folder_with_model(self._require_model(), input_folder, output_folder, self.use_mirroring,
                                         save_probabilities, num_processes, patch_progress=self.progress,
                                         step_size=self.step_size, cpu_bf16=self.cpu_bf16)
