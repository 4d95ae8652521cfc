"""Checkpoints: everything needed to resume training exactly, or to predict with the model later.

A checkpoint is a dict written atomically with :func:`torch.save`:

``format_version``, ``method`` (name), ``plugin`` (entry-point name), ``distribution`` and
``version`` (the Python distribution that provided the method, e.g. ``autosam 0.1.0``),
``options`` (the method's options as a dict), ``epoch`` (number of *completed* epochs),
``num_epochs``, ``network`` (state dict), ``optimizer``, ``scheduler``, ``grad_scaler`` (state dicts
or ``None``), ``rng`` (python, numpy, torch, cuda), ``logger`` (the epoch history), ``best_ema``,
``method_state`` (:meth:`Method.extra_state`), and ``dataset_name``, ``plans_name``,
``configuration``, ``fold``, ``torch_version``.

Since format 2 a checkpoint holds tensors and plain Python types only (numpy's RNG state is
stored as a tensor, numpy scalars as Python numbers, paths as strings), so it is read with
``torch.load(weights_only=True)`` and loading someone else's model cannot run code. Format-1
checkpoints pickled numpy objects; they load only when declared trusted
(``AUTOSAM_TRUST_CHECKPOINT_PICKLE=1`` or ``trust=True``), and a training run resumed from one
writes format 2 from then on.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import random
import warnings
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from autosam.plugins import UnknownNameError, get_plugin_system
from autosam.utils.files import UntrustedPickleError, torch_load, torch_save

logger = logging.getLogger(__name__)
CHECKPOINT_FORMAT_VERSION = 2
#: Types besides tensors and plain Python types that a checkpoint may hold (MultiStepLR's milestones).
SAFE_TYPES = (collections.Counter,)


class MissingPluginError(RuntimeError):
    """A checkpoint's method is not installed; the message names the package to install."""


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module behind ``torch.compile`` (whose state dict keys carry an ``_orig_mod.`` prefix)
    and behind ``DistributedDataParallel`` (``module.``)."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


COMPILE_PREFIX = "_orig_mod."


DDP_PREFIX = "module."


def strip_compile_prefix(state_dict: dict) -> dict:
    """A state dict without the ``_orig_mod.`` prefixes that a ``torch.compile``d module's
    ``state_dict()`` puts on every key (at any depth), so that it loads into the plain module;
    also without the ``module.`` prefix of a ``DistributedDataParallel`` wrapper when every key has
    it (autosam saves the bare network, but weights saved from a wrapped one load too)."""
    if state_dict and all(k.startswith(DDP_PREFIX) for k in state_dict):
        state_dict = type(state_dict)((k[len(DDP_PREFIX):], v) for k, v in state_dict.items())
    if not any(COMPILE_PREFIX in k for k in state_dict):
        return state_dict
    return type(state_dict)((k.replace(COMPILE_PREFIX, ""), v) for k, v in state_dict.items())


