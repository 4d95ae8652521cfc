#!/usr/bin/env bash
# msam learning acceptance run: M-SAM (tiny3d backbone, CPU) on the synthetic `lesions` example,
# fold 0, with the Mask-Enhanced Adapter and without it (--use-mea false, the paper's Table 3
# ablation); prints the validation foreground-mean Dice of both runs (full volumes, original
# geometry, automatic mode: no clicks, no label) and the wall / CPU time of each.
#
# usage: benchmarks/learning/learn_msam.sh [WORKDIR]
#   env: EPOCHS (40), ITERS (50), EXTRA (--train-iterations 2), DATASET_ID (998), OMP_NUM_THREADS (1),
#        PARALLEL (0: one run after the other; 1: both side by side, one core each)
set -euo pipefail
WORK=${1:-$(mktemp -d /tmp/learn_msam.XXXXXX)}
EPOCHS=${EPOCHS:-40}
ITERS=${ITERS:-50}
EXTRA=${EXTRA:---train-iterations 2}
ID=${DATASET_ID:-998}
PARALLEL=${PARALLEL:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED"
echo "workdir $WORK; $(nproc) cores; OMP_NUM_THREADS=$OMP_NUM_THREADS; $EPOCHS epochs x $ITERS iterations; $EXTRA"
autosam_example_dataset -d "$ID" --kind lesions --cases 8
autosam_plan_and_preprocess -d "$ID" -np 1 -c 3d
dice() { python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['foreground_mean']['Dice'], 4))" "$1"; }
run() {
  local mea=$1
  echo "use_mea=$mea: start $(date +%T), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  AUTOSAM_RESULTS=$WORK/results_mea_$mea /usr/bin/time -f "use_mea=$mea: wall %e s, CPU %U s user + %S s system" \
    autosam_train "$ID" 3d msam 0 --backbone tiny3d --device cpu \
    --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --num-workers 0 --quiet --use-mea "$mea" $EXTRA \
    > "$WORK/train_mea_$mea.log" 2>&1
  tail -n 1 "$WORK/train_mea_$mea.log"
  echo "use_mea=$mea: end $(date +%T), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
if [ "$PARALLEL" = 1 ]; then
  run true & p1=$!
  run false & p2=$!
  wait $p1; wait $p2
else
  run true
  run false
fi
for mea in true false; do
  summary=$(ls "$WORK"/results_mea_$mea/Dataset*/msam__autosamPlans__3d/fold_0/validation/summary.json)
  echo "use_mea=$mea: validation foreground-mean Dice (fold 0) $(dice "$summary")"
done
