"""``autosam_train ID CONFIG METHOD FOLD``: train one fold of a method, then validate it."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

from autosam.cli.common import (
    Parser,
    add_device,
    command,
    default_device,
    error_text,
    method_option_names,
    method_overrides_from,
    normalize_configuration,
    positive_int,
    step_size,
)


def build_parser(method=None) -> Parser:
    from autosam.training.trainer import DEFAULT_EPOCHS, DEFAULT_SEED

    p = Parser(
        prog="autosam_train",
        description="Train fold FOLD of method METHOD on configuration CONFIG of dataset ID, then predict the fold's "
                    "validation cases in original geometry and write fold_N/validation/summary.json. Results go to "
                    "$AUTOSAM_RESULTS/DatasetXXX_Name/<method>__<plans>__<config>/fold_N/. Any further --name value "
                    "flag sets an option of the method (e.g. --backbone litemedsam --lr 3e-4); "
                    "'autosam_train ID CONFIG METHOD FOLD --help' lists them. nnU-Net's flags work as in "
                    "nnUNetv2_train (-p, -device, -pretrained_weights, --npz, --c, --val, --val_best, "
                    "--disable_checkpointing, -num_gpus) and 3d_fullres means 3d.",
        epilog="example: autosam_train 999 3d unet 0 --epochs 10 --device cpu; on 4 GPUs of this node: "
               "autosam_train 999 3d unet 0 --num-gpus 4; across nodes: torchrun --nnodes 2 --nproc-per-node 4 "
               "--rdzv-backend c10d --rdzv-endpoint HOST:PORT -m autosam.cli.train 999 3d unet 0",
    )
    p.add_argument("dataset", metavar="ID", help="dataset id (999) or name (Dataset999_Example)")
    p.add_argument("configuration", metavar="CONFIG", type=normalize_configuration,
                   help="plans configuration: 2d, 3d (nnU-Net's 3d_fullres is accepted) or 3d_lowres")
    p.add_argument("method", metavar="METHOD", help="method name (see autosam_plugins), or 'auto' for the plans' default")
    p.add_argument("fold", metavar="FOLD", help="fold 0-4 of splits_final.json, or 'all' (train on every case)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"number of epochs (default {DEFAULT_EPOCHS})")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="training iterations per epoch (default: clip(2 x training voxels / voxels per batch, 10, 250), "
                        "i.e. nnU-Net's 250 on real datasets, fewer on tiny ones)")
    add_device(p, "training")
    p.add_argument("--c", dest="resume", action="store_true",
                   help="continue from the last completed epoch (checkpoint_latest.pth)")
    p.add_argument("--val", dest="validation_only", action="store_true",
                   help="only run the validation (with checkpoint_final.pth, or checkpoint_best.pth with --val_best)")
    p.add_argument("--val_best", action="store_true",
                   help="validate with checkpoint_best.pth (best EMA pseudo Dice) instead of the final network; "
                        "same validation/ folder, its summary.json records the checkpoint. Not with "
                        "--disable_checkpointing")
    p.add_argument("--disable_checkpointing", action="store_true",
                   help="write no checkpoint_latest.pth / checkpoint_best.pth during training, only "
                        "checkpoint_final.pth at the end (nnU-Net writes none at all); --c cannot resume such a run")
    p.add_argument("-pretrained_weights", "--pretrained_weights", dest="pretrained_weights", default=None, metavar="FILE",
                   help="start from the weights of another run's checkpoint (another dataset or method): tensors of "
                        "the same name and shape are loaded, the others (e.g. the segmentation head when the label "
                        "count differs) keep their fresh initialisation; the log lists them. Only when training "
                        "(not with --c or --val)")
    p.add_argument("-step_size", "--step_size", dest="step_size", type=step_size, default=0.5,
                   help="sliding-window step of the final validation as a fraction of the patch size, in (0, 1] "
                        "(default 0.5)")
    p.add_argument("--npz", dest="save_npz", action="store_true",
                   help="also save validation probabilities (<case>.npz + <case>.json) for ensembling")
    p.add_argument("--time-budget-minutes", "--time_budget_minutes", dest="time_budget_minutes", type=float,
                   default=None, metavar="MIN",
                   help="stop training at the end of the epoch in which MIN minutes are used; the epochs that fit are "
                        "estimated from the first epochs and the learning-rate schedule follows them, so that "
                        "--epochs 1000 --time-budget-minutes 15 trains a whole schedule in 15 minutes; the final "
                        "validation follows (default: no budget)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("-p", "--plans", dest="plans", default="autosamPlans", help="plans name (default autosamPlans)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="background augmentation processes (default: CPU cores - 1, at most 8; 0 = in-process); "
                        "with --num-gpus or torchrun per training process (default: its share of the cores - 1)")
    p.add_argument("--num-gpus", "-num_gpus", "--num_gpus", dest="num_gpus", type=positive_int, default=None,
                   metavar="N", help="train with N processes on this node (DDP, one GPU each; torch's elastic launcher "
                                     "starts them): the plans' batch is split across them, rank 0 writes the files. "
                                     "With --device cpu, N CPU processes (gloo). Under torchrun leave it out: the "
                                     "command joins the launcher's processes")
    p.add_argument("--ddp", action="store_true",
                   help="start the process group and train through DistributedDataParallel even with one process "
                        "(checks the DDP path on one GPU; the weights match a plain run's). Without a launcher it "
                        "starts --num-gpus processes (default 1) through torch's elastic launcher")
    p.add_argument("--quiet", "--disable_progress_bar", dest="quiet", action="store_true",
                   help="no progress bars, warnings only")
    if method is not None:
        add_method_options(p, method)
    return p


def add_method_options(p: argparse.ArgumentParser, method) -> None:
    """List the method's options in --help (their values are parsed by Method.make_options)."""
    group = p.add_argument_group(f"options of method {method.name!r}", method.description or None)
    hints = typing.get_type_hints(method.Options)
    for f in dataclasses.fields(method.Options):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        tp = getattr(hints.get(f.name), "__name__", str(hints.get(f.name)))
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"method_option_{f.name}", metavar="VALUE",
                           default=argparse.SUPPRESS, help=f"{tp}, default {default!r}")