def network_device(network: torch.nn.Module) -> torch.device:
    param = next(iter(network.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def rng_state(device: torch.device | str | None = None) -> dict:
    """Python, numpy and torch CPU generator states (as tensors and plain types), plus the
    generator of the training ``device`` when it is a CUDA device (only that one: the run may be
    resumed with fewer GPUs visible)."""
    np_state = np.random.get_state(legacy=False)
    numpy_state = {"bit_generator": np_state["bit_generator"],
                   "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                   "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                   "gauss": float(np_state["gauss"])}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | str | None = None) -> None:
    """Restore :func:`rng_state`; the CUDA generator state goes to ``device`` (the device training
    continues on), whatever the device index at saving time. Checkpoints of older versions hold
    one state per visible GPU: the one of ``device``'s index is used when it exists."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    if isinstance(np_state, dict) and "key" in np_state:  # format 2
        np_state = {"bit_generator": np_state["bit_generator"],
                    "state": {"key": np.asarray(np_state["key"], dtype=np.int64).astype(np.uint32), "pos": np_state["pos"]},
                    "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    device = torch.device(device) if device is not None else None
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # per-GPU states of an older checkpoint
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            logger.warning("the checkpoint has no CUDA generator state for %s; its generator is not restored", device)
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def options_dict(options: Any) -> dict:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(vars(options))


def save_checkpoint(path: Path, *, method_entry, options, network, optimizer=None, scheduler=None, grad_scaler=None,
                    epoch: int, num_epochs: int, history: dict | None = None, best_ema: float | None = None,
                    method_state: dict | None = None, **info: Any) -> None:
    """Write a checkpoint atomically. ``method_entry`` is the method's registry entry
    (:class:`autosam.plugins.Entry`), which knows the plugin and its distribution version."""
    ckpt = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "method": method_entry.obj.name,
        "plugin": method_entry.plugin,
        "distribution": method_entry.distribution,
        "version": method_entry.version,
        "options": options_dict(options),
        "epoch": int(epoch),
        "num_epochs": int(num_epochs),
        "network": unwrap(network).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
        "rng": rng_state(network_device(network)),
        "logger": history or {},
        "best_ema": best_ema,
        "method_state": method_state or {},
        "torch_version": torch.__version__,
        **info,
    }
    torch_save(path, plain(ckpt))


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with numpy scalars as Python numbers, numpy arrays as tensors, paths as strings and
    enums as their values, so that ``torch.load(weights_only=True)`` reads it back. Any other
    object is a ``TypeError`` naming where it is (e.g. ``checkpoint['method_state']['x']``)."""
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return obj
    if isinstance(obj, (torch.Tensor, torch.Size, torch.dtype, torch.device, *SAFE_TYPES)):
        return obj
    if isinstance(obj, enum.Enum):
        return plain(obj.value, where)
    for kind in (str, bool, int, float, bytes):  # subclasses such as torch's TorchVersion (a str)
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, dict):
        items = {k: plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        return collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) else items
    if isinstance(obj, (list, tuple, set)):
        values = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return values if isinstance(obj, list) else tuple(values) if isinstance(obj, tuple) else set(values)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a checkpoint; "
                    "checkpoints hold tensors and plain Python types only (they are read with "
                    "torch.load(weights_only=True), which runs no code)")


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu", trust: bool | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``:
    loading runs no code from the file. A file that needs full unpickling (format 1, or a forged
    file) is a ``ValueError`` unless ``trust`` (``None``: the environment variable
    ``AUTOSAM_TRUST_CHECKPOINT_PICKLE=1``) declares it trusted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch_load(path, map_location=map_location, trust=trust, safe_types=SAFE_TYPES)
    except UntrustedPickleError as exc:
        raise UntrustedPickleError(
            f"{exc}. autosam's own checkpoints hold only tensors and plain types since format {CHECKPOINT_FORMAT_VERSION}; "
            "older ones (format 1) need this once: resuming training from one writes the new format"
        ) from None
    except ValueError as exc:
        raise ValueError(str(exc).replace("cannot be read as a PyTorch file", "cannot read checkpoint")) from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "network" not in ckpt:
        raise ValueError(f"{path}: not an autosam checkpoint (no 'method'/'network' entries)")
    if ckpt.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this autosam understands; upgrade autosam")
    return ckpt


def method_entry_for_checkpoint(ckpt: dict, path: Path | str = "checkpoint"):
    """The registry entry of the checkpoint's method. Raises :class:`MissingPluginError` naming the
    distribution to install when the method is not registered; warns when versions differ."""
    methods = get_plugin_system().methods
    try:
        entry = methods.entry(ckpt["method"])
    except UnknownNameError:
        dist, version = ckpt.get("distribution", "unknown"), ckpt.get("version", "unknown")
        hint = f"pip install '{dist}=={version}'" if dist not in ("unknown", "local") else "install the plugin that provides it"
        raise MissingPluginError(
            f"{path}: trained with method {ckpt['method']!r} from plugin {ckpt.get('plugin')!r} of the package "
            f"{dist!r} (version {version}), which is not installed; {hint}. Installed methods: "
            + (", ".join(methods.names()) or "none")
        ) from None
    if entry.version != ckpt.get("version") or entry.distribution != ckpt.get("distribution"):
        warnings.warn(
            f"{path}: trained with {ckpt.get('distribution')} {ckpt.get('version')}, "
            f"now using {entry.distribution} {entry.version} for method {ckpt['method']!r}",
            stacklevel=2,
        )
    return entry


def restore_training_state(ckpt: dict, *, network, optimizer=None, scheduler=None, grad_scaler=None, method=None) -> None:
    """Load weights (with or without ``torch.compile``'s prefixes, into a compiled network or not),
    optimiser/scheduler/scaler state, method state and the RNG state (CUDA: of the network's device)."""
    unwrap(network).load_state_dict(strip_compile_prefix(ckpt["network"]))
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if grad_scaler is not None and ckpt.get("grad_scaler") is not None:
        grad_scaler.load_state_dict(ckpt["grad_scaler"])
    if method is not None:
        method.load_extra_state(ckpt.get("method_state") or {})
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"], network_device(network))
