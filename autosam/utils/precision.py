"""Mixed precision and device helpers shared by training, inference and the SAM backbones.

One rule decides the autocast dtype everywhere (training, the sliding window, ``SamBackbone.encode``),
so that a network predicts in the precision it was trained in:

- CUDA with native bf16 (Ampere and newer): bf16, no gradient scaling;
- CUDA without native bf16 (Volta, Turing): fp16 with a :class:`torch.amp.GradScaler`. This torch's
  ``torch.cuda.is_bf16_supported()`` also answers ``True`` when bf16 is only emulated (slowly), hence
  ``including_emulation=False``;
- CPU and MPS: no autocast (float32); prediction on the CPU runs in bf16 when asked (``--bf16``, or
  ``--fast`` on a CPU with native bf16, :func:`cpu_bf16_native`): the precision a GPU predicts in.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext


class _Torch:
    """torch, imported on first use: the commands that import this module for ``parse_device`` or
    ``OOM_HINT`` (planning, preprocessing, evaluation, ``--help``) need not pay torch's seconds of
    start-up."""

    def __getattr__(self, name: str):
        import torch as real

        return getattr(real, name)


torch = _Torch()

OOM_HINT = ("the device ran out of memory; try a smaller batch or patch (re-plan with a lower "
            "--gpu-memory-target-gb), fewer --num-workers, another GPU (--device cuda:N), or --device cpu")


def default_device() -> str:
    """``cuda`` when available, else ``mps`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def parse_device(text: str) -> str:
    """Check a ``--device`` value: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (argparse ``type=``)."""
    import argparse

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; use cpu, cuda, cuda:N or mps")
    return str(dev)


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` (a CUDA device) computes in bf16 natively, not through emulation."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch without the argument: compute capability >= 8.0 is native bf16
            return torch.cuda.get_device_capability(device)[0] >= 8


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): oneDNN's bf16 convolutions then
    cost a fraction of float32's (benchmarks.md, the fast CPU path); without it bf16 is emulated."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:  # an unusual build: treat as not native
        return False


def amp_dtype(device: torch.device | str, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 where native, fp16 on other CUDA cards, bf16 on the CPU
    with ``cpu_bf16`` (prediction with ``--bf16``), ``None`` (fp32) elsewhere."""
    device = torch.device(device)
    if device.type == "cpu" and cpu_bf16:
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if bf16_native(device) else torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None = None, enabled: bool = True):
    """Autocast on ``device`` in ``dtype`` (default :func:`amp_dtype`); a null context when there is none."""
    device = torch.device(device)
    dtype = amp_dtype(device) if dtype is None else dtype
    if not enabled or dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device | str = "cuda"):
    """A :class:`torch.amp.GradScaler` for fp16 training, ``None`` otherwise (bf16 and fp32 need none)."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def no_autocast(device_type: str):
    """Leave autocast for a block that must run in float32 (norms and costs that overflow in fp16);
    a null context on devices without autocast (``meta``)."""
    if not torch.amp.is_autocast_available(device_type):
        return nullcontext()
    return torch.autocast(device_type, enabled=False)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of any device."""
    real = sys.modules.get("torch")  # no torch imported: no torch error
    return (real is not None and isinstance(exc, real.OutOfMemoryError)) or "out of memory" in str(exc).lower()


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the channel axis (dim 1) of ``B x C x *spatial`` in float32, outside autocast.

    SAM's LayerNorm2d and SAM-Med3D's LayerNorm3d square activations; in fp16 the squares overflow
    (65504) on real images. The result is float32 (the next autocast op casts it back down).
    """
    with no_autocast(x.device.type):
        x = x.float()
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + eps)
        shape = (-1,) + (1,) * (x.dim() - 2)
        return weight.float().view(shape) * x + bias.float().view(shape)
