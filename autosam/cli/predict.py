"""``autosam_predict``: segment a folder of images with trained folds (the fold ensemble)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from autosam.cli.common import default_device, error_text, parse_device, parse_method_overrides


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autosam_predict",
        description="Predict label maps for every case in a folder (<case>_0000.nii.gz, one file per channel) with "
                    "the given folds of a trained model. Same preprocessing as training, sliding window with Gaussian "
                    "weighting and mirroring, probabilities averaged over the folds, exported with exactly the "
                    "input's shape, origin, spacing and direction. Extra --name value flags override method options "
                    "(e.g. --backbone litemedsam), as in autosam_train.",
        epilog="example: autosam_predict -i imagesTs -o predictions -d 999 -c 3d -m unet -f 0 1 2 3 4",
    )
    p.add_argument("-i", required=True, type=Path, help="input folder of images")
    p.add_argument("-o", required=True, type=Path, help="output folder (created)")
    p.add_argument("-d", required=True, help="dataset id (999) or name (Dataset999_Example)")
    p.add_argument("-c", required=True, help="configuration: 2d, 3d, 3d_lowres")
    p.add_argument("-m", default="auto", help="method name, or 'auto': the winner of autosam_find_best_configuration if it was run, else the plans' default method (default)")
    p.add_argument("-f", nargs="+", default=["0"], help="folds to ensemble (default: 0); 'all' for a fold_all model")
    p.add_argument("--plans", default="autosamPlans", help="plans name (default: autosamPlans)")
    p.add_argument("--checkpoint", choices=("final", "best", "latest"), default="final", help="which checkpoint (default final)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster in 3D)")
    p.add_argument("--save_probabilities", action="store_true", help="also write <case>.npz (probabilities) and <case>.json")
    p.add_argument("--device", type=parse_device, default=None, metavar="DEVICE",
                   help="cpu, cuda, cuda:N or mps; default: cuda when available (else mps, else cpu). On CUDA the "
                        "network runs in its training precision (bf16 where native, else fp16)")
    p.add_argument("-npp", "--num_processes", type=int, default=2,
                   help="background threads for preprocessing/export overlapping prediction; 1 = sequential (default 2)")
    p.add_argument("--boxes-json", type=Path, default=None, metavar="FILE",
                   help='box prompts per case for a method that takes them (medlsam): {"case": {"label": [z0, y0, x0, '
                        'z1, y1, x1]}}, voxel indices of the input image (z, y, x, inclusive); the method\'s own '
                        'localisation is skipped and predict_args.json records the manual mode')
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _fold(text: str):
    return text if text == "all" else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = parse_method_overrides(extra)
        folds = [_fold(f) for f in args.f]
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from tqdm import tqdm

    from autosam.inference.predictor import predict_folder

    device = args.device or default_device()
    bar = None

    def progress(case: str, done: int, total: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="cases", unit="case")
        bar.update(done - bar.n)
        if case:
            bar.set_postfix_str(case)

    start = time.perf_counter()
    try:
        written = predict_folder(args.i, args.o, args.d, args.c, args.m, folds, checkpoint=args.checkpoint,
                                 use_mirroring=not args.disable_tta, save_probabilities=args.save_probabilities,
                                 device=device, num_processes=args.num_processes, plans_name=args.plans,
                                 method_overrides=overrides, progress=progress, patch_progress=not args.quiet,
                                 boxes_json=args.boxes_json)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        if bar is not None:
            bar.close()
        print(f"autosam_predict: error: {error_text(exc)}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    mode = " with the manual boxes of --boxes-json (localisation skipped)" if args.boxes_json is not None else ""
    print(f"{len(written)} prediction(s) written to {args.o}{mode} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
