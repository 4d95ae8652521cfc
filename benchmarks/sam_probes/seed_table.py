"""A Markdown table of several seeds of each configuration written by ``curves.py``: the mean
foreground Dice of every seed at the given iterations, their mean and standard deviation.

usage: python benchmarks/sam_probes/seed_table.py \\
           "sautomed (paper's)=DIR/sautomed_pre.json DIR/sautomed_pre_s2.json" "without HIS=DIR/sautomed_nohis*.json" --iters 100 200
"""
from __future__ import annotations

import argparse
import glob
import json
import statistics


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("groups", nargs="+", metavar="LABEL=FILES", help="a row: its label, then JSON files or globs (spaces)")
    p.add_argument("--iters", type=int, nargs="+", required=True, help="iterations to report (columns)")
    a = p.parse_args(argv)
    print("| configuration | seeds | " + " | ".join(f"{i} it.: per seed | mean (sd)" for i in a.iters) + " |")
    print("|---|---|" + "---|---|" * len(a.iters))
    for group in a.groups:
        label, _, spec = group.rpartition("=")  # the label may hold "=" (an option), a path seldom does
        files = sorted({f for pattern in spec.split() for f in glob.glob(pattern)})
        if not files:
            raise SystemExit(f"{label}: no file matches {spec!r}")
        runs = [json.load(open(f)) for f in files]
        cells = []
        for it in a.iters:
            values = [c["fg_mean"] for r in runs for c in r["curve"] if c["iterations"] == it]
            if len(values) != len(runs):
                raise SystemExit(f"{label}: not every run has a point at {it} iterations")
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells += [" / ".join(f"{v:.3f}" for v in values), f"**{statistics.mean(values):.3f}** ({sd:.3f})"]
        print(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
