"""Plot the learning curves written by ``curves.py``: foreground-mean Dice against training
iterations (left) and against training CPU seconds (right), one line per run.

usage: python benchmarks/sam_probes/plot_curves.py OUT.png RUN.json [RUN.json ...] [--title TEXT]
       [--boxes-only RUN.json ...]
"""
from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("runs", nargs="+")
    p.add_argument("--title", default="")
    p.add_argument("--boxes-only", nargs="*", default=[], metavar="RUN.json",
                   help="runs of which only the reference-box line is drawn (their automatic line repeats another run)")
    a = p.parse_args(argv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharey=True)
    for path in a.runs:
        r = json.load(open(path))
        curve = r["curve"]
        label = r.get("tag") or r["method"]
        its = [c["iterations"] for c in curve]
        dice = [c["fg_mean"] for c in curve]
        cpu = [c["train_cpu_s"] / 60 for c in curve]
        if path in a.boxes_only:
            gt = [c["fg_mean_gt_boxes"] for c in curve]
            line, = axes[0].plot(its, gt, "s--", label=f"{label}: reference boxes")
            axes[1].plot(cpu, gt, "s--", color=line.get_color(), label=f"{label}: reference boxes")
            continue
        line, = axes[0].plot(its, dice, "o-", label=label)
        axes[1].plot(cpu, dice, "o-", color=line.get_color(), label=label)
        if curve and "fg_mean_gt_boxes" in curve[0]:
            axes[0].plot(its, [c["fg_mean_gt_boxes"] for c in curve], "s--", color=line.get_color(),
                         label=f"{label}, reference boxes")
    axes[0].set_xlabel("training iterations")
    axes[1].set_xlabel("training CPU minutes (1 thread, shared cores)")
    axes[0].set_ylabel(f"Dice, {len(r['val_cases'])} val. cases, no mirroring")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    if a.title:
        fig.suptitle(a.title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(a.out, dpi=90)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
