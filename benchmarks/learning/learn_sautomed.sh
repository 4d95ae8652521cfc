#!/usr/bin/env bash
# Acceptance run of the sautomed method (issue 5): target Dice >= 0.75 within about 15 minutes on a
# 2-core CPU. Defaults: 20 epochs x 25 iterations.
# usage: benchmarks/learning/learn_sautomed.sh [WORKDIR] [EPOCHS] [ITERS_PER_EPOCH] [extra autosam_train flags...]
#   e.g. benchmarks/learning/learn_sautomed.sh /tmp/sautomed 20 25 --use-history false   (a Table 4 ablation)
set -euo pipefail
exec bash "$(dirname "$0")/learn_organs.sh" sautomed "${1:-}" "${2:-20}" "${3:-25}" "${@:4}"
