#!/usr/bin/env bash
# Issue 9 acceptance run on the "organs" example: unet and two SAM methods (pretrained LiteMedSAM
# backbone) trained on every fold for a few epochs with --npz, then autosam_find_best_configuration,
# then the printed cross-validation reproduction commands are re-run and their Dice compared with
# the reported one. The script fails unless every method and every pairwise ensemble is ranked, the
# winner is the highest, and the reproduced Dice equals the reported one.
#
# usage: bash benchmarks/learning/choose_methods.sh [UNET_EPOCHS [UNET_ITERS [SAM_EPOCHS [SAM_ITERS]]]]
#   defaults 2 12 2 6 (unet 2 epochs x 12 iterations, each SAM method 2 epochs x 6 iterations):
#   enough to rank real trained outputs, not to segment well.
# environment:
#   BENCH_ROOT    work folder (default ./.bench/choose); AUTOSAM_RAW/_PREPROCESSED/_RESULTS default under it
#   CASES         training cases of the example (default 8, its default; 5 folds -> 1-2 validation cases each)
#   FOLDS         folds to train and choose on (default "0 1 2 3 4"; "0" for a quick smoke test)
#   SAM_METHODS   the SAM methods (default "sautomed masksam")
#   RESUME=1      keep folds that already have validation/summary.json (otherwise they are retrained)
#   PREDICT_TEST=1  also run the printed autosam_predict/... commands on imagesTs and evaluate on labelsTs
#   <METHOD>_FLAGS  extra autosam_train flags of one SAM method (upper-case name), e.g.
#                 MASKSAM_FLAGS="--patch-size 4 80 88". None by default: masksam's planned patch is the
#                 whole median slice (8 x 80 x 88 on the CPU plans), one in-plane tile per slice.
#   NUM_WORKERS   autosam_train --num-workers (default 0); OMP_NUM_THREADS defaults to 1
# Timings (wall, CPU, load average) of every step go to $BENCH_ROOT/timings.txt.
# The defaults need about 40-45 min of CPU time on one core (masksam's mirrored sliding-window
# validation, ~2 min per case, dominates); run it under `nice -n 19` on a shared machine.
set -euo pipefail
UNET_EPOCHS=${1:-2}
UNET_ITERS=${2:-12}
SAM_EPOCHS=${3:-2}
SAM_ITERS=${4:-6}
CASES=${CASES:-8}
FOLDS=${FOLDS:-0 1 2 3 4}
SAM_METHODS=${SAM_METHODS:-sautomed masksam}
MASKSAM_FLAGS=${MASKSAM_FLAGS:-}
ROOT=${BENCH_ROOT:-$PWD/.bench/choose}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
export AUTOSAM_RAW=${AUTOSAM_RAW:-$ROOT/raw} AUTOSAM_PREPROCESSED=${AUTOSAM_PREPROCESSED:-$ROOT/pre} AUTOSAM_RESULTS=${AUTOSAM_RESULTS:-$ROOT/res}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TIMES=$ROOT/timings.txt
RES=$AUTOSAM_RESULTS/Dataset999_Example

step() {  # step NAME COMMAND...: run, append wall/CPU time and load average to timings.txt
  local name=$1
  shift
  /usr/bin/time -a -o "$TIMES" -f "$name: %e s wall, %U s user + %S s sys" "$@"
  echo "  (load average after $name: $(cut -d' ' -f1-3 /proc/loadavg))" >> "$TIMES"
}

echo "# choose_methods.sh $UNET_EPOCHS $UNET_ITERS $SAM_EPOCHS $SAM_ITERS, folds $FOLDS, SAM methods $SAM_METHODS, $(date -u)" >> "$TIMES"
[ -d "$AUTOSAM_RAW/Dataset999_Example" ] || step example autosam_example_dataset -d 999 --cases "$CASES" --kind organs
[ -f "$AUTOSAM_PREPROCESSED/Dataset999_Example/autosamPlans.json" ] || step preprocess autosam_plan_and_preprocess -d 999 -np 1 -c 3d

train() {  # train METHOD FOLD EPOCHS ITERS [flags...]
  local method=$1 fold=$2 epochs=$3 iters=$4
  shift 4
  if [ "${RESUME:-0}" = 1 ] && [ -f "$RES/${method}__autosamPlans__3d/fold_$fold/validation/summary.json" ]; then
    echo "$method fold $fold: already trained, kept (RESUME=1)"
    return
  fi
  step "train $method fold $fold ($epochs x $iters)" autosam_train 999 3d "$method" "$fold" --epochs "$epochs" \
    --iters-per-epoch "$iters" --npz --device cpu --num-workers "${NUM_WORKERS:-0}" --quiet "$@"
}

