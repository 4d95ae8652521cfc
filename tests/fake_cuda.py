"""``FakeCuda``: make torch believe CUDA devices exist, faking only the hardware (not a test module).

What it fakes (the calls that would reach the driver; everything above them runs for real):

- device discovery: ``torch._C._cuda_getDeviceCount`` (hence ``torch.cuda.is_available()`` and
  ``device_count()``; NVML answers "unavailable" so that torch asks the runtime) and
  ``torch._C._cuda_init``, which torch's real ``torch.cuda._lazy_init`` calls: after it
  ``torch.cuda.is_initialized()`` is True, the queued lazy calls (seeds, capability checks) run,
  ``torch.cuda.default_generators`` hold one CPU generator per fake GPU and
  ``torch.cuda._get_device_properties`` describes the fake card (name, capability, memory);
- the current device: ``torch._C._cuda_setDevice`` / ``_cuda_getDevice`` and the exchange calls of
  ``torch.cuda.device(...)`` (and ``torch.accelerator``'s equivalents); an index outside
  ``0..count-1`` fails as CUDA does ("invalid device ordinal");
- the current stream of ``torch.accelerator`` (the optimisers ask whether it captures a CUDA graph):
  a default stream that never captures;
- ``synchronize``, the caching allocator's statistics and ``empty_cache``, ``mem_get_info``,
  ``Tensor.pin_memory`` (page-locked host memory needs the driver: the tensor is returned as it is);
- ``torch.distributed``: the NCCL backend becomes gloo (``device_id`` is dropped: gloo binds none);
- ``torch._dynamo.config.disable``: dynamo traces a CUDA graph through the device's streams, which
  the fake does not have, so ``torch.compile`` still returns its compiled wrapper
  (``OptimizedModule``) but that runs eagerly.

Left real, on purpose: every argument check of torch's Python layer. ``torch.cuda.set_device`` still
runs ``_get_device_index`` and raises "Expected a torch.device with a specified index or an integer"
for a bare ``cuda``; ``torch.cuda.device``, ``get_device_properties`` and ``is_bf16_supported``
resolve indices and read the capability as on a GPU (``torch.cuda._lazy_init`` even warns about a
card this torch has no kernels for, e.g. a V100 with a CUDA 13 build); ``torch.autocast("cuda",
bfloat16)`` asks ``is_bf16_supported``; DDP validates ``device_ids`` against the parameters' device.

Tensors: a :class:`FakeCudaMode` (a :class:`device_guard.DeviceGuard`) rewrites every ``.to(cuda)``,
``.cuda()`` and ``device=cuda`` to the CPU and remembers the GPU index each tensor would live on:
``t.device`` answers ``cuda:N``, ``t.is_cuda`` True, ``t.get_device()`` N. Operations that mix
tensors of two GPUs fail as CUDA does ("Expected all tensors to be on the same device"), and the
guard's own checks still apply (a host tensor meeting a device tensor, ``.numpy()`` of a device tensor).

What it cannot prove:

- anything about kernels: every operation runs the CPU kernel in float32 (CUDA autocast is entered
  with the right dtype, but CPU tensors are not cast by it): numerics of bf16/fp16, cuDNN, Triton or
  inductor's CUDA code generation, speed and memory use are untested;
- the C++ side of CUDA: streams and events (autosam uses none; DDP copies nothing because batches are
  already on the device), NCCL itself, CUDA graphs, out-of-memory behaviour;
- torch.compile's tracing and code generation (see above);
- tensors created where the mode is not active (other threads, data-loader worker processes, C++
  code) report the CPU and are never flagged;
- ``torch.load(map_location="cuda")`` and other C++-level device moves are not redirected (they
  would fail loudly, not silently).

Use: ``with FakeCuda(count=2, card=H100): ...`` in a test, or ``python -m fake_cuda [--count N]
[--card h100|t4[,...]] -m MODULE ARGS...`` to run a module (e.g. ``autosam.cli.train`` under
``torch.distributed.run``) in a process that believes it has CUDA.
"""
from __future__ import annotations

import os
import runpy
import sys
from dataclasses import dataclass

import torch

from device_guard import SKIPPED_FILES, DeviceBug, DeviceGuard, _state, _tag, _tensors, note, noted  # noqa: F401

SKIPPED_FILES.add(os.path.abspath(__file__))


