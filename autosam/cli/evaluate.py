"""``autosam_evaluate_folder`` and ``autosam_evaluate_simple``: Dice, IoU, HD95 per case and label, with means (``summary.json``)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from autosam.cli.common import Parser, command


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_evaluate_folder",
        description="Compare predicted label maps with reference label maps. Writes per case and per label Dice, "
                    "IoU, HD95 (mm, anisotropic spacing honoured), TP/FP/FN/TN, n_ref/n_pred, the mean per label and "
                    "the foreground mean, in the layout of nnU-Net's summary.json. Dice/IoU of a label absent from "
                    "both images are NaN and left out of the means; HD95 of a label present in only one image is "
                    "infinite (null + HD95_infinite in JSON) and left out of the HD95 means (counted in HD95_n_infinite). "
                    "Region-based datasets (dataset.json labels that are lists) are scored per region, a region being "
                    "the union of its labels; voxels whose reference is the 'ignore' label count in no metric.",
    )
    p.add_argument("gt_folder", nargs="?", type=Path, default=None, metavar="REF",
                   help="folder with the reference label maps (as nnU-Net; or -ref)")
    p.add_argument("pred_folder", nargs="?", type=Path, default=None, metavar="PRED",
                   help="folder with the predicted label maps, same file names (as nnU-Net; or -pred)")
    p.add_argument("-ref", type=Path, default=None, help="folder with the reference label maps")
    p.add_argument("-pred", type=Path, default=None, help="folder with the predicted label maps (same file names)")
    p.add_argument("-djfile", required=True, type=Path, help="dataset.json (labels and file_ending)")
    p.add_argument("-pfile", type=Path, default=None,
                   help="nnU-Net's plans file; accepted and not needed (labels and file ending come from -djfile)")
    _add_output_options(p)
    return p


def _add_output_options(p: Parser) -> None:
    p.add_argument("-o", type=Path, default=None, help="output JSON (default: PRED/summary.json)")
    p.add_argument("-np", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--strict", action="store_true",
                   help="fail when a reference has no prediction (default: such references are counted and listed "
                        "in summary.json under references_without_prediction)")
    p.add_argument("--chill", action="store_true",
                   help="nnU-Net's flag not to fail when references have no prediction: autosam's default already "
                        "(overrides --strict)")
    p.add_argument("--no-hd95", action="store_true", help="skip HD95 (faster on large images)")


@command("autosam_evaluate_folder", errors=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # nnU-Net's positional REF PRED, or -ref/-pred; positional folders fill what the flags leave open
    folders = [f for f in (args.gt_folder, args.pred_folder) if f is not None]
    for name, flag in (("reference", "ref"), ("prediction", "pred")):
        if getattr(args, flag) is None:
            if not folders:
                parser.error(f"the {name} folder is required (positional REF PRED, as nnU-Net, or -{flag})")
            setattr(args, flag, folders.pop(0))
    if folders:
        parser.error(f"unexpected folder {folders[0]}: -ref and -pred are given already")
    from autosam.evaluation.evaluate import evaluate_folder

    output = args.o if args.o is not None else args.pred / "summary.json"
    return _run("autosam_evaluate_folder", output, lambda progress: evaluate_folder(
        args.ref, args.pred, args.djfile, output, progress=progress, **_evaluation_kwargs(args)))


def build_simple_parser() -> Parser:
    p = Parser(
        prog="autosam_evaluate_simple",
        description="Compare predicted label maps with reference label maps without a dataset.json: the labels to "
                    "evaluate are given with -l, and voxels whose reference is the -il value are left out of every "
                    "metric. Same metrics and summary.json as autosam_evaluate_folder (Dice, IoU, HD95, TP/FP/FN/TN "
                    "per case and label, means and foreground mean). A reference without prediction is listed in "
                    "summary.json (an error with --strict).",
        epilog="example: autosam_evaluate_simple labelsTs predictions -l 1 2 -il 3",
    )
    p.add_argument("ref", type=Path, help="folder with the reference label maps")
    p.add_argument("pred", type=Path, help="folder with the predicted label maps (same file names)")
    p.add_argument("-l", type=int, nargs="+", required=True, help="label values to evaluate")
    p.add_argument("-il", type=int, default=None, help="ignore label: reference voxels with this value are left out")
    p.add_argument("--file_ending", default=".nii.gz", help="file ending of the label maps (default .nii.gz)")
    _add_output_options(p)
    return p


@command("autosam_evaluate_simple", errors=(ValueError,))
def main_simple(argv: list[str] | None = None) -> int:
    args = build_simple_parser().parse_args(argv)
    from autosam.evaluation.evaluate import evaluate_folder_labels

    output = args.o if args.o is not None else args.pred / "summary.json"
    return _run("autosam_evaluate_simple", output, lambda progress: evaluate_folder_labels(
        args.ref, args.pred, args.l, args.file_ending, output, progress=progress, ignore_label=args.il,
        **_evaluation_kwargs(args)))


def _evaluation_kwargs(args) -> dict:
    return {"num_processes": args.np, "strict": args.strict and not args.chill, "compute_hd95": not args.no_hd95}


def _run(prog: str, output: Path, evaluate) -> int:
    """Run ``evaluate(progress)`` with a progress bar; print the foreground mean and per-label Dice."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.utils.progress import progress_bar

    bar = progress_bar(desc="evaluating", unit="case")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        summary = evaluate(progress)
    finally:
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
