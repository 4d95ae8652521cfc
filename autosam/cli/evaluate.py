"""``autosam_evaluate_folder``: Dice, IoU, HD95 per case and label, with means (``summary.json``)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autosam_evaluate_folder",
        description="Compare predicted label maps with reference label maps. Writes per case and per label Dice, "
                    "IoU, HD95 (mm, anisotropic spacing honoured), TP/FP/FN/TN, n_ref/n_pred, the mean per label and "
                    "the foreground mean, in the layout of nnU-Net's summary.json. Dice/IoU of a label absent from "
                    "both images are NaN and left out of the means; HD95 of a label present in only one image is "
                    "infinite (null + HD95_infinite in JSON) and left out of the HD95 means (counted in HD95_n_infinite). "
                    "Region-based datasets (dataset.json labels that are lists) are scored per region, a region being "
                    "the union of its labels; voxels whose reference is the 'ignore' label count in no metric.",
    )
    p.add_argument("-ref", required=True, type=Path, help="folder with the reference label maps")
    p.add_argument("-pred", required=True, type=Path, help="folder with the predicted label maps (same file names)")
    p.add_argument("-djfile", required=True, type=Path, help="dataset.json (labels and file_ending)")
    p.add_argument("-o", type=Path, default=None, help="output JSON (default: PRED/summary.json)")
    p.add_argument("-np", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--strict", action="store_true", help="fail when a reference has no prediction")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster on large images)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm import tqdm

    from autosam.evaluation.evaluate import evaluate_folder

    output = args.o if args.o is not None else args.pred / "summary.json"
    bar = tqdm(desc="evaluating", unit="case")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        summary = evaluate_folder(args.ref, args.pred, args.djfile, output, num_processes=args.np,
                                  strict=args.strict, compute_hd95=not args.no_hd95, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        bar.close()
        print(f"autosam_evaluate_folder: error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    fg = summary["foreground_mean"]
    hd = fg.get("HD95")
    print(f"{len(summary['metric_per_case'])} case(s); foreground mean Dice {fg.get('Dice', float('nan')):.4f}, "
          f"IoU {fg.get('IoU', float('nan')):.4f}" + (f", HD95 {hd:.2f} mm" if isinstance(hd, float) else ""))
    for label, metrics in summary["mean"].items():
        name = summary["labels"].get(label, label)
        print(f"  {label} {name}: Dice {metrics['Dice']:.4f}")
    print(f"summary written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
