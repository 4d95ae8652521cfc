#!/usr/bin/env bash
# msam learning acceptance run: M-SAM (tiny3d backbone, CPU) on the synthetic `lesions` example,
# fold 0, with the Mask-Enhanced Adapter and without it (--use-mea false, the paper's Table 3
# ablation); prints the validation foreground-mean Dice of both runs (full volumes, original
# geometry, automatic mode: no label, no clicks).
#
# usage: benchmarks/learn_msam.sh [WORKDIR]   (env: EPOCHS, ITERS, DATASET_ID, OMP_NUM_THREADS)
set -euo pipefail
WORK=${1:-$(mktemp -d /tmp/learn_msam.XXXXXX)}
EPOCHS=${EPOCHS:-30}
ITERS=${ITERS:-25}
EXTRA=${EXTRA:---lr 2e-3 --train-iterations 4}
ID=${DATASET_ID:-998}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED"
echo "workdir $WORK; $(nproc) cores; OMP_NUM_THREADS=$OMP_NUM_THREADS; $EPOCHS epochs x $ITERS iterations; $EXTRA"
autosam_example_dataset -d "$ID" --kind lesions --cases 8
autosam_plan_and_preprocess -d "$ID" -np 1 -c 3d
dice() { python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['foreground_mean']['Dice'], 4))" "$1"; }
# both runs side by side (one core each), so the comparison sees the same machine load
run() {
  local mea=$1
  AUTOSAM_RESULTS=$WORK/results_mea_$mea autosam_train "$ID" 3d msam 0 --backbone tiny3d --device cpu \
    --epochs "$EPOCHS" --iters-per-epoch "$ITERS" --num-workers 0 --quiet --use-mea "$mea" $EXTRA \
    > "$WORK/train_mea_$mea.log" 2>&1
}
start=$(date +%s)
run true & p1=$!
run false & p2=$!
wait $p1; wait $p2
echo "wall time $(( $(date +%s) - start )) s (both runs in parallel)"
for mea in true false; do
  summary=$(ls "$WORK"/results_mea_$mea/Dataset*/msam__autosamPlans__3d/fold_0/validation/summary.json)
  echo "use_mea=$mea: validation foreground-mean Dice (fold 0) $(dice "$summary")"
done
