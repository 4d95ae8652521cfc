#!/usr/bin/env bash
# Quick start: install autosam (once), then run the main job on the built-in example dataset:
# generate it, plan and preprocess, train a short 3d UNet fold on the CPU, predict the held-out
# test cases, evaluate them, and print where the results and progress.png are.
#
#   bash scripts/quickstart.sh
#
# Environment (all optional):
#   AUTOSAM_RAW / AUTOSAM_PREPROCESSED / AUTOSAM_RESULTS   data folders (default ./autosam_data/*)
#   QUICKSTART_EPOCHS (10)  QUICKSTART_CASES (8)  QUICKSTART_DEVICE (cpu)  QUICKSTART_METHOD (unet)
#   AUTOSAM_VENV (.venv): virtual environment to create/use; when a virtual environment with autosam
#   is already active, that one is used.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

epochs="${QUICKSTART_EPOCHS:-10}"
cases="${QUICKSTART_CASES:-8}"
device="${QUICKSTART_DEVICE:-cpu}"
method="${QUICKSTART_METHOD:-unet}"
dataset=999
config=3d

# ----------------------------------------------------------------------------- environment
if [ -n "${VIRTUAL_ENV:-}" ] && python -c "import autosam" 2>/dev/null; then
    echo "== using the active virtual environment $VIRTUAL_ENV"
else
    venv="${AUTOSAM_VENV:-.venv}"
    if [ ! -x "$venv/bin/autosam_train" ]; then
        bash scripts/install.sh "$venv"
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
fi

export AUTOSAM_RAW="${AUTOSAM_RAW:-$repo/autosam_data/raw}"
export AUTOSAM_PREPROCESSED="${AUTOSAM_PREPROCESSED:-$repo/autosam_data/preprocessed}"
export AUTOSAM_RESULTS="${AUTOSAM_RESULTS:-$repo/autosam_data/results}"
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED" "$AUTOSAM_RESULTS"
echo "== data folders: raw $AUTOSAM_RAW, preprocessed $AUTOSAM_PREPROCESSED, results $AUTOSAM_RESULTS"
start=$SECONDS

# ----------------------------------------------------------------------------- the main job
echo "== 1/5 example dataset ($cases training cases)"
autosam_example_dataset -d "$dataset" --cases "$cases"
raw_ds="$(ls -d "$AUTOSAM_RAW"/Dataset"$dataset"_* | head -n 1)"
name="$(basename "$raw_ds")"

echo "== 2/5 fingerprint, plans and preprocessing"
autosam_plan_and_preprocess -d "$dataset" -np 2

echo "== 3/5 training $method, fold 0, $epochs epochs on $device"
autosam_train "$dataset" "$config" "$method" 0 --epochs "$epochs" --device "$device"

fold_dir="$(ls -d "$AUTOSAM_RESULTS/$name/${method}__"*"__$config/fold_0")"
pred_dir="$(dirname "$fold_dir")/predictions_imagesTs"
echo "== 4/5 predicting the held-out cases ($raw_ds/imagesTs)"
autosam_predict -i "$raw_ds/imagesTs" -o "$pred_dir" -d "$dataset" -c "$config" -m "$method" -f 0 --device "$device"

echo "== 5/5 evaluating against $raw_ds/labelsTs"
autosam_evaluate_folder -ref "$raw_ds/labelsTs" -pred "$pred_dir" -djfile "$raw_ds/dataset.json" -o "$pred_dir/summary.json"

python - "$fold_dir/validation/summary.json" "$pred_dir/summary.json" <<'PY'
import json, sys
for label, path in zip(("validation (fold 0)", "held-out imagesTs"), sys.argv[1:]):
    try:
        fg = json.load(open(path))["foreground_mean"]
    except (OSError, KeyError, ValueError) as exc:
        print(f"   {label}: no summary ({exc})")
        continue
    print(f"   {label}: foreground-mean Dice {fg['Dice']:.3f}")
PY

cat <<MSG

Done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s.
  trained model:       $fold_dir
  training curves:     $fold_dir/progress.png
  training log:        $(ls "$fold_dir"/training_log_*.txt 2>/dev/null | tail -n 1)
  validation metrics:  $fold_dir/validation/summary.json
  test predictions:    $pred_dir
  test metrics:        $pred_dir/summary.json
MSG
