#!/usr/bin/env bash
# Acceptance run of issue 3: example dataset (8 organ cases), plan + preprocess, train unet fold 0
# for 10 epochs on the CPU, validate; prints wall times and the validation foreground-mean Dice.
# Usage: bash benchmarks/speed/bench_unet_quickstart.sh [WORKDIR]   (default: a fresh temporary folder)
set -euo pipefail
WORK=${1:-$(mktemp -d)}
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed AUTOSAM_RESULTS=$WORK/results
BIN=$(dirname "$(command -v python)")
[ -x "$BIN/autosam_train" ] || BIN=/work/venv/bin
t0=$(date +%s)
"$BIN/autosam_example_dataset" -d 999 --cases 8
"$BIN/autosam_plan_and_preprocess" -d 999 -c 3d
t1=$(date +%s)
/usr/bin/time -f "train: %e s wall, %U s user + %S s system CPU, peak RSS %M KB" \
    "$BIN/autosam_train" 999 3d unet 0 --epochs 10 --device cpu
t2=$(date +%s)
SUMMARY=$AUTOSAM_RESULTS/Dataset999_Example/unet__autosamPlans__3d/fold_0/validation/summary.json
echo "prepare (generate + plan + preprocess): $((t1 - t0)) s"
echo "train 10 epochs + validation: $((t2 - t1)) s"
"$BIN/python" -c "import json,sys; s=json.load(open(sys.argv[1])); print('foreground-mean Dice:', s['foreground_mean']['Dice']); print({k: round(v['Dice'], 4) for k, v in s['mean'].items()})" "$SUMMARY"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "results in $WORK"
