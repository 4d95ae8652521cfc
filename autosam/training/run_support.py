"""Helpers of the trainer: device choice, the iterations-per-epoch rule, log file, model folder files."""
from __future__ import annotations

import logging
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from autosam.utils.files import atomic_path, write_json
from autosam.utils.precision import default_device

logger = logging.getLogger(__name__)
NNUNET_ITERATIONS = 250
MIN_ITERATIONS = 10
EPOCH_COVERAGE = 2.0


def cuda_index_for_this_process() -> int:
    """The GPU a bare ``cuda`` means here: ``LOCAL_RANK`` under a launcher (torchrun), else the
    current CUDA device (0 unless the process selected another)."""
    local_rank = os.environ.get("LOCAL_RANK", "")
    return int(local_rank) if local_rank.strip().isdigit() else torch.cuda.current_device()


def pick_device(device=None) -> torch.device:
    """``None`` -> the best available device (:func:`autosam.utils.precision.default_device`).

    A CUDA device always comes back with its index (``cuda`` -> ``cuda:N``,
    :func:`cuda_index_for_this_process`): ``torch.cuda.set_device``, DDP's ``device_ids`` and the
    checkpoints' RNG state need one. A requested but missing accelerator (``cuda:3`` on a node with 2
    visible GPUs) is an error."""
    if device is None or device == "":
        device = default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", cuda_index_for_this_process())
    if dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                           "(CUDA_VISIBLE_DEVICES numbers them from 0)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise RuntimeError("--device mps: Apple MPS is not available on this machine")
    return dev


def default_iterations_per_epoch(dataset, batch_size: int, patch_size) -> int:
    """nnU-Net's 250 iterations, fewer for tiny datasets.

    Rule: ``clip(ceil(2 * training voxels / (batch_size * patch voxels)), 10, 250)``: an epoch
    draws about twice as many voxels as the training set holds (2D patches count their pixels).
    Large datasets therefore get nnU-Net's 250; the example dataset gets a few dozen.
    """
    total = 0
    for key in dataset.keys:
        data, _, _ = dataset.load(key)
        total += int(np.prod(data.shape[1:]))
    per_batch = batch_size * int(np.prod(patch_size))
    n = math.ceil(EPOCH_COVERAGE * total / max(1, per_batch))
    return int(min(NNUNET_ITERATIONS, max(MIN_ITERATIONS, n)))


class _Formatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


def attach_log_file(fold_dir: Path) -> logging.Handler:
    """Send INFO logs of autosam and its plugins to ``fold_dir/training_log_<timestamp>_<pid>.txt``.

    The name is unique per run: the time to the microsecond and the process id (two runs started
    in the same second never share a log file). The file is opened exclusively, never appended to."""
    stamp = datetime.now().strftime("%Y_%m_%d_%H_%M_%S_%f")
    path = Path(fold_dir) / f"training_log_{stamp}_pid{os.getpid()}.txt"
    handler = logging.FileHandler(path, mode="x", encoding="utf-8")
    handler.setFormatter(_Formatter())
    handler.setLevel(logging.INFO)
    for name in ("autosam", "autosam_plugins"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    return handler


def write_model_folder_files(model_folder: Path, plans, dataset_json: dict, preprocessed_folder: Path) -> None:
    """``plans.json``, ``dataset.json`` and ``dataset_fingerprint.json`` next to the folds (atomic),
    so that the trained model predicts without the preprocessed folder."""
    model_folder.mkdir(parents=True, exist_ok=True)
    plans.save(model_folder / "plans.json")
    write_json(model_folder / "dataset.json", dataset_json)
    fp = Path(preprocessed_folder) / "dataset_fingerprint.json"
    if fp.is_file():
        with atomic_path(model_folder / "dataset_fingerprint.json", ".json") as tmp:
            shutil.copyfile(fp, tmp)


def load_pretrained_weights(network: torch.nn.Module, path: str | Path) -> dict:
    """Start ``network`` from the weights of another run's checkpoint (``-pretrained_weights``).

    The checkpoint may come from another dataset or another method: every tensor whose name and
    shape match is copied; the others keep their fresh initialisation. When the label count differs
    this re-initialises the segmentation head (its output channels differ), as nnU-Net does.
    Returns ``{"loaded": [...], "reinitialised": [...], "unused": [...]}`` (tensor names) and logs
    what was skipped. Nothing matching is an error.
    """
    from autosam.training.checkpoint import load_checkpoint, strip_compile_prefix, unwrap

    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    source = strip_compile_prefix(ckpt["network"])
    target = unwrap(network).state_dict()
    loaded = [k for k, v in target.items() if k in source and tuple(source[k].shape) == tuple(v.shape)]
    if not loaded:
        raise ValueError(f"{path}: no weight of this checkpoint ({ckpt.get('method')!r}, "
                         f"{ckpt.get('configuration')!r}) matches the network by name and shape; it was trained "
                         "with another architecture")
    reinit = [k for k in target if k not in set(loaded)]
    unused = [k for k in source if k not in target]
    state = dict(target)
    state.update({k: source[k] for k in loaded})
    unwrap(network).load_state_dict(state)
    logger.info("pretrained weights: %d of %d tensors loaded from %s (method %s, dataset %s, configuration %s)",
                len(loaded), len(target), path, ckpt.get("method"), ckpt.get("dataset_name"), ckpt.get("configuration"))
    if reinit:
        logger.info("pretrained weights: %d tensor(s) re-initialised (not in the checkpoint or of another shape, "
                    "e.g. the segmentation head when the label count differs): %s", len(reinit), ", ".join(reinit))
    if unused:
        logger.info("pretrained weights: %d tensor(s) of the checkpoint unused (no such name here): %s",
                    len(unused), ", ".join(unused))
    return {"loaded": loaded, "reinitialised": reinit, "unused": unused}


#: why torch.compile fell back to eager execution in this process (one line each; benchmarks/gpu/gpu_check.py
#: fails on any): suppress_errors keeps training going, this makes the fallback visible
COMPILE_FALLBACKS: list[str] = []


class _CompileFallbackLog(logging.Handler):
    """Turns dynamo's suppressed-error records (``torch._dynamo.convert_frame``, WARNING with a
    traceback) into one autosam warning naming the reason."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING or not record.exc_info:
            return
        exc = record.exc_info[1]
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = f"{type(exc).__name__}: {' '.join(lines[:2])}"  # e.g. "backend='inductor' raised: <the error>"
        COMPILE_FALLBACKS.append(reason)
        logger.warning("torch.compile failed and the network runs eagerly (slower) instead: %s", reason)


_FALLBACK_HANDLER = _CompileFallbackLog()


def compile_network(network: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(network)`` with an eager fallback: when the compiler fails (no C compiler or
    Triton on the node, an unsupported operator) the module runs eagerly instead of stopping
    training, and a warning names the reason (also kept in :data:`COMPILE_FALLBACKS`). The compiled
    module's state dict carries ``_orig_mod.`` prefixes; checkpoints are written without them
    (:func:`autosam.training.checkpoint.unwrap`)."""
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # compiler errors -> eager execution, reported below
        dynamo_log = logging.getLogger("torch._dynamo.convert_frame")
        if _FALLBACK_HANDLER not in dynamo_log.handlers:
            dynamo_log.addHandler(_FALLBACK_HANDLER)
        return torch.compile(network)
    except Exception as exc:  # torch.compile unavailable on this platform
        reason = f"{type(exc).__name__}: {exc}"
        COMPILE_FALLBACKS.append(reason)
        logger.warning("torch.compile is not available (%s); the network runs eagerly", reason)
        return network
