"""Commands that choose and combine: find_best_configuration, ensemble, post-processing."""
from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm


def _bar(desc: str):
    bar = tqdm(desc=desc, unit="case")

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


def main_find_best(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="autosam_find_best_configuration",
        description="Pick the best trained method/configuration or pairwise ensemble by cross-validation "
                    "foreground-mean Dice, determine post-processing, and write the commands that reproduce it "
                    "(results/<dataset>/find_best_configuration.json, inference_instructions.txt, comparison.md/.png).")
    p.add_argument("-d", "--dataset", required=True, help="dataset id (17) or name (Dataset017_Name)")
    p.add_argument("-m", "--methods", nargs="+", default=None, help="methods to consider (default: every trained one)")
    p.add_argument("-c", "--configurations", nargs="+", default=None, help="configurations (default: all trained)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("-p", "--plans", default="autosamPlans")
    p.add_argument("--disable_ensembling", action="store_true")
    p.add_argument("-np", "--num_processes", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autosam.postprocessing.find_best import find_best_configuration

    try:
        result = find_best_configuration(a.dataset, a.methods, a.configurations, a.folds, a.plans,
                                         not a.disable_ensembling, a.num_processes)
    except (FileNotFoundError, ValueError) as exc:
        print(f"autosam_find_best_configuration: {exc}", file=sys.stderr)
        return 1
    print("\nRanking (cross-validation foreground-mean Dice):")
    for r in result["ranking"]:
        print(f"  {r['foreground_mean_dice']:.4f}  {r['name']}")
    print()
    print("\n".join(result["commands"]["text"]))
    return 0


def main_ensemble(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autosam_ensemble",
                                description="Average saved probabilities (<case>.npz from --save_probabilities/--npz) of "
                                            "several methods/configurations; write label maps in original geometry.")
    p.add_argument("-i", "--inputs", nargs="+", required=True, help="two or more folders with <case>.npz + <case>.json")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--file_ending", default=".nii.gz")
    p.add_argument("--save_probabilities", action="store_true")
    a = p.parse_args(argv)
    from autosam.postprocessing.ensemble import ensemble_folders

    try:
        cases = ensemble_folders(a.inputs, a.output, a.file_ending, a.save_probabilities, progress=_bar("ensemble"))
    except (FileNotFoundError, ValueError) as exc:
        print(f"autosam_ensemble: {exc}", file=sys.stderr)
        return 1
    print(f"ensembled {len(cases)} case(s) into {a.output}")
    return 0


def main_apply_postprocessing(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autosam_apply_postprocessing",
                                description="Apply post-processing rules (postprocessing.json written by "
                                            "autosam_find_best_configuration) to a folder of label maps.")
    p.add_argument("-i", "--input", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-pp", "--pp_file", required=True, help="postprocessing.json")
    p.add_argument("--file_ending", default=".nii.gz")
    a = p.parse_args(argv)
    from autosam.postprocessing.postprocess import apply_postprocessing_folder
    from autosam.utils.files import read_json

    try:
        rules = read_json(a.pp_file)["rules"]
        written = apply_postprocessing_folder(a.input, a.output, rules, a.file_ending)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"autosam_apply_postprocessing: {a.pp_file if isinstance(exc, KeyError) else ''} {exc}", file=sys.stderr)
        return 1
    print(f"post-processed {len(written)} case(s) into {a.output} (rules: {rules or 'none'})")
    return 0
