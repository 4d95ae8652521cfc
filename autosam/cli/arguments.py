"""Argument values (folds, step size, counts) and the option groups the commands share: device,
prediction (``-step_size``, ``--disable_tta``, ...), input limits and sharding (``-num_parts``, ...)."""
from __future__ import annotations

import argparse
import logging

from autosam.io.limits import set_limits
from autosam.utils import precision
from autosam.utils.precision import parse_device

logger = logging.getLogger(__name__)

#: nnU-Net's sliding-window step, and the larger one of ``--fast``.
DEFAULT_STEP = 0.5
FAST_STEP = 0.75


def fold_value(text: str) -> int | str:
    """A fold on the command line: ``0``, ``1``, ... or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"fold {text!r}: give a fold number or 'all'") from None


def step_size(text: str) -> float:
    """``-step_size``: the sliding-window step as a fraction of the patch, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (fraction of the patch size), got {value}")
    return value


def add_device(p: argparse.ArgumentParser, what: str) -> None:
    """``-device``/``--device`` with the default order this code uses (:func:`default_device`)."""
    p.add_argument("-device", "--device", dest="device", type=parse_device, default=None, metavar="DEVICE",
                   help=f"device for {what}: cpu, cuda, cuda:N (the N-th visible GPU) or mps (default: cuda when "
                        "available, else mps when available, else cpu). On CUDA the network runs under autocast in "
                        "bf16 where the card computes it natively, else in fp16 (training: with gradient scaling)")


def add_prediction_options(p: argparse.ArgumentParser) -> None:
    """The options shared by the prediction commands: ``-step_size``, ``--disable_tta``,
    ``--save_probabilities``, ``-device``, ``-npp`` and ``-nps`` (nnU-Net's spellings)."""
    p.add_argument("-step_size", "--step_size", dest="step_size", type=step_size, default=None,
                   help="sliding-window step as a fraction of the patch size, in (0, 1]; larger is faster and less "
                        f"accurate (default {DEFAULT_STEP}, as nnU-Net; {FAST_STEP} with --fast)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster in 3D)")
    p.add_argument("--fast", action="store_true",
                   help=f"the fast CPU path: no mirroring (--disable_tta) and step {FAST_STEP} unless -step_size is "
                        "given; with -f 0 (one fold) it is the cheapest prediction (documentation/"
                        "inference_and_evaluation.md#the-fast-cpu-path has its Dice and seconds per case); on a CPU "
                        "with native bf16 (AVX512-BF16, AMX) it also turns on --bf16")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="on the CPU, run the network under bfloat16 autocast, the precision a GPU predicts in: several "
                        "times faster on CPUs with native bf16 (AVX512-BF16, AMX), slower where it is emulated; masks "
                        "within 0.001 Dice of float32 on the example dataset (default: on with --fast where native, "
                        "else off; --no-bf16 keeps float32)")
    p.add_argument("--save_probabilities", action="store_true", help="also write <case>.npz (probabilities) and <case>.json")
    add_device(p, "prediction")
    p.add_argument("-npp", "--num_processes", dest="num_processes", type=int, default=2,
                   help="1 = everything in sequence; more = preprocess the next case and export previous ones in "
                        "background threads while one case is predicted (default 2)")
    p.add_argument("-nps", "--num_export_workers", dest="num_export_workers", type=int, default=1,
                   help="exports (resampling to the input geometry, writing) allowed in flight in background threads; "
                        "each holds one case's probabilities in memory (default 1; used when -npp > 1)")
    add_max_voxels(p)
    p.add_argument("--overwrite_output", action="store_true",
                   help="write into -o even when it is a non-empty folder that is not a prediction folder (without "
                        "predict_args.json), replacing its dataset.json and same-named files (default: refuse)")


def apply_fast_path(args) -> None:
    """Resolve ``--fast`` and the default ``-step_size`` of a parsed prediction command line."""
    if args.fast:
        args.disable_tta = True
    if args.bf16 is None:
        args.bf16 = bool(args.fast) and precision.cpu_bf16_native()
    elif args.bf16 and not precision.cpu_bf16_native():
        logger.warning("--bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); bf16 is emulated and may be slower "
                       "than float32")
    if args.step_size is None:
        args.step_size = FAST_STEP if args.fast else DEFAULT_STEP


def add_max_voxels(p: argparse.ArgumentParser) -> None:
    """``--max_voxels``: the per-image voxel limit (:mod:`autosam.io.limits`), applied by :func:`apply_limits`."""
    p.add_argument("--max_voxels", type=positive_int, default=None, metavar="N",
                   help="refuse an input image of more than N voxels before reading it (default 400000000, or "
                        "AUTOSAM_MAX_VOXELS): a small compressed file may declare a volume that needs tens of GB")


def apply_limits(args) -> None:
    """Put the limits given on the command line (``--max_voxels``) into the environment."""
    set_limits(max_voxels=getattr(args, "max_voxels", None))


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_sharding_options(p: argparse.ArgumentParser) -> None:
    """``-num_parts``/``-part_id`` and ``--continue_prediction`` (nnU-Net's spellings) and
    ``--num-gpus`` of the prediction commands."""
    p.add_argument("-num_parts", "--num_parts", dest="num_parts", type=positive_int, default=1, metavar="N",
                   help="split the cases into N parts for N independent jobs (e.g. a job array): job -part_id K takes "
                        "every N-th case of the sorted list, starting at the K-th (default 1: all cases)")
    p.add_argument("-part_id", "--part_id", dest="part_id", type=int, default=0, metavar="K",
                   help="which part this job predicts, 0 .. N-1 (default 0)")
    p.add_argument("--continue_prediction", "-continue_prediction", dest="continue_prediction", action="store_true",
                   help="skip cases whose output is complete (the label file, which is written last and atomically; "
                        "with --save_probabilities also its .npz and .json), e.g. after an interrupted job")
    p.add_argument("--num-gpus", "-num_gpus", "--num_gpus", dest="num_gpus", type=positive_int, default=None,
                   metavar="N", help="predict with N processes on this node, one GPU each (cuda:0 .. cuda:N-1; with "
                                     "--device cpu, N CPU processes), each taking every N-th case of this job's part")


def check_sharding(parser: argparse.ArgumentParser, args) -> None:
    if not 0 <= args.part_id < args.num_parts:
        parser.error(f"argument -part_id: must be in 0 .. {args.num_parts - 1} (-num_parts {args.num_parts}), "
                     f"got {args.part_id}")
