"""Cost of one MedLAM training step of `medlsam` on the CPU (the localiser alone, no data loading
from disk): the plugin's own loss on a self-supervised batch of random volumes at the organs
example's small-image plans (32^3 coarse patches, 3 poolings, 8 base channels, 16 feature
channels, batch 4 + 2 MSS twins).

    python benchmarks/speed/bench_medlsam_step.py --threads 1 2 [--profile]

Prints the mean wall seconds of batch building, forward and backward + optimiser step per thread
count; ``--profile`` adds a torch.profiler table (operators by self CPU time).
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)

    from autosam_plugins.medlsam.localizer import MedLAM
    from autosam_plugins.medlsam.options import MedLSAMOptions
    from autosam_plugins.medlsam.plugin import MedLSAM
    from autosam_plugins.medlsam.sampling import make_batch

    opts = MedLSAMOptions(patch=32, num_pool=3, base_width=8, feature_dim=16, r_mm=[300.0, 300.0, 300.0])
    loss_fn = MedLSAM().build_loss(SimpleNamespace(options=opts))
    rng = np.random.default_rng(0)
    vols = [torch.randn(1, 45, 60, 64) for _ in range(6)]  # coarse (3 mm) volumes of the organs example's size
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = SimpleNamespace(localizer=MedLAM(1, opts.base_width, opts.num_pool, opts.feature_dim, opts.patch),
                              r_mm=torch.tensor(opts.r_mm))
        optimizer = torch.optim.Adam(net.localizer.parameters(), opts.lr)

        def step():
            t0 = time.perf_counter()
            batch = make_batch(vols, opts.batch_size, opts.patch, opts.coarse_spacing, rng, crops_per_scan=opts.crops_per_scan)
            t1 = time.perf_counter()
            loss, _ = loss_fn(net, batch)
            t2 = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        for _ in range(3):
            step()
        times = np.array([step() for _ in range(args.steps)]).mean(0)
        print(f"{threads} thread(s): batch {times[0]:.3f} s, forward {times[1]:.3f} s, backward + step {times[2]:.3f} s, "
              f"total {times.sum():.3f} s per step", flush=True)
        if args.profile:
            from torch.profiler import profile

            with profile() as prof:
                for _ in range(3):
                    step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
