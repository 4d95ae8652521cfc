#!/usr/bin/env bash
# promptunet (trained with simulated prompts) against automatic unet on real MR (Decathlon Task04
# Hippocampus), fold 0's 40 validation cases, with the CVPR 2025 interactive protocol
# (autosam_evaluate_interactive: the challenge's 2D box, then 5 clicks at the largest error).
#
#  1. convert, plan and preprocess with benchmarks/real_data/real_hippocampus.sh (STEPS=convert);
#  2. train unet and promptunet on fold 0 with the same epochs (CPU plans, the planner's iterations
#     per epoch); an already trained fold (checkpoint_final.pth) is kept;
#  3. evaluate both on fold 0's validation cases: Dice after the box, after each click, DSC_AUC,
#     seconds per step; WORK/interactive/summary.json per method and dice_per_step.png.
#
# usage: bash benchmarks/real_data/real_hippocampus_prompted.sh WORKDIR
#   env: STEPS        any of "convert train eval" (default: all)
#        EPOCHS       epochs of each training (default 12, as the unet figure in benchmarks.md)
#        PROMPT_BUDGET  minutes: promptunet's --time-budget-minutes (default: none, all EPOCHS)
#        METHODS      methods trained and evaluated (default "promptunet unet")
#        TASK         the MSD task folder (as real_hippocampus.sh)
# Run with OMP_NUM_THREADS=1 on shared cores; logs in WORKDIR/logs/.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${1:?usage: bash benchmarks/real_data/real_hippocampus_prompted.sh WORKDIR}
WORK=$(mkdir -p "$WORK" && cd "$WORK" && pwd)
STEPS=${STEPS:-convert train eval}
EPOCHS=${EPOCHS:-12}
METHODS=${METHODS:-promptunet unet}
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed AUTOSAM_RESULTS=$WORK/results
mkdir -p "$WORK/logs"
has() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }
stamp() { echo "[$(date +%T)] $* (load average $(cut -d' ' -f1-3 /proc/loadavg))"; }

if has convert; then
  STEPS=convert bash "$HERE/benchmarks/real_data/real_hippocampus.sh" "$WORK"
fi

if has train; then
  for m in $METHODS; do
    fold=$AUTOSAM_RESULTS/Dataset004_Hippocampus/${m}__autosamPlans__3d/fold_0
    if [ -f "$fold/checkpoint_final.pth" ]; then
      echo "$m: fold 0 already trained ($fold)"; continue
    fi
    extra=()
    [ "$m" = promptunet ] && [ -n "${PROMPT_BUDGET:-}" ] && extra=(--time-budget-minutes "$PROMPT_BUDGET")
    stamp "$m: fold 0, $EPOCHS epochs ${extra[*]}"
    /usr/bin/time -f "$m: wall %e s" autosam_train 4 3d "$m" 0 --epochs "$EPOCHS" --device cpu --quiet "${extra[@]}" \
      > "$WORK/logs/train_$m.log" 2>&1
    tail -n 1 "$WORK/logs/train_$m.log"
  done
fi

if has eval; then
  stamp "autosam_evaluate_interactive on fold 0's validation cases: $METHODS"
  # shellcheck disable=SC2086
  autosam_evaluate_interactive -d 4 -c 3d -m $METHODS -f 0 -o "$WORK/interactive" --device cpu --quiet \
    2>&1 | tee "$WORK/logs/evaluate_interactive.log"
fi
