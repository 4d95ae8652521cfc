"""``DeviceGuard``: find device bugs (tensors left on the host) on a machine without a GPU (not a test module).

On a CUDA machine ``torch.zeros(n) * x_cuda`` fails with "Expected all tensors to be on the same
device"; on the CPU the same code runs, so a CPU-only test suite cannot see the bug. The guard makes it
visible: it is a :class:`torch.overrides.TorchFunctionMode` that follows where every tensor *would*
live on a GPU run and fails where such a run would fail.

Each tensor gets one of three provenances:

- **device**: the network's parameters and buffers after ``module.to(device)``, anything moved with
  ``.to(device)`` / ``.cuda()``, tensor factories called with an explicit ``device=`` (e.g.
  ``device=x.device``; the literal string ``"cpu"`` counts as host), and every result of an operation
  that has a device tensor among its inputs;
- **host**: results of tensor factories (``torch.zeros/ones/empty/full/arange/rand*/randint/randperm/
  tensor/as_tensor/linspace/logspace/eye/from_numpy``...) called *without* ``device=``, of ``.cpu()``
  and ``.to("cpu")``, and of operations whose inputs are host or unknown tensors; the guard remembers
  the line of code that created them;
- **unknown**: tensors created outside the guarded block or by autograd (gradients).

It raises :class:`DeviceBug` naming the operation and the line that created the host tensor when

- an operation mixes a device tensor with a host tensor of one or more dimensions (0-dim CPU
  tensors are allowed with CUDA tensors; index tensors of ``x[idx]`` may live on the CPU; ``copy_``
  copies across devices), or
- ``.numpy()`` / ``np.asarray`` is called on a device tensor (a CUDA tensor needs ``.cpu()`` first).

Limits: a literal ``device=torch.device("cpu")`` looks like the device here (on the CPU, ``x.device``
is the same object), and unknown tensors are never flagged, so the guard has no false alarms on
correct code but does not prove the absence of every device bug.
"""
from __future__ import annotations

import os
import traceback
import weakref

import torch
from torch.overrides import TorchFunctionMode

FACTORIES = {torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.rand, torch.randn, torch.randint,
             torch.randperm, torch.tensor, torch.as_tensor, torch.linspace, torch.logspace, torch.eye, torch.from_numpy,
             torch.scalar_tensor, torch.empty_strided, torch.tril_indices, torch.triu_indices, torch.range}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}
TO_HOST = {torch.Tensor.cpu}
TO_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
CROSS_DEVICE = {torch.Tensor.copy_}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
# id(tensor) -> [weak reference, tag ("device" or ("host", origin)), notes of subclasses]: kept beside
# the tensors, not in their __dict__ (torch.save would write it into checkpoints, torch.load restore it)
_TAGS: dict[int, list] = {}
_HERE = os.path.abspath(__file__)
SKIPPED_FILES = {_HERE}  # files that never count as the origin of a tensor (the guard and its subclasses)
_TORCH = os.path.dirname(os.path.abspath(torch.__file__))


class DeviceBug(AssertionError):
    """A tensor that a GPU run would leave on the host meets a device tensor (or a device tensor goes to numpy)."""


def _origin() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if path not in SKIPPED_FILES and not path.startswith(_TORCH):
            return f"{frame.filename}:{frame.lineno} ({frame.line})"
    return "unknown location"


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def _entry(t: torch.Tensor, create: bool = False) -> list | None:
    key = id(t)
    entry = _TAGS.get(key)
    if entry is not None and entry[0]() is t:
        return entry
    if not create:
        return None
    try:
        ref = weakref.ref(t, lambda r, key=key: _TAGS.pop(key, None) if _TAGS.get(key, (None,))[0] is r else None)
    except TypeError:  # not weakly referenceable
        return None
    entry = _TAGS[key] = [ref, None, {}]
    return entry


def _tag(obj, tag) -> None:
    for t in _tensors(obj, []):
        entry = _entry(t, create=True)
        if entry is not None:
            entry[1] = tag


def _state(t: torch.Tensor):
    entry = _entry(t)
    return entry[1] if entry is not None else None


def note(t: torch.Tensor, key: str, value) -> None:
    """Attach ``value`` under ``key`` to a tracked tensor (e.g. the GPU index of tests/fake_cuda.py)."""
    entry = _entry(t, create=True)
    if entry is not None:
        entry[2][key] = value


