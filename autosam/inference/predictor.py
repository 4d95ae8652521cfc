"""Prediction with trained models: one import path for the names of :mod:`autosam.inference`.

The code lives in one module per concept; this module re-exports their public names so that
``from autosam.inference.predictor import ...`` keeps working:

- :mod:`autosam.results_folder`: model-folder naming and discovery (:func:`find_model_folder`),
  the winner of ``autosam_find_best_configuration`` and ``-m auto`` (:func:`resolve_auto_method`);
- :mod:`autosam.inference.model_loading`: the folds' checkpoints and networks (:func:`load_trained_model`,
  :class:`TrainedModel`, :func:`folds_with_checkpoint`);
- :mod:`autosam.inference.case_prediction`: one preprocessed case through the fold ensemble
  (:func:`predict_preprocessed_case`);
- :mod:`autosam.inference.folder_prediction`: whole-folder prediction with sharding
  (:func:`predict_folder`, :func:`predict_folder_with_model`, :func:`select_cases`);
- :mod:`autosam.inference.box_prompts` and :mod:`autosam.inference.prompted`: the user's box and
  prompt files;
- :mod:`autosam.inference.predictor_api`: the in-memory Python API (:class:`Predictor`).
"""
from __future__ import annotations

from autosam.inference.box_prompts import read_user_boxes
from autosam.inference.case_prediction import predict_preprocessed_case
from autosam.inference.folder_prediction import predict_folder, predict_folder_with_model, select_cases
from autosam.inference.model_loading import (
    CHECKPOINT_CHOICES,
    FoldModel,
    TrainedModel,
    checkpoint_file_name,
    folds_with_checkpoint,
    load_plans_and_dataset_json,
    load_trained_model,
)
from autosam.inference.predictor_api import Predictor
from autosam.results_folder import default_method_of, find_model_folder, model_folder_name, resolve_auto_method

__all__ = ["CHECKPOINT_CHOICES", "FoldModel", "Predictor", "TrainedModel", "checkpoint_file_name", "default_method_of",
           "find_model_folder", "folds_with_checkpoint", "load_plans_and_dataset_json", "load_trained_model",
           "model_folder_name", "predict_folder", "predict_folder_with_model", "predict_preprocessed_case",
           "read_user_boxes", "resolve_auto_method", "select_cases"]
