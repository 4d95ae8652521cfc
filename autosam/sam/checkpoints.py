"""Finding, reading and loading backbone weights given by path.

No weights are ever downloaded: a checkpoint is a local file given by argument or environment
variable. A missing file or one that does not fit the architecture is a :class:`CheckpointError`
naming the file expected; random initialisation happens only when explicitly allowed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from autosam.utils.files import ENV_TRUST_PICKLE, UntrustedPickleError, torch_load  # noqa: F401 (ENV_TRUST_PICKLE: re-exported)

logger = logging.getLogger(__name__)

#: Environment variable holding a SAM checkpoint file, or a folder holding the expected files.
ENV_SAM_CHECKPOINT = "AUTOSAM_SAM_CHECKPOINT"
#: Environment variable holding a SAM-Med3D checkpoint file.
ENV_SAM_MED3D_CHECKPOINT = "AUTOSAM_SAM_MED3D_CHECKPOINT"

class CheckpointError(RuntimeError):
    """A backbone checkpoint is missing, unreadable or does not match the architecture."""


def resolve_checkpoint(
    name: str,
    checkpoint: str | Path | None,
    expected_filename: str | None,
    env_vars: tuple[str, ...],
    allow_random_init: bool,
) -> Path | None:
    """Return the checkpoint file to load for backbone ``name``, or ``None`` for random init.

    Order: ``checkpoint`` argument, then each environment variable in ``env_vars`` (a file, or a
    folder containing ``expected_filename``). A path given but absent is always an error; no path
    at all is an error unless ``allow_random_init``.
    """
    hint = f"the expected file is {expected_filename}" if expected_filename else "a state dict saved with torch.save"
    candidates: list[tuple[str, str]] = []
    if checkpoint is not None:
        candidates.append(("checkpoint argument (--sam-checkpoint)", str(checkpoint)))
    for var in env_vars:
        if os.environ.get(var):
            candidates.append((f"environment variable {var}", os.environ[var]))
    for origin, value in candidates:
        path = Path(value).expanduser()
        if path.is_dir():
            if expected_filename and (path / expected_filename).is_file():
                return path / expected_filename
            if origin.startswith("checkpoint"):
                raise CheckpointError(f"{path} (from {origin}) is a folder without {expected_filename}; {hint}")
            continue  # a folder from the environment that lacks this backbone's file
        if path.is_file():
            return path
        raise CheckpointError(f"{path} (from {origin}) does not exist; backbone {name!r} needs its weights: {hint}")
    if allow_random_init:
        logger.warning("backbone %s: no checkpoint given, random initialisation (explicitly allowed)", name)
        return None
    env = " or ".join(env_vars) if env_vars else "(none)"
    raise CheckpointError(
        f"backbone {name!r} needs pretrained weights: {hint}. Give its path with --sam-checkpoint PATH "
        f"or the environment variable {env}; weights are never downloaded at run time. "
        "To train from random initialisation instead, pass allow_random_init=True (--allow-random-init)."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``torch.save`` file (plain, or wrapped in ``model``/``state_dict``)."""
    path = Path(path)
    try:  # training checkpoints (e.g. SAM-Med3D's) may also pickle Python objects such as argparse args
        obj = torch_load(path, map_location="cpu")
    except UntrustedPickleError as exc:
        raise CheckpointError(f"{exc}, or re-save only its state dict") from None
    except ValueError as exc:
        raise CheckpointError(str(exc).replace("as a PyTorch file", "as a PyTorch checkpoint")) from None
    for key in ("model_state_dict", "state_dict", "model", "network_weights"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return obj


def resize_position_tensors(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Interpolate absolute position embeddings and relative-position tables to the model's size.

    ``*pos_embed`` (``1 x h x w x C`` or ``1 x d x h x w x C``) is resized (bi/tri)cubically or
    linearly; ``*rel_pos_*`` (``L x C``) linearly along ``L`` (what segment-anything's
    ``get_rel_pos`` would do on the fly). Other tensors are left alone.
    """
    target = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key].shape
        if key.endswith("pos_embed") and value.dim() == len(want) and value.dim() in (4, 5):
            x = value.float().movedim(-1, 1)  # 1 x C x spatial
            mode = "bicubic" if value.dim() == 4 else "trilinear"
            x = F.interpolate(x, size=tuple(want[1:-1]), mode=mode, align_corners=False)
            out[key] = x.movedim(1, -1).to(value.dtype).contiguous()
            logger.info("resized %s from %s to %s", key, tuple(value.shape), tuple(want))
        elif ".rel_pos_" in key and value.dim() == 2 and value.shape[1] == want[1]:
            x = F.interpolate(value.float().t()[None], size=want[0], mode="linear", align_corners=False)
            out[key] = x[0].t().to(value.dtype).contiguous()
    return out


def load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, name: str,
                 expected_filename: str | None) -> None:
    """Load ``state`` into ``model`` after a full key and shape check; mismatch -> CheckpointError."""
    target = model.state_dict()
    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    wrong = sorted(f"{k} {tuple(state[k].shape)} != {tuple(target[k].shape)}"
                   for k in target if k in state and state[k].shape != target[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
        expect = f"; backbone {name!r} expects a checkpoint like {expected_filename}" if expected_filename else ""
        raise CheckpointError(f"{path}: does not match backbone {name!r}: " + ", ".join(parts) + expect)
    model.load_state_dict(state, strict=True)
    logger.info("backbone %s: loaded weights from %s", name, path)
