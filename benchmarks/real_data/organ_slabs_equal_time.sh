#!/usr/bin/env bash
# Large organs at equal wall-clock time on real CT: every method trains fold 0 of the organ-slab
# dataset (organ_slabs.py: the organ region of TotalSegmentator's example CT cut into 8-slice slabs;
# fold 0 trains on every other slab and validates on the three between them) for the same
# --time-budget-minutes, two methods at a time, one thread each (one core each on 2 cores), then
# autosam_compare_methods ranks them (it reuses the trained folds).
# Record the ranking in documentation/benchmarks.md ("Large organs at equal CPU time").
#
# usage: bash benchmarks/real_data/organ_slabs_equal_time.sh WORK [MINUTES] [METHOD...]
#        (default: 10 minutes; unet sautomed masksam msam; msam runs the tiny3d backbone: no SAM-Med3D
#        weights ship)
set -euo pipefail
WORK=${1:?usage: organ_slabs_equal_time.sh WORK [MINUTES] [METHOD...]}
MIN=${2:-10}
shift $(( $# > 2 ? 2 : $# ))
METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(unet sautomed masksam msam)
HERE=$(cd "$(dirname "$0")" && pwd)
export AUTOSAM_RAW=$WORK/raw AUTOSAM_PREPROCESSED=$WORK/preprocessed AUTOSAM_RESULTS=$WORK/results
export OMP_NUM_THREADS=1
mkdir -p "$AUTOSAM_RAW" "$AUTOSAM_PREPROCESSED" "$AUTOSAM_RESULTS" "$WORK/logs"
[ -f "$AUTOSAM_PREPROCESSED/Dataset005_OrganSlabsCT/splits_final.json" ] || python "$HERE/organ_slabs.py" --id 5

train() {  # METHOD: one fold-0 training under the budget, its log in WORK/logs
    local extra=()
    [ "$1" = msam ] && extra=(--backbone tiny3d)
    autosam_train 5 3d "$1" 0 --device cpu --epochs 1000 --time-budget-minutes "$MIN" --npz --num-workers 0 \
        "${extra[@]}" > "$WORK/logs/$1.log" 2>&1 && echo "$1: done" || { echo "$1: FAILED (see $WORK/logs/$1.log)"; return 1; }
}

for ((i = 0; i < ${#METHODS[@]}; i += 2)); do  # two at a time: one core each
    train "${METHODS[i]}" &
    [ $((i + 1)) -lt ${#METHODS[@]} ] && train "${METHODS[i + 1]}" &
    wait
done
autosam_compare_methods -d 5 -m "${METHODS[@]}" --time-budget-minutes "$MIN" --device cpu