@dataclass(frozen=True)
class FakeCard:
    name: str
    major: int
    minor: int
    total_memory: int
    multi_processor_count: int


H100 = FakeCard("NVIDIA H100 80GB HBM3", 9, 0, 80 * 2**30, 132)  # native bf16
T4 = FakeCard("Tesla T4", 7, 5, 15 * 2**30, 40)  # Turing: no native bf16, fp16 + GradScaler
CARDS = {"h100": H100, "t4": T4}


class _Properties:
    """What ``torch.cuda.get_device_properties`` returns (the attributes torch and autosam read)."""

    def __init__(self, card: FakeCard, index: int):
        self.name, self.major, self.minor = card.name, card.major, card.minor
        self.total_memory, self.multi_processor_count = card.total_memory, card.multi_processor_count
        self.is_integrated, self.is_multi_gpu_board = False, False
        self.L2_cache_size, self.warp_size, self.gcnArchName = 50 * 2**20, 32, ""
        self.uuid = f"GPU-fake-{index}"
        self.index = index

    def __repr__(self):
        return f"_CudaDeviceProperties(name='{self.name}', major={self.major}, minor={self.minor}, fake)"


class _Stream:
    """The default stream of a fake GPU (what ``torch.accelerator.current_stream()`` returns): never
    capturing a graph, always done."""

    def __init__(self, index: int):
        self.device_index, self.device, self.stream_id = index, torch.device("cuda", index), 0

    def is_capturing(self) -> bool:
        return False

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass


_INDEX = "_fake_cuda_index"
_DEVICE_GET = torch.Tensor.device.__get__
_IS_CUDA_GET = torch.Tensor.is_cuda.__get__
_IS_CPU_GET = torch.Tensor.is_cpu.__get__
_DATA_SET = torch.Tensor.data.__set__
_CPU = torch.device("cpu")


def _cuda_index(dev, current: int) -> int | None:
    """The GPU index ``dev`` names (a bare ``cuda``: the current one), or None when it is not CUDA."""
    if dev is None or isinstance(dev, torch.Tensor):
        return None
    if isinstance(dev, int) and not isinstance(dev, bool):
        return dev
    try:
        dev = torch.device(dev)
    except (RuntimeError, TypeError):
        return None
    if dev.type != "cuda":
        return None
    return current if dev.index is None else dev.index


def _is_device_like(a) -> bool:
    return isinstance(a, (str, torch.device))


