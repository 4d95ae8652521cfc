"""``autosam_evaluate_interactive``: the CVPR 2025 interactive challenge's protocol (a box, then 5
simulated clicks, per structure) on the validation cases of a trained fold or on a folder of images
with references; Dice and NSD per step, DSC_AUC and NSD_AUC, seconds per step, a plot."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from autosam.cli.common import Parser, add_device, command, fold_value, normalize_configuration


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_evaluate_interactive",
        description="Evaluate trained methods with the protocol of the CVPR 2025 'Foundation Models for Interactive 3D "
                    "Biomedical Image Segmentation' challenge. Per structure (foreground label present in the "
                    "reference): step 0 gives the challenge's box (the 2D box on the middle slice of the structure "
                    "plus its z range), then each of --clicks steps adds a click at the centre of the largest error "
                    "region (positive on missed foreground, negative on a false positive) and passes the previous "
                    "prediction back; the image is encoded once per case. Dice and NSD (--tolerance mm) per step, "
                    "DSC_AUC and NSD_AUC (trapezoid over the steps), seconds per step. A method that takes no prompts "
                    "(unet) is scored as the automatic no-prompt reference (one prediction for every step). Writes "
                    "OUT/summary.json, OUT/cases/<case>.json and OUT/dice_per_step.png; with several -m, one folder "
                    "per method in OUT and a plot of all of them. Cases already evaluated with the same settings are "
                    "read back (an interrupted run resumes).",
        epilog="examples:\n"
               "  autosam_evaluate_interactive -d 4 -c 3d -m promptunet unet -f 0 -o interactive_fold0\n"
               "  autosam_evaluate_interactive -d 4 -c 3d -m promptunet -f 0      (writes <model>/fold_0/interactive)\n"
               "  autosam_evaluate_interactive -i imagesTs -ref labelsTs -d 4 -c 3d -m promptunet -o interactive_test\n"
               "  autosam_evaluate_interactive --plot run_a/summary.json run_b/summary.json -o comparison",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("-d", default=None, help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("-c", default="3d", type=normalize_configuration, help="configuration (default 3d)")
    p.add_argument("-m", nargs="+", default=None, metavar="METHOD",
                   help="one or more trained methods (e.g. promptunet unet); each is evaluated on the same cases")
    p.add_argument("-f", nargs="+", default=None,
                   help="without -i: the fold whose validation cases are evaluated, with that fold's network (one "
                        "fold, or 'all'); with -i: the folds whose ensemble predicts (default: every fold with the "
                        "checkpoint)")
    p.add_argument("-i", type=Path, default=None, metavar="IMAGES",
                   help="a folder of images (<case>_0000.nii.gz ...) to evaluate instead of a fold's validation cases")
    p.add_argument("-ref", type=Path, default=None, metavar="LABELS",
                   help="with -i: the folder of their reference label maps (<case>.nii.gz)")
    p.add_argument("-o", type=Path, default=None, metavar="OUT",
                   help="output folder (without -i and with one method: default <model folder>/fold_N/interactive, "
                        "where autosam_find_best_configuration --rank-by dsc_auc reads it)")
    p.add_argument("-p", "--plans", dest="plans", default="autosamPlans", help="plans name (default autosamPlans)")
    p.add_argument("-chk", "--checkpoint", dest="checkpoint", default="final",
                   help="checkpoint: final (default), best, latest or a file name in fold_N/")
    p.add_argument("--clicks", type=int, default=5, help="clicks after the box (default 5, the challenge's)")
    p.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2, the challenge's)")
    p.add_argument("--tta", action="store_true",
                   help="mirroring test-time augmentation at every step (default off: a click should cost one pass)")
    p.add_argument("--max-cases", type=int, default=None, metavar="N", help="evaluate only the first N cases (sorted)")
    p.add_argument("--overwrite", action="store_true", help="evaluate every case again (default: resume)")
    p.add_argument("--plot", nargs="+", type=Path, default=None, metavar="SUMMARY",
                   help="only plot Dice against step for existing summary.json files (or their folders) into "
                        "OUT/dice_per_step.png")
    add_device(p, "the networks")
    p.add_argument("--disable_progress_bar", "--quiet", dest="quiet", action="store_true", help="no progress bar")
    return p


@command("autosam_evaluate_interactive", errors=(ValueError, KeyError, RuntimeError))
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.interactive import evaluator as ev

    if a.plot:
        if a.o is None:
            parser.error("--plot needs -o (the folder of the plot)")
        summaries = [ev.read_summary(s) for s in a.plot]
        out = ev.plot_dice_per_step(summaries, a.o / ev.PLOT_FILE)
        _print_table(summaries)
        print(f"plot: {out}")
        return 0
    for flag, value in (("-d", a.d), ("-m", a.m)):
        if value is None:
            parser.error(f"argument {flag} is required (or --plot)")
    if (a.i is None) != (a.ref is None):
        parser.error("-i and -ref go together (images and their references)")
    if a.clicks < 1:
        parser.error(f"argument --clicks: at least 1, got {a.clicks}")
    if not a.tolerance > 0:
        parser.error(f"argument --tolerance: must be positive, got {a.tolerance}")
    try:
        folds = [fold_value(f) for f in a.f] if a.f else None
    except ValueError as exc:
        parser.error(f"argument -f: {exc}")
    if a.i is None and (folds is None or len(folds) != 1):
        parser.error("without -i, give exactly one fold with -f (its validation cases are evaluated)")
    if a.o is None and (a.i is not None or len(a.m) > 1):
        parser.error("-o is required with -i or with several methods")
    from autosam.inference.predictor import find_model_folder, folds_with_checkpoint, load_trained_model

    summaries = []
    for method in a.m:
        model_folder = find_model_folder(a.d, method, a.c, a.plans)
        use = folds if folds is not None else folds_with_checkpoint(model_folder, a.checkpoint)
        model = load_trained_model(model_folder, use, a.checkpoint, a.device)
        if a.i is None:
            cases = ev.fold_cases(model, use[0])
            source = {"kind": "fold validation", "fold": str(use[0]), "dataset": model_folder.parent.name}
            default_out = model_folder / f"fold_{use[0]}" / ev.INTERACTIVE_FOLDER
        else:
            cases = ev.folder_cases(model, a.i, a.ref)
            source = {"kind": "folder", "images": str(a.i), "references": str(a.ref)}
            default_out = None
        cases = sorted(cases, key=lambda c: c.identifier)[: a.max_cases]
        out = a.o if len(a.m) == 1 and a.o is not None else (a.o / method if a.o is not None else default_out)
        print(f"{method}: {len(cases)} case(s) -> {out}")
        summaries.append(ev.evaluate_interactive(model, cases, out, num_clicks=a.clicks, tolerance_mm=a.tolerance,
                                                 use_mirroring=a.tta, overwrite=a.overwrite, progress=not a.quiet,
                                                 source=source))
        del model
    if len(summaries) > 1:
        ev.plot_dice_per_step(summaries, a.o / ev.PLOT_FILE)
    _print_table(summaries)
    return 0


def _print_table(summaries) -> None:
    from autosam.interactive.evaluator import _fmt, summary_label

    print(f"\n{'method':28s} {'Dice box':>9s} {'Dice final':>10s} {'DSC_AUC':>8s} {'NSD_AUC':>8s} {'s/step':>8s}")
    for s in summaries:
        secs = [v for v in s["seconds_per_step"][1:] if v] or s["seconds_per_step"][:1]
        print(f"{summary_label(s):28s} {_fmt(s['dice_per_step'][0]):>9s} {_fmt(s['final_dice']):>10s} "
              f"{_fmt(s['dsc_auc']):>8s} {_fmt(s['nsd_auc']):>8s} {sum(secs) / len(secs):8.3f}")


if __name__ == "__main__":
    sys.exit(main())
