#!/usr/bin/env bash
# Acceptance run of a method on the "organs" example: train fold 0 with the pretrained LiteMedSAM
# backbone on the CPU and print the validation foreground-mean Dice and the time taken.
# Record the figure, the command and the machine in documentation/benchmarks.md.
#
# usage: benchmarks/learning/learn_organs.sh METHOD [WORKDIR] [EPOCHS] [ITERS_PER_EPOCH] [extra autosam_train flags...]
set -euo pipefail
METHOD=$1
shift
WORK=${1:-$(mktemp -d "/tmp/learn_$METHOD.XXXX")}
EPOCHS=${2:-12}
ITERS=${3:-25}
shift $(( $# > 3 ? 3 : $# ))
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed AUTOSAM_RESULTS=$WORK/results
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED" "$AUTOSAM_RESULTS"

[ -d "$AUTOSAM_RAW/Dataset999_Example" ] || autosam_example_dataset -d 999 --kind organs
[ -f "$AUTOSAM_PREPROCESSED/Dataset999_Example/autosamPlans.json" ] || autosam_plan_and_preprocess -d 999 -np 2 -c 3d

start=$(date +%s)
autosam_train 999 3d "$METHOD" 0 --backbone litemedsam --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --device cpu "$@"
end=$(date +%s)

SUMMARY=$AUTOSAM_RESULTS/Dataset999_Example/${METHOD}__autosamPlans__3d/fold_0/validation/summary.json
python - "$SUMMARY" "$((end - start))" "$METHOD" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
fg = s.get("foreground_mean", {}).get("Dice")
print(f"{sys.argv[3]} fold 0: foreground-mean Dice {fg}; training + validation {sys.argv[2]} s")
for label, m in sorted(s.get("mean", {}).items()):
    print(f"  label {label}: Dice {m.get('Dice')}")
PY
