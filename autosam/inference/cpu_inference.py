"""A faster forward pass for convolutional networks on the CPU: TorchScript trace, freeze and
``optimize_for_inference``.

Freezing folds the weights into the graph as constants; ``optimize_for_inference`` then lets
oneDNN keep pre-packed (blocked-layout) convolution weights instead of re-packing them on every
call, and fuses what it can. Measured with ``benchmarks/speed/bench_predict_stages.py`` on the
``bench_predict`` UNet (5 stages, 32-320 features, patch 32 x 64 x 64, 2 threads, idle 2-core CPU):
0.64-0.67 s per patch in single calls against 0.68-0.72 s eager (0.70-0.82 s eager with the 8
mirrored copies in one call); outputs agree to ~3e-5. The graph is traced for one batch size: call
it with that batch (a batch of 8 ran slower than eager). Tracing costs a few seconds once per network.

This is not ``torch.compile`` (which the issue forbids by default on the CPU): no code
generation, no compiler toolchain, a plain TorchScript graph of the same operators.

A traced graph is a snapshot of the weights. :func:`frozen_cpu_forward` therefore caches it on the
network together with the parameters' version counters (every in-place update, such as an
optimiser step or ``load_state_dict``, bumps them) and traces again when they changed. Python-level
switches of the module (such as a decoder's ``deep_supervision`` flag) are frozen at tracing time
and are not part of that key: set them the same way on every call.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

_CACHE_ATTR = "_autosam_frozen_cpu_forward"


def _weights_key(network: nn.Module, example_shape: tuple[int, ...]) -> tuple:
    return (example_shape, tuple((id(t), t._version) for t in [*network.parameters(), *network.buffers()]))


def frozen_cpu_forward(network: nn.Module, example_shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A frozen, inference-optimised TorchScript version of ``network`` (in eval mode, on the CPU),
    traced with a zero tensor of ``example_shape`` (B x C x *patch). ``None`` if tracing fails (the
    reason is logged); callers then use the eager network."""
    example_shape = tuple(int(s) for s in example_shape)
    key = _weights_key(network, example_shape)
    cached = network.__dict__.get(_CACHE_ATTR)
    if cached is not None and cached[0] == key:
        return cached[1]
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python values
            example = torch.zeros(example_shape, device=next(network.parameters()).device)
            traced = torch.jit.trace(network, example, check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    except Exception as exc:  # an untraceable network still predicts, only slower
        logger.warning("could not trace %s for CPU inference (%s: %s); using the eager network",
                       type(network).__name__, type(exc).__name__, exc)
        return None
    finally:
        network.train(was_training)
    network.__dict__[_CACHE_ATTR] = (key, frozen)
    return frozen