class FakeCudaMode(DeviceGuard):
    """The tensor half of :class:`FakeCuda` (see the module doc)."""

    def __init__(self, fake: "FakeCuda"):
        super().__init__()
        self.fake = fake

    def is_device_target(self, dev) -> bool:
        if isinstance(dev, torch.Tensor):
            return _state(dev) == "device"
        return _cuda_index(dev, 0) is not None

    def _index_of(self, t: torch.Tensor):
        return noted(t, _INDEX) if _state(t) == "device" else None

    def redirect(self, func, args, kwargs):
        """CUDA targets become the CPU; a move that changes where a tensor (would) live copies it, as
        a real host-device copy does (on the CPU ``.to``/``.cpu()`` would return the tensor itself)."""
        if func is torch.Tensor.cpu:
            if self._index_of(args[0]) is not None:
                return torch.Tensor.to, (args[0], _CPU), {"copy": True}
            return func, args, kwargs
        if func is torch.Tensor.cuda:  # t.cuda(device=None, non_blocking=False) -> t.to("cpu")
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            index = _cuda_index("cuda" if target is None else target, self.fake.current)
            non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
            return torch.Tensor.to, (args[0], _CPU), {"non_blocking": non_blocking,
                                                     "copy": index != self._index_of(args[0])}
        if func is torch.Tensor.to:
            target = kwargs.get("device", kwargs.get("other"))
            for a in args[1:]:
                if _is_device_like(a) or isinstance(a, torch.Tensor):
                    target = a
            if target is not None:
                index = self._index_of(target) if isinstance(target, torch.Tensor) else _cuda_index(target, self.fake.current)
                if index != self._index_of(args[0]):
                    kwargs = dict(kwargs, copy=True)
        if "device" in kwargs and _cuda_index(kwargs["device"], 0) is not None:
            kwargs = dict(kwargs, device=_CPU)
        if func is torch.Tensor.to and any(_is_device_like(a) and _cuda_index(a, 0) is not None for a in args[1:]):
            args = tuple(_CPU if _is_device_like(a) and _cuda_index(a, 0) is not None else a for a in args)
        return func, args, kwargs

    def placed(self, out, target, inputs) -> None:
        if isinstance(target, torch.Tensor):
            index = self._index_of(target)
        elif target is not None:
            index = _cuda_index(target, self.fake.current)
            if not 0 <= index < self.fake.count:
                raise RuntimeError(f"CUDA error: invalid device ordinal (cuda:{index} with {self.fake.count} "
                                   "fake GPU(s))")
        else:
            index = next((self._index_of(t) for t in inputs if self._index_of(t) is not None), self.fake.current)
        for t in _tensors(out, []):
            note(t, _INDEX, index)

    def check_device_inputs(self, func, device_inputs) -> None:
        indices = {self._index_of(t) for t in device_inputs} - {None}
        if len(indices) > 1:
            shown = " and ".join(f"cuda:{i}" for i in sorted(indices))
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{shown}! ({getattr(func, '__qualname__', func)}, fake CUDA)")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func == _DEVICE_GET or func == _IS_CUDA_GET or func == _IS_CPU_GET or func is torch.Tensor.get_device:
            index = self._index_of(args[0])
            if index is None:
                return func(*args, **(kwargs or {}))
            if func == _DEVICE_GET:
                return torch.device("cuda", index)
            if func is torch.Tensor.get_device:
                return index
            return func == _IS_CUDA_GET
        if func == _DATA_SET:  # param.data = moved (Module.to): the parameter now lives where ``moved`` does
            target, value = args
            func(*args)
            _tag(target, _state(value))
            if _state(value) == "device":
                note(target, _INDEX, self._index_of(value))
            return None
        return super().__torch_function__(func, types, args, kwargs)


