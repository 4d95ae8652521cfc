"""Encoder throughput of the SAM backbones (slices/s for 2D, volumes/s for 3D).

Random weights (speed does not depend on their values). Each case: one warm-up call, then
``--repeats`` timed calls under ``torch.no_grad()``; fp32 eager vs SDPA attention on CPU, and on
CUDA additionally bf16 autocast + SDPA with achieved TFLOP/s (FLOPs counted by
``torch.utils.flop_counter``).

    python benchmarks/speed/bench_backbones.py                 # CPU default set
    python benchmarks/speed/bench_backbones.py --device cuda --cases sam_vit_b:1024:8 sam_vit_b:512:8
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from autosam.sam.backbones import build_backbone
from autosam.sam.fast_attention import use_fast_attention

DEFAULT_CASES = ["tiny:64:8", "tiny:128:8", "litemedsam:256:4", "litemedsam:128:4", "sam_vit_b:256:2",
                 "sam_vit_b:512:1", "sam_vit_b:1024:1", "tiny3d:32:2", "sam_med3d:128:1"]


def _set_fast(backbone, enabled: bool) -> None:
    use_fast_attention(backbone.image_encoder, enabled)
    for m in backbone.image_encoder.modules():
        if hasattr(m, "use_sdpa"):
            m.use_sdpa = enabled


def build(name: str, size: int, device: str):
    kwargs = {"pretrained": False} if name == "litemedsam" else {}
    return build_backbone(name, input_size=size, allow_random_init=True, **kwargs).to(device)


def count_flops(backbone, x) -> float:
    """FLOPs of one item through the encoder (also serves as the warm-up call)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        backbone.encode(x[:1], amp=False)
    return float(fc.get_total_flops())


def time_mode(backbone, x, device: str, repeats: int, mode: str, warmup: bool) -> float:
    """Seconds per item for one attention/precision mode."""
    _set_fast(backbone, mode != "eager")
    amp = mode == "bf16+sdpa"
    with torch.no_grad():
        if warmup:
            backbone.encode(x, batch_size=x.shape[0], amp=amp)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            backbone.encode(x, batch_size=x.shape[0], amp=amp)
        if device == "cuda":
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (repeats * x.shape[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="NAME:SIZE:BATCH")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=None, help="eager, sdpa, bf16+sdpa (CUDA)")
    args = p.parse_args(argv)
    modes = args.modes or (["sdpa", "eager", "bf16+sdpa"] if args.device == "cuda" else ["sdpa", "eager"])
    dev = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"device {args.device} ({dev}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}")
    print(f"| backbone | input | batch | mode | s/item | items/s | GFLOP/item | TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        name, size, batch = case.split(":")
        b = build(name, int(size), args.device)
        shape = (int(batch), 3, int(size), int(size)) if b.dims == 2 else (int(batch), 1, *(int(size),) * 3)
        x = torch.randn(shape, device=args.device)
        _set_fast(b, modes[0] != "eager")
        flops = count_flops(b, x)
        sec = None
        for i, mode in enumerate(modes):
            # on CPU a call of several seconds needs no warm-up; the FLOP count warmed the first mode
            warm = args.device == "cuda" or (i > 0 and (sec or 0) < 2.0)
            sec = time_mode(b, x, args.device, args.repeats, mode, warm)
            print(f"| {name} | {size} | {batch} | {mode} | {sec:.3f} | {1 / sec:.2f} | {flops / 1e9:.2f} | "
                  f"{flops / sec / 1e12:.3f} |", flush=True)


if __name__ == "__main__":
    main()
