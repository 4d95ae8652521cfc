"""``autosam_compare_methods -d ID --time-budget-minutes N``: the quick empirical choice of a method.

Trains every candidate method on the given folds (default: fold 0) for the same wall-clock budget
(``autosam_train ... --time-budget-minutes N --npz``), then ranks them with
``autosam_find_best_configuration`` on those folds, which also makes ``-m auto`` use the winner.
The planner's default method is a prior from the fingerprint and the measurements autosam knows of
(``documentation/planning.md``); this command answers the question on the user's own data, machine
and budget.
"""
from __future__ import annotations

import logging
import time

from autosam.cli.common import Parser, add_device, command, default_device, normalize_configuration

logger = logging.getLogger(__name__)


def build_parser() -> Parser:
    p = Parser(
        prog="autosam_compare_methods",
        description="Train each candidate method on the given folds for the same time budget, then rank them by "
                    "cross-validation Dice (autosam_find_best_configuration on those folds; -m auto then uses the "
                    "winner). The results of each method are ordinary trained folds, kept for later use.",
        epilog="example: autosam_compare_methods -d 17 --time-budget-minutes 15 (unet, the plans' default method "
               "and the best-voted SAM method, fold 0, 15 minutes of training each)")
    p.add_argument("-d", "--dataset", required=True, help="dataset id (17) or name (Dataset017_Name)")
    p.add_argument("-c", "--configuration", default="3d", type=normalize_configuration,
                   help="configuration (default 3d)")
    p.add_argument("-m", "--methods", nargs="+", default=None,
                   help="methods to compare (default: unet, the plans' default method and the highest-voted other "
                        "method)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0], help="folds to train and rank on (default 0)")
    p.add_argument("--time-budget-minutes", "--time_budget_minutes", dest="budget", type=float, default=10.0,
                   metavar="MIN", help="training time per method and fold in minutes (default 10)")
    p.add_argument("--epochs", type=int, default=1000,
                   help="planned epochs; the budget decides how many run and the schedule follows (default 1000)")
    p.add_argument("-p", "--plans", default="autosamPlans", help="plans name (default autosamPlans)")
    p.add_argument("--retrain", action="store_true",
                   help="train again folds that already hold a run with this budget (default: reuse them)")
    p.add_argument("-np", "--num_processes", type=int, default=1, help="worker processes for the evaluation")
    add_device(p, "training and validation")
    return p


def candidate_methods(plans, registered: list[str]) -> list[str]:
    """unet, the plans' default method, and the highest-voted registered method other than those."""
    out = ["unet", plans.default_method]
    for name, _score, _why in plans.method_votes:
        if name in registered and name not in out:
            out.append(name)
            break
    return [m for i, m in enumerate(out) if m and m in registered and m not in out[:i]]


def _reusable(fold_dir, budget: float) -> bool:
    from autosam.utils.files import read_json

    try:
        meta = read_json(fold_dir / "metadata.json")
    except (OSError, ValueError):
        return False
    return (meta.get("time_budget_minutes") == budget and (fold_dir / "checkpoint_final.pth").is_file()
            and (fold_dir / "validation" / "summary.json").is_file())


@command("autosam_compare_methods", errors=(ValueError, KeyError, FileNotFoundError))
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam import paths
    from autosam.experiment_planning.plans import Plans
    from autosam.io.dataset import dataset_name_from_id
    from autosam.plugins import get_plugin_system
    from autosam.postprocessing.find_best import find_best_configuration
    from autosam.training.time_budget import TimeBudget
    from autosam.training.trainer import model_folder, run_training
    from autosam.utils.files import read_json, write_json

    TimeBudget(args.budget, args.epochs)  # a bad budget is refused before anything runs
    dataset = dataset_name_from_id(args.dataset)
    plans_path = paths.preprocessed_dir() / dataset / f"{args.plans}.json"
    if not plans_path.is_file():
        raise FileNotFoundError(f"{plans_path}: plans not found; run autosam_plan_and_preprocess -d {args.dataset} first")
    plans = Plans.load(plans_path)
    registered = get_plugin_system().methods.names()
    methods = args.methods or candidate_methods(plans, registered)
    unknown = [m for m in methods if m not in registered]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; installed: {', '.join(registered)}")
    print(f"comparing {', '.join(methods)} on {dataset} {args.configuration}, fold(s) "
          f"{' '.join(map(str, args.folds))}, {args.budget:g} min of training each")
    runs = []
    for method in methods:
        for fold in args.folds:
            fold_dir = model_folder(dataset, method, args.plans, args.configuration) / f"fold_{fold}"
            start = time.monotonic()
            reused = not args.retrain and _reusable(fold_dir, args.budget)
            if reused:
                print(f"{method} fold {fold}: already trained with this budget, reused ({fold_dir})")
            else:
                run_training(args.dataset, args.configuration, method, fold, epochs=args.epochs,
                             device=args.device or default_device(), save_npz=True, plans_name=args.plans,
                             time_budget_minutes=args.budget)
            meta = read_json(fold_dir / "metadata.json")
            summary = read_json(fold_dir / "validation" / "summary.json")
            runs.append({"method": method, "fold": fold, "budget_minutes": args.budget,
                         "iterations": (meta.get("time_budget") or {}).get("iterations_done"),
                         # a reused fold was timed when it was trained, not here
                         "minutes_with_validation": None if reused else round((time.monotonic() - start) / 60, 2),
                         "dice": summary["foreground_mean"]["Dice"]})
    result = find_best_configuration(args.dataset, methods, [args.configuration], args.folds, args.plans,
                                     allow_ensembling=False, num_processes=args.num_processes)
    report = {"dataset": dataset, "configuration": args.configuration, "folds": args.folds,
              "time_budget_minutes": args.budget, "runs": runs,
              "ranking": [{"name": r["name"], "dice": r["foreground_mean_dice"]} for r in result["ranking"]],
              "winner": result["ranking"][0]["name"] if result["ranking"] else None,
              "plans_default_method": plans.default_method, "plans_rationale": plans.default_method_rationale}
    out = paths.results_dir() / dataset / "compare_methods.json"
    write_json(out, report)
    print(f"\n{'method':<12} {'fold':>4} {'iterations':>10} {'Dice':>7}")
    for r in runs:
        print(f"{r['method']:<12} {r['fold']:>4} {r['iterations'] if r['iterations'] is not None else '-':>10} "
              f"{r['dice']:>7.4f}")
    print(f"\nwinner at {args.budget:g} min: {report['winner']} (the plans' default: {plans.default_method}); "
          f"autosam_predict ... -m auto now uses it. Written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
