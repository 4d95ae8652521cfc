"""``autosam_predict_from_modelfolder``: predict with a model folder given by its path (anywhere on
disk, for example one unpacked from a colleague's zip), as nnU-Net's ``nnUNetv2_predict_from_modelfolder``."""
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
    parse_with_method_overrides,
    prediction_share,
)
from autosam.inference.output_folder import check_output_folder


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_predict_from_modelfolder",
        description="Predict label maps for every case in a folder (<case>_0000.nii.gz, one file per channel) with a "
                    "trained model given by its folder (<method>__<plans>__<configuration>, holding plans.json, "
                    "dataset.json and fold_N/checkpoint_*.pth), wherever it is: AUTOSAM_RESULTS is not needed. "
                    "Same prediction as autosam_predict: the preprocessing of training, sliding window with Gaussian "
                    "weighting and mirroring, probabilities averaged over the folds, labels written with exactly the "
                    "input's shape, origin, spacing and direction. Extra --name value flags override method options.",
        epilog="example: autosam_predict_from_modelfolder -i imagesTs -o predictions "
               "-m results/Dataset004_Hippocampus/unet__autosamPlans__3d -f 0 1 2 3 4",
    )
    p.add_argument("-i", required=True, type=Path, help="input folder of images")
    p.add_argument("-o", required=True, type=Path, help="output folder (created)")
    p.add_argument("-m", required=True, type=lambda text: Path(text).resolve(), metavar="MODEL_FOLDER",
                   help="the model folder <method>__<plans>__<configuration> with fold_N subfolders")
    p.add_argument("-f", nargs="+", default=None,
                   help="folds to ensemble (default: every fold_N that has the checkpoint, listed in the log); "
                        "'all' for a fold_all model")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name in fold_N/: checkpoint_final.pth (default), checkpoint_best.pth, ... "
                        "(final, best, latest also work)")
    add_prediction_options(p)
    add_sharding_options(p)
    p.add_argument("--prompts-json", type=Path, default=None, metavar="FILE",
                   help="prompts per case and label (3D boxes, the challenge's 2D box, clicks) for a method that takes "
                        "them, in voxels of the input image; format: documentation/interactive.md (as autosam_predict)")
    p.add_argument("--disable_progress_bar", "--quiet", dest="quiet", action="store_true", help="no progress bars")
    return p


@command("autosam_predict_from_modelfolder", errors=(ValueError, KeyError, RuntimeError))
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, overrides, folds = parse_with_method_overrides(
        parser, argv, lambda a: method_option_names(a.m.name.split("__")[0]))
    check_sharding(parser, args)
    apply_limits(args)
    apply_fast_path(args)
    check_output_folder(args.o, args.overwrite_output)
    launched = launch_prediction_processes("autosam_predict_from_modelfolder", "autosam.cli.predict_modelfolder", argv, args)
    if launched is not None:
        return launched
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.inference.predictor import Predictor, predict_folder_with_model

    progress = CaseProgress(args.quiet)
    start = time.perf_counter()
    try:
        if not args.m.is_dir():
            raise FileNotFoundError(f"{args.m}: model folder does not exist")
        device, num_parts, part_id = prediction_share(args)
        predictor = Predictor(use_mirroring=not args.disable_tta, device=device, step_size=args.step_size,
                              cpu_bf16=args.bf16)
        predictor.initialize_from_trained_model_folder(args.m, folds, args.checkpoint, overrides)
        written = predict_folder_with_model(predictor.model, args.i, args.o, use_mirroring=not args.disable_tta,
                                            save_probabilities=args.save_probabilities,
                                            num_processes=args.num_processes, progress=progress,
                                            patch_progress=not args.quiet, step_size=args.step_size,
                                            num_export_workers=args.num_export_workers, num_parts=num_parts,
                                            part_id=part_id, continue_prediction=args.continue_prediction,
                                            prompts_json=args.prompts_json, cpu_bf16=args.bf16)
    finally:
        progress.close()
    print(f"{len(written)} prediction(s) written to {args.o} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
