"""One preprocessed case through the fold ensemble: the mean of each fold's class probabilities.

Input images go through the same preprocessing as training first
(:func:`autosam.preprocessing.preprocessor.preprocess_case`, never a label); the result is on the
preprocessed grid, exported in the input's exact geometry by :mod:`autosam.inference.export`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from autosam.inference.model_loading import FoldModel
from autosam.method import Method, MethodContext
from autosam.utils import precision


def predict_preprocessed_case(method: Method, networks: Sequence[nn.Module | FoldModel], data, properties: dict | None,
                              ctx: MethodContext, use_mirroring: bool = True, progress: bool | Callable = False,
                              boxes: dict[int, list[np.ndarray]] | None = None,
                              predict: Callable[[nn.Module, torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Fold-ensemble probabilities (K x Z x Y x X, float32, CPU) of one preprocessed case.

    ``data`` is the preprocessed image (C x Z x Y x X). Each network predicts through
    ``method.predict_volume`` (on CUDA under autocast in the training precision,
    :func:`autosam.utils.precision.amp_dtype`); the result is the mean of the folds' probabilities. The case's
    properties are visible to the method as ``ctx.extra["case_properties"]`` while it predicts.
    ``boxes`` (label -> boxes on the preprocessed grid) are passed on as box prompts to a method
    with ``accepts_boxes`` (it then skips its own localisation). ``predict(network, data, i)`` replaces
    ``method.predict_volume`` for the ``i``-th network (e.g. ``predict_with_prompts``,
    :mod:`autosam.inference.prompted`).
    """
    if not networks:
        raise ValueError("predict_preprocessed_case needs at least one network")
    if boxes is not None and not method.accepts_boxes:
        raise ValueError(f"method {method.name!r} takes no box prompts")
    box_kw = {} if boxes is None else {"boxes": boxes}
    if isinstance(data, torch.Tensor):
        tensor = data
    else:  # a read-only (memory-mapped) array is copied: torch warns about non-writable arrays
        tensor = torch.from_numpy(np.require(np.asarray(data, dtype=np.float32), requirements=["C", "W"]))
    if tensor.ndim != 4:
        raise ValueError(f"preprocessed data must be C x Z x Y x X, got shape {tuple(tensor.shape)}")
    expected = (ctx.num_classes, *tensor.shape[1:])
    previous = ctx.extra.get("case_properties")
    ctx.extra["case_properties"] = properties
    total: torch.Tensor | None = None
    try:
        for i, item in enumerate(networks):
            network = item.network if isinstance(item, FoldModel) else item
            if isinstance(item, FoldModel):
                method.load_extra_state(item.method_state)
            network.eval()
            # the training precision (bf16 or fp16 on CUDA), for every method; bf16 on the CPU when asked
            with precision.autocast(ctx.device, precision.amp_dtype(ctx.device, cpu_bf16=ctx.cpu_bf16)):
                if predict is not None:
                    probs = predict(network, tensor, i)
                else:
                    probs = method.predict_volume(network, tensor, ctx, use_mirroring=use_mirroring, progress=progress,
                                                  **box_kw)
            probs = probs.detach().to("cpu", torch.float32)
            if tuple(probs.shape) != expected:
                raise ValueError(f"method {method.name!r} predicted shape {tuple(probs.shape)}; expected {expected}")
            if total is None:
                total = probs if len(networks) == 1 else probs.clone()
            else:
                total += probs
    finally:
        ctx.extra["case_properties"] = previous
    if len(networks) > 1:
        total /= len(networks)
    return total
