"""``autosam_plan_and_preprocess`` and its three steps as separate commands (nnU-Net-style):

- ``autosam_extract_fingerprint -d ID [-np N] [--verify_dataset_integrity] [--clean] [--undeclared_labels_to_background]``
- ``autosam_plan_experiment -d ID [-pl PLANNER] [-gpu_memory_target G] [--target auto|gpu|cpu] [-overwrite_plans_name NAME]``
- ``autosam_preprocess -d ID [-plans_name NAME] [-c CONFIGS...] [-np N] [--undeclared_labels_to_background]``
- ``autosam_plan_and_preprocess -d ID [-np N] [-npfp N] [-pl PLANNER] [-c CONFIGS...] [--verify_dataset_integrity]
  [--clean] [--no_pp] [-gpu_memory_target G] [--target T] [--undeclared_labels_to_background]``
- ``autosam_move_plans_between_datasets -s SOURCE -t TARGET -sp SOURCE_PLANS [-tp TARGET_PLANS]``

Every command also takes ``--no_pbar`` (no progress bars), as nnU-Net's.
"""
from __future__ import annotations

import argparse
import logging
import sys

from autosam.cli.common import Parser, command, normalize_configuration
from autosam.experiment_planning.plans import DEFAULT_PLANS_NAME

EPILOG = ("Folders come from AUTOSAM_RAW, AUTOSAM_PREPROCESSED and AUTOSAM_RESULTS. "
          "See documentation/planning.md for the planning rules and the plans file.")


def _add_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dataset", nargs="+", required=True,
                   help="dataset id(s) (17) or full name(s) (Dataset017_Liver)")


def _add_np(p: argparse.ArgumentParser) -> None:
    p.add_argument("-np", "--num_processes", type=int, default=2, help="worker processes, one case per task (default 2)")


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify_dataset_integrity", action="store_true",
                   help="check the raw dataset first (channels, geometry, labels, NaN/inf, duplicates); "
                   "a problem stops the run before anything is written")


def _add_undeclared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--undeclared_labels_to_background", action="store_true",
                   help="label values that dataset.json does not declare become background (0) when preprocessing, and "
                   "are left out of the fingerprint's statistics. Without it, such values stop the run with one error "
                   "listing every label file that holds them, before anything is written")


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("-pl", "--planner", default="default",
                   help="registered planner plugin (default 'default'); another planner writes <PLANNER>Plans.json")
    p.add_argument("-gpu_memory_target", "--gpu_memory_gb", dest="gpu_memory_gb", type=float, default=8.0,
                   help="GPU memory budget in GB for patch and batch size (default 8)")
    p.add_argument("--target", choices=("auto", "gpu", "cpu"), default="auto",
                   help="hardware to size the network and patch for: gpu (nnU-Net's rules), cpu (16 base features and a "
                   "per-iteration compute budget, so that training on a CPU takes minutes, not hours), or auto "
                   "(default: gpu when this machine has CUDA or MPS, else cpu). Plan on the machine you train on, "
                   "or say which.")
    p.add_argument("-overwrite_plans_name", "--plans_name", dest="plans_name", default=None,
                   help="name of the plans file (default autosamPlans for the default planner, <PLANNER>Plans otherwise)")


def _add_configs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--configurations", nargs="+", default=None, type=normalize_configuration,
                   help="configurations to preprocess (default: all planned, i.e. 2d, 3d and 3d_lowres when planned, "
                        "except 3d_lowres on a CPU target; nnU-Net's 3d_fullres means 3d)")


#: The user errors of these commands (DatasetError is a ValueError; a planner plugin's bad return is a TypeError)
USER_ERRORS = (ValueError, KeyError, TypeError)