def _value_flags() -> set[str]:
    """The command's flags that take a value (their value is not a positional)."""
    return {s for a in build_parser()._actions if a.option_strings and a.nargs != 0 for s in a.option_strings}


def _positionals(argv: list[str]) -> list[str]:
    out, skip, value_flags = [], False, _value_flags()
    for tok in argv:
        if skip:
            skip = False
        elif tok in value_flags:
            skip = True
        elif not tok.startswith("-"):
            out.append(tok)
    return out


def _method_for_help(argv: list[str]):
    """The method named on the command line (for --help), or None."""
    pos = _positionals(argv)
    if len(pos) < 3:
        return None
    try:
        from autosam.plugins import get_method

        name = pos[2]
        if name == "auto":
            from autosam.inference.predictor import default_method_of

            name = default_method_of(pos[0], configuration=normalize_configuration(pos[1]))
        return get_method(name)
    except Exception:
        return None


@command("autosam_train", status=1, errors=(ValueError, KeyError, RuntimeError))
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser(_method_for_help(argv)).parse_args(argv)  # prints help and exits
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = method_overrides_from(parser, extra, method_option_names(
        args.method, args.dataset, args.configuration, args.plans, auto="plans")) if extra else {}
    from autosam.training import distributed

    try:
        env = distributed.launcher_env()
        if env is None and ((args.num_gpus is not None and args.num_gpus > 1) or args.ddp):
            nproc = args.num_gpus or 1
            distributed.check_local_launch(nproc, args.device)
            return distributed.launch_local("autosam.cli.train", argv, nproc)
        if env is not None:
            distributed.check_joined(args.num_gpus, env)
    except RuntimeError as exc:
        print(f"autosam_train: error: {exc}", file=sys.stderr)
        return 1
    main_process = env is None or env.is_main_process
    # the other ranks repeat rank 0's messages: they show errors only
    level = logging.ERROR if not main_process else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s")
    if args.pretrained_weights is not None:  # a file that cannot be loaded is refused before the fold folder is written
        from autosam.training.checkpoint import load_checkpoint

        load_checkpoint(args.pretrained_weights)  # forged, legacy, damaged or missing: one line, nothing written
    from autosam.training.trainer import run_training

    device = args.device or default_device()
    joined = finished = False
    try:
        if env is not None:  # one rank of a launched job: its device, then the process group
            device = distributed.rank_device(device, env)
            if env.world_size > 1 or args.ddp:
                distributed.init_process_group(device, env)
                joined = True
        fold_dir = run_training(
            args.dataset, args.configuration, args.method, args.fold, epochs=args.epochs,
            iters_per_epoch=args.iters_per_epoch, device=device, resume=args.resume,
            validation_only=args.validation_only, save_npz=args.save_npz, seed=args.seed, plans_name=args.plans,
            method_overrides=overrides, num_workers=args.num_workers, progress=not args.quiet and main_process,
            val_best=args.val_best, disable_checkpointing=args.disable_checkpointing,
            pretrained_weights=args.pretrained_weights, step_size=args.step_size,
            time_budget_minutes=args.time_budget_minutes,
        )
        finished = True
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        rank = f" (rank {env.rank})" if env is not None and env.world_size > 1 else ""
        print(f"autosam_train: error{rank}: {error_text(exc)}", file=sys.stderr)
        return 1
    finally:
        if joined:
            distributed.destroy_process_group(wait_for_others=finished)
    if not main_process:
        return 0
    print(f"results: {fold_dir}")
    print(f"progress plot: {fold_dir / 'progress.png'}")
    summary = fold_dir / "validation" / "summary.json"
    if summary.is_file():
        from autosam.utils.files import read_json

        fg = read_json(summary).get("foreground_mean", {}).get("Dice")
        print(f"validation: {summary} (foreground mean Dice {fg})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
