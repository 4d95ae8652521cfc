"""Comparison report of every trained method/configuration and ensemble: a Markdown table and a bar plot."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from autosam.io.labels import sort_metric_keys
from autosam.utils.files import atomic_path


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def short_name(key: str) -> str:
    """``unet__autosamPlans__3d`` -> ``unet 3d``; ``ensemble__a__P__3d--b__P__3d`` -> ``a 3d + b 3d``
    (the plans name is kept unless it is the default)."""
    def one(k: str) -> str:
        method, plans, config = k.split("__")
        return f"{method} {config}" + ("" if plans == "autosamPlans" else f" ({plans})")

    try:
        if key.startswith("ensemble__"):
            return " + ".join(one(k) for k in key[len("ensemble__"):].split("--"))
        return one(key)
    except ValueError:
        return key


def write_report(folder: Path, summaries: dict[str, dict], ranking: list[str]) -> tuple[Path, Path]:
    """``comparison.md`` (per-class Dice and HD95 per candidate) and ``comparison.png`` (bar plots)."""
    labels = sort_metric_keys({k for s in summaries.values() for k in s["mean"]})
    names = next(iter(summaries.values())).get("labels", {})
    head = "| candidate | " + " | ".join(f"{names.get(l, l)} Dice" for l in labels) + " | fg-mean Dice | " + \
        " | ".join(f"{names.get(l, l)} HD95" for l in labels) + " | fg-mean HD95 |"
    rows = [head, "|" + " --- |" * (2 * len(labels) + 3)]
    for key in ranking:
        s = summaries[key]
        dice = [s["mean"][l].get("Dice") for l in labels]
        hd = [s["mean"][l].get("HD95") for l in labels]
        rows.append(f"| {key} | " + " | ".join(map(_fmt, dice)) + f" | **{_fmt(s['foreground_mean'].get('Dice'))}** | "
                    + " | ".join(map(_fmt, hd)) + f" | {_fmt(s['foreground_mean'].get('HD95'))} |")
    md = folder / "comparison.md"
    with atomic_path(md, ".md") as tmp:
        tmp.write_text("# Cross-validation comparison (best first)\n\n" + "\n".join(rows) + "\n\nHD95 in mm.\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(labels) * len(ranking) / 2 + 4), 4.5))
    width = 0.8 / len(ranking)
    x = np.arange(len(labels) + 1)
    for i, key in enumerate(ranking):
        s = summaries[key]
        for ax, metric in zip(axes, ("Dice", "HD95")):
            vals = [s["mean"][l].get(metric) for l in labels] + [s["foreground_mean"].get(metric)]
            vals = [np.nan if v is None else v for v in vals]
            ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=short_name(key) if ax is axes[0] else None)
    for ax, metric in zip(axes, ("Dice (higher is better)", "HD95 in mm (lower is better)")):
        ax.set_xticks(x, [names.get(l, l) for l in labels] + ["fg mean"], rotation=30)
        ax.set_title(metric)
    axes[0].set_ylim(0, 1)
    fig.suptitle(f"cross-validation, best first; best: {short_name(ranking[0])}", fontsize=10)
    ncol = min(len(ranking), 3)
    fig.legend(loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * (-(-len(ranking) // ncol)) + 0.02, 1, 1))
    png = folder / "comparison.png"
    with atomic_path(png, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return md, png
