"""Helpers shared by the command-line tools, one import path for the names of their modules:

- :mod:`autosam.cli.errors`: the ``@command`` wrapper (errors as one line, ``--verbose``, threads);
- :mod:`autosam.cli.parser`: :class:`Parser` (strict flag spellings, ``did you mean``) and the
  method option flags (``--name value``) passed on to the method;
- :mod:`autosam.cli.arguments`: argument values (folds, step size) and the shared option groups
  (device, prediction, input limits, sharding);
- :mod:`autosam.cli.prediction_jobs`: the per-case progress bar and the ``--num-gpus`` processes.
"""
from __future__ import annotations

from autosam.cli.arguments import (
    add_device,
    add_max_voxels,
    add_prediction_options,
    add_sharding_options,
    apply_fast_path,
    apply_limits,
    check_sharding,
    fold_value,
    positive_int,
    step_size,
)
from autosam.cli.errors import THREADED_COMMANDS, command, describe_os_error, error_text
from autosam.cli.parser import (
    Parser,
    method_option_names,
    method_overrides_from,
    parse_method_overrides,
    parse_with_method_overrides,
    suggest_flag,
)
from autosam.cli.prediction_jobs import CaseProgress, launch_prediction_processes, prediction_share
from autosam.experiment_planning.plans import normalize_configuration
from autosam.utils.precision import default_device, parse_device

__all__ = ["THREADED_COMMANDS", "CaseProgress", "Parser", "add_device", "add_max_voxels", "add_prediction_options",
           "add_sharding_options", "apply_fast_path", "apply_limits", "check_sharding", "command", "default_device", "describe_os_error",
           "error_text", "fold_value", "launch_prediction_processes", "method_option_names", "method_overrides_from",
           "normalize_configuration", "parse_device", "parse_method_overrides", "parse_with_method_overrides",
           "positive_int", "prediction_share", "step_size", "suggest_flag"]