def noted(t: torch.Tensor, key: str):
    entry = _entry(t)
    return entry[2].get(key) if entry is not None else None


def _is_host_literal(dev) -> bool:
    return isinstance(dev, str) and dev == "cpu"


def mark_on_device(*objs) -> None:
    """Declare tensors or modules (their parameters and buffers) as living on the test's device."""
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            _tag(list(obj.parameters()) + list(obj.buffers()), "device")
        else:
            _tag(obj, "device")


class DeviceGuard(TorchFunctionMode):
    """Use as ``with DeviceGuard(): ...`` around a training step or a prediction (see the module doc).

    Subclasses (tests/fake_cuda.py) redefine what a device target is (:meth:`is_device_target`),
    rewrite the arguments before the call (:meth:`redirect`) and follow more than the provenance
    (:meth:`placed`, :meth:`check_device_inputs`)."""

    def __init__(self):
        super().__init__()
        self.checked = 0  # operations that involved a device tensor (the guard did see the run)

    # ------------------------------------------------------------------ hooks of subclasses
    def is_device_target(self, dev) -> bool:
        """Whether ``device=dev`` / ``.to(dev)`` puts a tensor on the test's device."""
        return dev is not None and not _is_host_literal(dev)

    def redirect(self, func, args, kwargs):
        """``(function, args, kwargs)``: the call that really runs (unchanged here)."""
        return func, args, kwargs

    def placed(self, out, target, inputs) -> None:
        """``out`` was just tagged as a device tensor (``target``: the requested device, a tensor whose
        device it takes, or None when it inherits it from ``inputs``)."""

    def check_device_inputs(self, func, device_inputs) -> None:
        """Further checks of an operation's device tensors (none here)."""

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            dev = kwargs.get("device")
            call, args, kwargs = self.redirect(func, args, kwargs)
            out = call(*args, **kwargs)
            if self.is_device_target(dev):
                _tag(out, "device")
                self.placed(out, dev, [])
            else:
                _tag(out, ("host", _origin()))
            return out
        inputs = _tensors((args, kwargs), [])
        on_device = any(_state(t) == "device" for t in inputs)
        if func in TO_NUMPY and on_device:
            raise DeviceBug(f"{func.__name__}() of a device tensor at {_origin()}: call .cpu() first")
        if func in MOVES:
            target = kwargs.get("device", kwargs.get("other"))
            for a in args[1:]:
                if isinstance(a, (str, torch.device, torch.Tensor)):
                    target = a
            if func is torch.Tensor.cuda and target is None and args[1:] and isinstance(args[1], int):
                target = args[1]
            call, args, kwargs = self.redirect(func, args, kwargs)
            out = call(*args, **kwargs)
            if isinstance(target, torch.Tensor):
                _tag(out, _state(target))
                if _state(target) == "device":
                    self.placed(out, target, [])
            elif func is torch.Tensor.cuda or self.is_device_target(target):
                _tag(out, "device")
                self.placed(out, target, [])
            elif target is not None:
                _tag(out, ("host", _origin()))
            elif _state(args[0]) is not None:  # dtype only: stays where it was
                _tag(out, _state(args[0]))
                if _state(args[0]) == "device":
                    self.placed(out, None, [args[0]])
            return out
        if func in TO_HOST:
            call, args, kwargs = self.redirect(func, args, kwargs)
            out = call(*args, **kwargs)
            _tag(out, ("host", _origin()))
            return out
        if on_device and func not in CROSS_DEVICE:
            self.checked += 1
            checked = inputs
            if func in INDEXING:
                checked = [args[0]]
            for t in checked:
                state = _state(t)
                if isinstance(state, tuple) and t.dim() > 0:
                    raise DeviceBug(f"{getattr(func, '__qualname__', func)} mixes a device tensor with a host tensor "
                                    f"of shape {list(map(int, t.shape))} created without device= at {state[1]}; "
                                    f"the call is at {_origin()}")
            self.check_device_inputs(func, [t for t in checked if _state(t) == "device"])
        call, args, kwargs = self.redirect(func, args, kwargs)
        out = call(*args, **kwargs)
        if on_device:
            _tag(out, "device")
            self.placed(out, None, [t for t in inputs if _state(t) == "device"])
        else:
            host = next((_state(t) for t in inputs if isinstance(_state(t), tuple)), None)
            if host is not None and func not in CROSS_DEVICE:
                _tag(out, host)
        return out
