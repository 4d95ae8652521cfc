#!/usr/bin/env bash
# Acceptance run of the masksam method (issue 7): train fold 0 on the "organs" example dataset with
# the pretrained LiteMedSAM backbone and print the validation foreground-mean Dice.
# Target: Dice >= 0.75 within about 15 minutes on a 2-core CPU. Record the figure, the command and the
# machine in documentation/benchmarks.md.
#
# usage: benchmarks/learn_masksam.sh [WORKDIR] [EPOCHS] [ITERS_PER_EPOCH] [extra autosam_train flags...]
set -euo pipefail
WORK=${1:-$(mktemp -d /tmp/learn_masksam.XXXX)}
EPOCHS=${2:-12}
ITERS=${3:-25}
shift $(( $# > 3 ? 3 : $# ))
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed AUTOSAM_RESULTS=$WORK/results
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED" "$AUTOSAM_RESULTS"

[ -d "$AUTOSAM_RAW/Dataset999_Example" ] || autosam_example_dataset -d 999 --kind organs
[ -f "$AUTOSAM_PREPROCESSED/Dataset999_Example/autosamPlans.json" ] || autosam_plan_and_preprocess -d 999 -np 2 -c 3d

start=$(date +%s)
autosam_train 999 3d masksam 0 --backbone litemedsam --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --device cpu "$@"
end=$(date +%s)

SUMMARY=$AUTOSAM_RESULTS/Dataset999_Example/masksam__autosamPlans__3d/fold_0/validation/summary.json
python - "$SUMMARY" "$((end - start))" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
fg = s.get("foreground_mean", {}).get("Dice")
print(f"masksam fold 0: foreground-mean Dice {fg}; training + validation {sys.argv[2]} s")
for label, m in sorted(s.get("mean", {}).items()):
    print(f"  label {label}: Dice {m.get('Dice')}")
PY