class FakeCuda:
    """``count`` fake GPUs of kind ``card`` (or one card per GPU: a list) for the duration of a
    ``with`` block (module doc)."""

    def __init__(self, count: int = 1, card: FakeCard | list[FakeCard] = H100):
        self.count = count
        self.cards = [card] * count if isinstance(card, FakeCard) else list(card)
        if len(self.cards) != count:
            raise ValueError(f"{len(self.cards)} cards for {count} fake GPUs")
        self.card = self.cards[0]
        self.current = 0
        self.set_device_calls: list[int] = []  # indices torch._C._cuda_setDevice received
        self.backends: list[str] = []  # the backends init_process_group was asked for
        self.empty_cache_calls = 0
        self.mode = FakeCudaMode(self)
        self._undo: list = []

    # ------------------------------------------------------------------ hardware calls
    def _set_device(self, index: int) -> None:
        if not 0 <= int(index) < self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal (cuda:{index} with {self.count} fake GPU(s))")
        self.current = int(index)
        self.set_device_calls.append(int(index))

    def _exchange_device(self, index: int) -> int:
        if index < 0:
            return -1
        previous = self.current
        self._set_device(index)
        return previous

    def _empty_cache(self) -> None:
        self.empty_cache_calls += 1

    def _properties(self, index: int) -> _Properties:
        return _Properties(self.cards[index], index)

    def _init(self) -> None:
        """torch._C._cuda_init: what the driver's initialisation provides to torch.cuda."""
        self._patch(torch.cuda, "_get_device_properties", self._properties)
        self._patch(torch.cuda, "default_generators", tuple(torch.Generator() for _ in range(self.count)))

    def _init_process_group(self, original):
        def init_process_group(backend=None, *args, **kwargs):
            self.backends.append(str(backend))
            if str(backend).lower() == "nccl":
                backend = "gloo"
                kwargs.pop("device_id", None)
            return original(backend, *args, **kwargs)

        return init_process_group

    # ------------------------------------------------------------------ install / remove
    def _patch(self, obj, name: str, value) -> None:
        missing = object()
        inherited = isinstance(obj, type) and name not in obj.__dict__  # e.g. Tensor.pin_memory of TensorBase
        self._undo.append((obj, name, missing if inherited else getattr(obj, name, missing), missing))
        setattr(obj, name, value)

    def start(self) -> "FakeCuda":
        import torch.cuda.memory as memory
        import torch.distributed as dist

        from autosam.experiment_planning import planning

        c = torch._C
        # the planner's look for GPU device nodes (/dev/nvidia*) before it imports torch
        self._patch(planning, "_may_have_accelerator", lambda: True)
        self._patch(c, "_cuda_getDeviceCount", lambda: self.count)
        self._patch(torch.cuda, "_device_count_nvml", lambda: -1)
        self._patch(torch.cuda, "_cached_device_count", None)
        self._patch(torch.cuda, "_initialized", False)
        self._patch(torch.cuda, "_queued_calls", list(torch.cuda._queued_calls))
        self._patch(c, "_cuda_init", self._init)
        self._patch(c, "_cuda_setDevice", self._set_device)
        self._patch(c, "_cuda_getDevice", lambda: self.current)
        self._patch(torch.cuda, "_exchange_device", self._exchange_device)
        self._patch(torch.cuda, "_maybe_exchange_device", self._exchange_device)
        # torch.accelerator's view of the same device state
        self._patch(c, "_accelerator_hooks_device_count", lambda: self.count)
        self._patch(c, "_accelerator_getDeviceIndex", lambda: self.current)
        self._patch(c, "_accelerator_setDeviceIndex", self._set_device)
        self._patch(c, "_accelerator_exchangeDevice", self._exchange_device)
        self._patch(c, "_accelerator_maybeExchangeDevice", self._exchange_device)
        self._patch(c, "_accelerator_synchronizeDevice", lambda index: None)
        self._patch(c, "_accelerator_getStream", _Stream)
        import torch._dynamo.config as dynamo_config

        # dynamo queries the device's streams and graph capture while tracing; the fake has neither:
        # torch.compile still wraps the module (an OptimizedModule), which then runs eagerly
        self._patch(dynamo_config, "disable", True)
        self._patch(c, "_cuda_synchronize", lambda: None)
        import torch.cuda.graphs as graphs  # binds torch._C's function at import

        self._patch(c, "_cuda_isCurrentStreamCapturing", lambda: False)
        self._patch(graphs, "_cuda_isCurrentStreamCapturing", lambda: False)
        self._patch(c, "_cuda_emptyCache", self._empty_cache)
        self._patch(c, "_cuda_memoryStats", lambda device: {})
        self._patch(c, "_cuda_resetPeakMemoryStats", lambda device: None)
        self._patch(c, "_cuda_resetAccumulatedMemoryStats", lambda device: None)
        mem_get_info = lambda device=None: (self.card.total_memory,) * 2  # noqa: E731 (all free)
        self._patch(memory, "mem_get_info", mem_get_info)
        self._patch(torch.cuda, "mem_get_info", mem_get_info)
        self._patch(torch.Tensor, "pin_memory", lambda t, device=None: t)
        if dist.is_available():
            self._patch(dist, "init_process_group", self._init_process_group(dist.init_process_group))
        self.mode.__enter__()
        return self

    def stop(self) -> None:
        self.mode.__exit__(None, None, None)
        while self._undo:
            obj, name, old, missing = self._undo.pop()
            if old is missing:
                delattr(obj, name)
            else:
                setattr(obj, name, old)

    def __enter__(self) -> "FakeCuda":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m fake_cuda [--count N] [--card h100|t4[,...]] -m MODULE ARGS...``: run MODULE
    as ``__main__`` with fake CUDA (e.g. one rank under ``torch.distributed.run``); ``--count`` and
    ``--card`` default to ``FAKE_CUDA_COUNT`` / ``FAKE_CUDA_CARD`` (or 1 H100)."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("-m")
    p = argparse.ArgumentParser(prog="fake_cuda")
    p.add_argument("--count", type=int, default=int(os.environ.get("FAKE_CUDA_COUNT", "1")))
    p.add_argument("--card", default=os.environ.get("FAKE_CUDA_CARD", "h100"),
                   help=f"one of {', '.join(sorted(CARDS))}, or one per GPU separated by commas")
    args = p.parse_args(argv[:split])
    cards = [CARDS[name.strip().lower()] for name in args.card.split(",")]
    module, rest = argv[split + 1], argv[split + 2:]
    sys.argv = [module, *rest]
    with FakeCuda(args.count, cards[0] if len(cards) == 1 else cards):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
