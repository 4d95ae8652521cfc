"""``autosam_predict``: segment a folder of images with trained folds (the fold ensemble)."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from autosam.cli.common import (
    CaseProgress,
    Parser,
    add_prediction_options,
    add_sharding_options,
    apply_fast_path,
    apply_limits,
    check_sharding,
    command,
    launch_prediction_processes,
    method_option_names,
    normalize_configuration,
    parse_with_method_overrides,
    prediction_share,
)
from autosam.inference.output_folder import check_output_folder


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_predict",
        description="Predict label maps for every case in a folder (<case>_0000.nii.gz, one file per channel) with "
                    "the folds of a trained model. Same preprocessing as training, sliding window with Gaussian "
                    "weighting and mirroring, probabilities averaged over the folds, exported with exactly the "
                    "input's shape, origin, spacing and direction. nnU-Net's spellings work (-device, -chk, "
                    "-step_size, -npp, -nps, -p, -tr, 3d_fullres). Extra --name value flags override method options "
                    "(e.g. --backbone litemedsam), as in autosam_train.",
        epilog="example: autosam_predict -i imagesTs -o predictions -d 999 -c 3d -m unet   (all trained folds)",
    )
    p.add_argument("-i", required=True, type=Path, help="input folder of images")
    p.add_argument("-o", required=True, type=Path, help="output folder (created)")
    p.add_argument("-d", required=True, help="dataset id (999) or name (Dataset999_Example)")
    p.add_argument("-c", required=True, type=normalize_configuration,
                   help="configuration: 2d, 3d (nnU-Net's 3d_fullres is accepted) or 3d_lowres")
    p.add_argument("-m", "-tr", dest="m", default="auto",
                   help="method name (nnU-Net's -tr picks the trainer; here the method), or 'auto': the winner of "
                        "autosam_find_best_configuration if it was run, else the plans' default method (default)")
    p.add_argument("-f", nargs="+", default=None,
                   help="folds to ensemble (default: every fold of the model that has the checkpoint, listed in the "
                        "log); 'all' for a fold_all model")
    p.add_argument("-p", "--plans", dest="plans", default="autosamPlans", help="plans name (default: autosamPlans)")
    p.add_argument("-chk", "--checkpoint", dest="checkpoint", default="final", metavar="CHECKPOINT",
                   help="checkpoint of each fold: final, best, latest or a file name in fold_N/ as in nnU-Net "
                        "(checkpoint_final.pth, checkpoint_best.pth); default final")
    add_prediction_options(p)
    add_sharding_options(p)
    p.add_argument("--boxes-json", type=Path, default=None, metavar="FILE",
                   help='box prompts per case for a method that takes them (medlsam): {"case": {"label": [z0, y0, x0, '
                        'z1, y1, x1]}}, voxel indices of the input image (z, y, x, inclusive); the method\'s own '
                        'localisation is skipped and predict_args.json records the manual mode')
    p.add_argument("--prompts-json", type=Path, default=None, metavar="FILE",
                   help='prompts per case and label for a method that takes them (each method declares the kinds it takes): '
                        '{"case": {"label": {"box3d": [z0, y0, x0, z1, y1, x1], "box2d": {"z": .., "y0": .., "x0": .., '
                        '"y1": .., "x1": .., "z_lo": .., "z_hi": ..}, "points": [[z, y, x, 1], [z, y, x, -1]]}}}, voxel '
                        'indices of the input image (z, y, x, inclusive); see documentation/interactive.md')
    p.add_argument("--disable_progress_bar", "--quiet", dest="quiet", action="store_true", help="no progress bars")
    return p


@command("autosam_predict", errors=(ValueError, KeyError, RuntimeError))
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, overrides, folds = parse_with_method_overrides(
        parser, argv, lambda a: method_option_names(a.m, a.d, a.c, a.plans))
    check_sharding(parser, args)
    apply_limits(args)
    apply_fast_path(args)
    check_output_folder(args.o, args.overwrite_output)
    launched = launch_prediction_processes("autosam_predict", "autosam.cli.predict", argv, args)
    if launched is not None:
        return launched
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.inference.predictor import predict_folder

    progress = CaseProgress(args.quiet)
    start = time.perf_counter()
    try:
        device, num_parts, part_id = prediction_share(args)
        written = predict_folder(args.i, args.o, args.d, args.c, args.m, folds, checkpoint=args.checkpoint,
                                 use_mirroring=not args.disable_tta, save_probabilities=args.save_probabilities,
                                 device=device, num_processes=args.num_processes, plans_name=args.plans,
                                 method_overrides=overrides, progress=progress, patch_progress=not args.quiet,
                                 boxes_json=args.boxes_json, step_size=args.step_size, cpu_bf16=args.bf16,
                                 num_export_workers=args.num_export_workers, num_parts=num_parts, part_id=part_id,
                                 continue_prediction=args.continue_prediction, prompts_json=args.prompts_json)
    finally:
        progress.close()
    mode = " with the manual boxes of --boxes-json (localisation skipped)" if args.boxes_json is not None else ""
    mode = " with the prompts of --prompts-json" if args.prompts_json is not None else mode
    print(f"{len(written)} prediction(s) written to {args.o}{mode} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
