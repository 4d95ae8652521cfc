#!/usr/bin/env bash
# Acceptance run of the masksam method (issue 7): target Dice >= 0.75 within about 15 minutes on a
# 2-core CPU. Defaults: 12 epochs x 25 iterations.
# usage: benchmarks/learning/learn_masksam.sh [WORKDIR] [EPOCHS] [ITERS_PER_EPOCH] [extra autosam_train flags...]
set -euo pipefail
exec bash "$(dirname "$0")/learn_organs.sh" masksam "${1:-}" "${2:-12}" "${3:-25}" "${@:4}"
