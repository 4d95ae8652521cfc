"""Commands that choose and combine: find_best_configuration, ensemble, post-processing, and the two
steps of find_best_configuration on their own (accumulate_crossval_results, determine_postprocessing)."""
from __future__ import annotations

import logging
from pathlib import Path

from autosam.cli.common import Parser, command, normalize_configuration


def _bar(desc: str):
    from autosam.utils.progress import progress_bar

    bar = progress_bar(desc=desc, unit="case")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


@command("autosam_find_best_configuration", status=1, errors=(ValueError,))
def main_find_best(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="autosam_find_best_configuration",
        description="Pick the best trained method/configuration or pairwise ensemble by cross-validation "
                    "foreground-mean Dice, determine post-processing, and write the commands that reproduce it "
                    "(results/<dataset>/find_best_configuration.json, inference_instructions.txt, comparison.md/.png).")
    p.add_argument("dataset_name_or_id", nargs="?", default=None, metavar="ID",
                   help="dataset id (17) or name (Dataset017_Name), positional as in nnU-Net (or -d)")
    p.add_argument("-d", "--dataset", default=None, help="dataset id or name (instead of the positional ID)")
    p.add_argument("-m", "-tr", "--methods", dest="methods", nargs="+", default=None,
                   help="methods to consider (nnU-Net's -tr names trainers; here methods; default: every trained one)")
    p.add_argument("-c", "--configurations", nargs="+", default=None, type=normalize_configuration,
                   help="configurations (default: all trained; nnU-Net's 3d_fullres means 3d)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                   help="folds whose validation results are compared (default 0 1 2 3 4); a model lacking one is skipped")
    p.add_argument("-p", "--plans", default="autosamPlans", help="plans name (default autosamPlans)")
    p.add_argument("--disable_ensembling", action="store_true", help="compare single models only, no pairwise ensembles")
    p.add_argument("--rank-by", dest="rank_by", choices=("dice", "dsc_auc"), default="dice",
                   help="dice (default): cross-validation foreground-mean Dice of the automatic predictions; dsc_auc: "
                        "the interactive protocol's DSC_AUC (box + clicks) read from <model>/fold_N/interactive/"
                        "summary.json of autosam_evaluate_interactive, single models only, result in "
                        "find_best_configuration_dsc_auc.json (-m auto keeps following the Dice ranking)")
    p.add_argument("-np", "--num_processes", type=int, default=2,
                   help="worker processes for evaluation and post-processing (default 2)")
    a = p.parse_args(argv)
    if a.dataset is not None and a.dataset_name_or_id is not None and a.dataset != a.dataset_name_or_id:
        p.error(f"the dataset is given twice ({a.dataset_name_or_id} and -d {a.dataset})")
    a.dataset = a.dataset if a.dataset is not None else a.dataset_name_or_id
    if a.dataset is None:
        p.error("the dataset is required (positional ID, as nnU-Net, or -d)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.postprocessing.find_best import find_best_configuration

    result = find_best_configuration(a.dataset, a.methods, a.configurations, a.folds, a.plans,
                                     not a.disable_ensembling, a.num_processes, rank_by=a.rank_by)
    if a.rank_by == "dsc_auc":
        print("\nRanking (interactive protocol, cross-validation): DSC_AUC, Dice after the box, after the last click, "
              "automatic Dice")
        for r in result["ranking"]:
            f = r["interactive"]
            print(f"  {f['dsc_auc']:.4f}  {f['dice_per_step'][0]:.4f}  {f['final_dice']:.4f}  "
                  f"{r['foreground_mean_dice']:.4f}  {r['name']}" + (" (automatic)" if f["mode"] == "automatic" else ""))
    else:
        print("\nRanking (cross-validation foreground-mean Dice):")
        for r in result["ranking"]:
            print(f"  {r['foreground_mean_dice']:.4f}  {r['name']}")
    print()
    print("\n".join(result["commands"]["text"]))
    return 0


@command("autosam_ensemble", status=1, errors=(ValueError,))
def main_ensemble(argv: list[str] | None = None) -> int:
    p = Parser(prog="autosam_ensemble",
                                description="Average saved probabilities (<case>.npz from --save_probabilities/--npz) of "
                                            "several methods/configurations; write label maps in original geometry.")
    p.add_argument("-i", "--inputs", nargs="+", required=True, help="two or more folders with <case>.npz + <case>.json")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--file_ending", default=".nii.gz", help="file ending of the written label maps (default .nii.gz)")
    p.add_argument("--save_probabilities", "--save_npz", dest="save_probabilities", action="store_true",
                   help="also write the averaged probabilities (<case>.npz + <case>.json)")
    a = p.parse_args(argv)
    from autosam.postprocessing.ensemble import ensemble_folders

    cases = ensemble_folders(a.inputs, a.output, a.file_ending, a.save_probabilities, progress=_bar("ensemble"))
    print(f"ensembled {len(cases)} case(s) into {a.output}")
    return 0


@command("autosam_apply_postprocessing", status=1, errors=(ValueError,))
def main_apply_postprocessing(argv: list[str] | None = None) -> int:
    p = Parser(prog="autosam_apply_postprocessing",
                                description="Apply post-processing rules (postprocessing.json written by "
                                            "autosam_find_best_configuration) to a folder of label maps.")
    p.add_argument("-i", "--input", required=True, help="folder of label maps")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("-pp", "-pp_pkl_file", "--pp_file", dest="pp_file", required=True,
                   help="postprocessing.json (nnU-Net's -pp_pkl_file spelling is accepted; the file is JSON here)")
    p.add_argument("--file_ending", default=None,
                   help="file ending of the label maps (default: from -dataset_json, else .nii.gz)")
    p.add_argument("-dataset_json", default=None, help="dataset.json whose file_ending applies (as nnU-Net)")
    a = p.parse_args(argv)
    from autosam.postprocessing.postprocess import apply_postprocessing_folder

    if a.file_ending is None:
        a.file_ending = _entry(a.dataset_json, "file_ending") if a.dataset_json else ".nii.gz"
    rules = _entry(a.pp_file, "rules")
    written = apply_postprocessing_folder(a.input, a.output, rules, a.file_ending)
    print(f"post-processed {len(written)} case(s) into {a.output} (rules: {rules or 'none'})")
    return 0


def _entry(path, key: str):
    """``read_json(path)[key]``; a missing key is a ValueError naming the file."""
    from autosam.utils.files import read_json

    data = read_json(path)
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: no {key!r} entry")
    return data[key]


@command("autosam_accumulate_crossval_results", errors=(ValueError,))
def main_accumulate_crossval_results(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="autosam_accumulate_crossval_results",
        description="Copy the validation predictions of the folds of one trained model into one folder and evaluate "
                    "them against the references in the preprocessed gt_segmentations (summary.json there), as the "
                    "first step of autosam_find_best_configuration does. Every validation case of the folds (per "
                    "splits_final.json) must have a prediction. The folder also gets dataset.json and plans.json, "
                    "ready for autosam_determine_postprocessing -i FOLDER -ref GT.",
        epilog="example: autosam_accumulate_crossval_results 4 -c 3d -m unet -f 0 1 2 3 4")
    p.add_argument("dataset", help="dataset id (4) or name (Dataset004_Hippocampus)")
    p.add_argument("-c", required=True, type=normalize_configuration,
                   help="configuration (2d, 3d, 3d_lowres; nnU-Net's 3d_fullres is 3d)")
    p.add_argument("-m", "-tr", dest="m", default="unet", help="method (default unet); -tr is nnU-Net's spelling")
    p.add_argument("-f", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0 1 2 3 4)")
    p.add_argument("-p", "--plans", default="autosamPlans", help="plans name (default autosamPlans)")
    p.add_argument("-o", default=None,
                   help="output folder (default: <model folder>/crossval_results_folds_<folds>); replaced as a whole")
    p.add_argument("-np", "--num_processes", type=int, default=1, help="worker processes for the evaluation (default 1)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.postprocessing.find_best import accumulate_crossval_results

    folder, summary = accumulate_crossval_results(a.dataset, a.c, a.m, a.f, a.plans, a.o, a.num_processes)
    print(f"{len(summary['metric_per_case'])} case(s) of folds {' '.join(map(str, a.f))} in {folder}; "
          f"foreground mean Dice {summary['foreground_mean'].get('Dice', float('nan')):.4f} ({folder / 'summary.json'})")
    return 0


@command("autosam_determine_postprocessing", errors=(ValueError, KeyError))
def main_determine_postprocessing(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="autosam_determine_postprocessing",
        description="Decide, on a folder of cross-validation predictions, which post-processing to keep: keeping the "
                    "largest connected component of all foreground as one region, then of each label, each step kept "
                    "only when the foreground-mean Dice rises and no label's Dice drops (nnU-Net's rule, as in "
                    "autosam_find_best_configuration). Writes INPUT/postprocessing.json (for "
                    "autosam_apply_postprocessing -pp) and, unless --remove_postprocessed, the post-processed label "
                    "maps to INPUT/postprocessed.",
        epilog="example: autosam_determine_postprocessing -i crossval_results_folds_0_1_2_3_4 -ref gt_segmentations")
    p.add_argument("-i", required=True, type=Path, help="folder of predicted label maps (cross-validation predictions)")
    p.add_argument("-ref", required=True, type=Path, help="folder of the reference label maps (same file names)")
    p.add_argument("-dataset_json", type=Path, default=None,
                   help="dataset.json with labels and file_ending (default: INPUT/dataset.json)")
    p.add_argument("-np", "--num_processes", type=int, default=1, help="worker processes for the evaluations (default 1)")
    p.add_argument("--remove_postprocessed", action="store_true",
                   help="do not keep the post-processed label maps in INPUT/postprocessed")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.postprocessing.postprocess import apply_postprocessing_folder, determine_postprocessing

    dataset_json = a.dataset_json or a.i / "dataset.json"
    if not dataset_json.is_file():
        raise FileNotFoundError(f"{dataset_json}: no dataset.json; give one with -dataset_json")
    result = determine_postprocessing(a.i, a.ref, dataset_json, num_processes=a.num_processes)
    if not a.remove_postprocessed:
        apply_postprocessing_folder(a.i, a.i / "postprocessed", result["rules"], _entry(dataset_json, "file_ending"))
    rules = ", ".join(f"largest component of {r}" for r in result["rules"]) or "none (no step raised the Dice)"
    print(f"post-processing: {rules}; foreground mean Dice {result['foreground_mean_dice_before']:.4f} -> "
          f"{result['foreground_mean_dice_after']:.4f}; rules in {a.i / 'postprocessing.json'}"
          + ("" if a.remove_postprocessed else f", post-processed label maps in {a.i / 'postprocessed'}"))
    return 0
