#!/usr/bin/env bash
# Issue 9 acceptance run: unet + two SAM methods, all 5 folds, a few epochs each with --npz, then
# autosam_find_best_configuration, then the printed reproduction commands.
# Usage: bash benchmarks/choose_methods.sh [EPOCHS] [ITERS]   (data under ./.bench/choose unless AUTOSAM_* set)
set -euo pipefail
EPOCHS=${1:-3}
ITERS=${2:-20}
ROOT=${BENCH_ROOT:-$PWD/.bench/choose}
export AUTOSAM_RAW=${AUTOSAM_RAW:-$ROOT/raw} AUTOSAM_PREPROCESSED=${AUTOSAM_PREPROCESSED:-$ROOT/pre} AUTOSAM_RESULTS=${AUTOSAM_RESULTS:-$ROOT/res}
autosam_example_dataset -d 999 --cases 10
autosam_plan_and_preprocess -d 999 -np 2
for fold in 0 1 2 3 4; do
  autosam_train 999 3d unet $fold --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --npz --device cpu
  autosam_train 999 3d sautomed $fold --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --npz --device cpu --backbone litemedsam
  autosam_train 999 3d masksam $fold --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --npz --device cpu --backbone litemedsam
done
autosam_find_best_configuration -d 999 -m unet sautomed masksam -c 3d | tee "$ROOT/find_best.txt"
# Re-run the printed cross-validation reproduction commands and compare with the reported Dice
python - "$AUTOSAM_RESULTS" <<'PY'
import json, shlex, subprocess, sys, pathlib
res = pathlib.Path(sys.argv[1]) / "Dataset999_Example"
r = json.loads((res / "find_best_configuration.json").read_text())
work = res / "reproduce"
work.mkdir(exist_ok=True)
for line in r["commands"]["reproduce_crossval"]:
    args = [str(work / a) if a.isupper() else a for a in shlex.split(line)]
    if args[0] == "autosam_evaluate_folder":
        args += ["-o", str(work / "summary.json")]
    subprocess.run(args, check=True)
got = json.loads((work / "summary.json").read_text())["foreground_mean"]["Dice"]
want = r["best"]["postprocessing"]["foreground_mean_dice_after"]
print(f"winner {r['best']['name']}: reported {want:.4f}, reproduced {got:.4f}")
sys.exit(0 if abs(got - want) < 1e-6 else 1)
PY