start=$(date +%s)
for fold in $FOLDS; do
  train unet "$fold" "$UNET_EPOCHS" "$UNET_ITERS"
  for m in $SAM_METHODS; do
    flags_var=$(echo "$m" | tr '[:lower:]' '[:upper:]')_FLAGS
    # shellcheck disable=SC2086
    train "$m" "$fold" "$SAM_EPOCHS" "$SAM_ITERS" --backbone litemedsam ${!flags_var:-}
  done
done
# shellcheck disable=SC2086
step find_best autosam_find_best_configuration -d 999 -m unet $SAM_METHODS -c 3d -f $FOLDS -np 1 2>&1 | tee "$ROOT/find_best.txt"

# Re-run the printed cross-validation reproduction commands, compare with the reported Dice, check the ranking
python - "$RES" $SAM_METHODS <<'PY'
import itertools, json, pathlib, shlex, shutil, subprocess, sys
res = pathlib.Path(sys.argv[1])
methods = ["unet", *sys.argv[2:]]
r = json.loads((res / "find_best_configuration.json").read_text())
work = res / "reproduce"
shutil.rmtree(work, ignore_errors=True)
work.mkdir()
for line in r["commands"]["reproduce_crossval"]:
    args = [str(work / a) if a.isupper() else a for a in shlex.split(line)]
    if args[0] == "autosam_evaluate_folder":
        args += ["-o", str(work / "summary.json")]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
got = json.loads((work / "summary.json").read_text())["foreground_mean"]["Dice"]
want = r["best"]["postprocessing"]["foreground_mean_dice_after"]

singles = [f"{m}__autosamPlans__3d" for m in methods]
expected = set(singles) | {f"ensemble__{a}--{b}" for a, b in itertools.combinations(sorted(singles), 2)}
ranked = {e["name"]: e["foreground_mean_dice"] for e in r["ranking"]}
print("\ncandidate (cross-validation, folds %s) | foreground-mean Dice | per-class Dice" % r["folds"])
for e in r["ranking"]:
    s = json.loads((pathlib.Path(e["folder"]) / "summary.json").read_text())
    per = ", ".join(f"{s['labels'].get(k, k)} {v['Dice']:.3f}" for k, v in sorted(s["mean"].items(), key=lambda kv: int(kv[0])))
    print(f"  {e['name']:<70} {e['foreground_mean_dice']:.4f}  ({per})")
pp = r["best"]["postprocessing"]
print(f"winner {r['best']['name']}: Dice {r['best']['foreground_mean_dice']:.4f}; post-processing rules {pp['rules']} "
      f"-> reported {want:.4f}, reproduced by the printed commands {got:.4f}")
print(f"comparison: {res / 'comparison.md'}, {res / 'comparison.png'}")
problems = []
if set(ranked) != expected:
    problems.append(f"ranked {sorted(ranked)}, expected {sorted(expected)}")
if r["best"]["name"] != max(ranked, key=ranked.get):
    problems.append(f"winner {r['best']['name']} is not the highest ranked")
if abs(got - want) > 1e-6:
    problems.append(f"reproduced Dice {got} != reported {want}")
for p in problems:
    print("FAIL:", p)
sys.exit(1 if problems else 0)
PY

if [ "${PREDICT_TEST:-0}" = 1 ]; then
  # The printed commands for new cases, run as printed on imagesTs, evaluated against labelsTs
  OUT=$RES/predict_test
  rm -rf "$OUT" && mkdir -p "$OUT"
  python - "$RES/find_best_configuration.json" "$AUTOSAM_RAW/Dataset999_Example/imagesTs" "$OUT" > "$OUT/commands.sh" <<'PY'
import json, shlex, sys
r = json.load(open(sys.argv[1]))
for line in r["commands"]["predict"]:
    args = [sys.argv[2] if a == "INPUT_FOLDER" else f"{sys.argv[3]}/{a}" if a.startswith("OUTPUT_") else a for a in shlex.split(line)]
    print(shlex.join(args))
PY
  cat "$OUT/commands.sh"
  step "predict imagesTs with the winner" bash -e "$OUT/commands.sh"
  autosam_evaluate_folder -ref "$AUTOSAM_RAW/Dataset999_Example/labelsTs" -pred "$OUT/OUTPUT_FINAL" \
    -djfile "$AUTOSAM_RAW/Dataset999_Example/dataset.json" -o "$OUT/summary.json"
fi
echo "total $(( $(date +%s) - start )) s; timings in $TIMES"