def _run(fn, args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for dataset in args.dataset:
        fn(dataset)
    return 0


def _parser(prog: str, description: str) -> Parser:
    p = Parser(prog=prog, description=description, epilog=EPILOG)
    p.add_argument("--no_pbar", action="store_true", help="no progress bars (for non-interactive jobs)")
    return p


@command("autosam_extract_fingerprint", errors=USER_ERRORS)
def main_fingerprint(argv: list[str] | None = None) -> int:
    p = _parser("autosam_extract_fingerprint", "Extract the dataset fingerprint (dataset_fingerprint.json).")
    _add_dataset(p)
    _add_np(p)
    _add_verify(p)
    p.add_argument("--clean", action="store_true", help="recompute even if an up-to-date fingerprint exists")
    _add_undeclared(p)
    args = p.parse_args(argv)
    from autosam.experiment_planning.fingerprint import extract_fingerprint

    return _run(lambda d: extract_fingerprint(d, num_processes=args.num_processes, verify=args.verify_dataset_integrity,
                                              overwrite=args.clean, progress=not args.no_pbar,
                                              undeclared_labels_to_background=args.undeclared_labels_to_background), args)


@command("autosam_plan_experiment", errors=USER_ERRORS)
def main_plan(argv: list[str] | None = None) -> int:
    p = _parser("autosam_plan_experiment", "Plan configurations 2d, 3d (and 3d_lowres when needed) from the fingerprint.")
    _add_dataset(p)
    _add_plan(p)
    args = p.parse_args(argv)
    from autosam.experiment_planning.planning import plan_experiment

    def plan(d):
        plans = plan_experiment(d, planner=args.planner, gpu_memory_gb=args.gpu_memory_gb, plans_name=args.plans_name,
                                target=args.target)
        _summary(plans)

    return _run(plan, args)


@command("autosam_preprocess", errors=USER_ERRORS)
def main_preprocess(argv: list[str] | None = None) -> int:
    p = _parser("autosam_preprocess", "Crop, normalise, resample and store the training cases of planned configurations.")
    _add_dataset(p)
    p.add_argument("-plans_name", "--plans_name", default=DEFAULT_PLANS_NAME, help=f"plans file to use (default {DEFAULT_PLANS_NAME})")
    _add_configs(p)
    _add_np(p)
    _add_undeclared(p)
    args = p.parse_args(argv)
    from autosam.preprocessing.preprocessor import preprocess_dataset

    return _run(lambda d: preprocess_dataset(d, plans_name=args.plans_name, configurations=args.configurations,
                                             num_processes=args.num_processes, progress=not args.no_pbar,
                                             undeclared_labels_to_background=args.undeclared_labels_to_background), args)


@command("autosam_plan_and_preprocess", errors=USER_ERRORS)
def main(argv: list[str] | None = None) -> int:
    p = _parser("autosam_plan_and_preprocess",
                "Fingerprint, plan and preprocess a raw dataset (nnU-Net v2 format) in one go.")
    _add_dataset(p)
    _add_np(p)
    _add_plan(p)
    _add_configs(p)
    _add_verify(p)
    p.add_argument("-npfp", type=int, default=None,
                   help="worker processes of the fingerprint extraction (default: -np)")
    p.add_argument("--clean", action="store_true", help="recompute the fingerprint even if an up-to-date one exists")
    p.add_argument("--no_pp", action="store_true", help="fingerprint and plan only, no preprocessing")
    _add_undeclared(p)
    args = p.parse_args(argv)
    from autosam.pipeline import plan_and_preprocess

    def run(d):
        plans = plan_and_preprocess(d, num_processes=args.num_processes, planner=args.planner,
                                    configurations=args.configurations, verify=args.verify_dataset_integrity,
                                    gpu_memory_gb=args.gpu_memory_gb, plans_name=args.plans_name,
                                    progress=not args.no_pbar, target=args.target, preprocess=not args.no_pp,
                                    clean=args.clean, num_processes_fingerprint=args.npfp,
                                    undeclared_labels_to_background=args.undeclared_labels_to_background)
        _summary(plans)

    return _run(run, args)


def _summary(plans) -> None:
    target = ("CPU target: 16 base features, patch within the per-iteration compute budget"
              if plans.compute_target == "cpu" else f"GPU target, {plans.gpu_memory_target_gb:g} GB")
    print(f"{plans.dataset_name}: plans {plans.plans_name} (planner {plans.planner}, {target})")
    for name, c in plans.configurations.items():
        print(f"  {name:10s} spacing {[round(s, 3) for s in c.spacing]} patch {c.patch_size} batch {c.batch_size} "
              f"norm {c.normalization_schemes} data {c.data_identifier}")
    print(f"  default method: {plans.default_method} ({plans.default_method_rationale})")


@command("autosam_move_plans_between_datasets", errors=(ValueError,))
def main_move_plans(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="autosam_move_plans_between_datasets",
        description="Copy the plans of a source dataset to a target dataset (nnU-Net's command of the same name): "
                    "configurations, spacings, patch and batch sizes, networks, normalisation and the source's "
                    "intensity statistics are kept; the dataset name, labels and channel names come from the "
                    "target's raw dataset.json. Then run autosam_preprocess -d TARGET -plans_name TARGET_PLANS. "
                    "The two datasets must have the same number of channels.",
        epilog="example: autosam_move_plans_between_datasets -s 2 -t 4 -sp autosamPlans -tp autosamPlansFrom2. "
               + EPILOG)
    p.add_argument("-s", required=True, help="source dataset id or name")
    p.add_argument("-t", required=True, help="target dataset id or name (its raw dataset.json is read)")
    p.add_argument("-sp", required=True, help="source plans name (autosamPlans for autosamPlans.json)")
    p.add_argument("-tp", default=None,
                   help="target plans name (default: the source's; a distinct name such as autosamPlansFrom2 is "
                        "clearer, and keeps the target's own autosamPlans)")
    p.add_argument("--overwrite", action="store_true", help="replace target plans of that name (default: refuse)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.experiment_planning.move_plans import move_plans_between_datasets

    written = move_plans_between_datasets(a.s, a.t, a.sp, a.tp, a.overwrite)
    print(f"plans written to {written}; next: autosam_preprocess -d {a.t} -plans_name {written.stem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
