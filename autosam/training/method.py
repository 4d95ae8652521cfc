"""Former home of the method contract, kept so that plugins and code importing
``autosam.training.method`` keep working: the contract lives in :mod:`autosam.method` (below both
training and inference). New code imports from there."""
from autosam.method import (  # noqa: F401
    Method,
    MethodContext,
    StepResult,
    build_options,
    check_label_support,
    coerce,
    label_support_problem,
    rank_batch_sizes,
    rank_foreground_fraction,
)

__all__ = ["Method", "MethodContext", "StepResult", "build_options", "check_label_support", "coerce",
           "label_support_problem", "rank_batch_sizes", "rank_foreground_fraction"]
