#!/usr/bin/env bash
# GPU check (see benchmarks/gpu/gpu_check.py): the first command to run on a GPU machine. An acceptance
# test of the GPU paths (exit 1 when an assertion fails; documentation/benchmarks.md lists what each
# proves): autosam_train without --device then --c with the final validation, no non-finite loss and
# a falling unet loss, the autocast dtype inside train_step (bf16 and no GradScaler on an H100), unet
# really compiled, GPU vs CPU predictions of one checkpoint, 10 fp16 steps, DDP with one process vs
# the plain run (and --num-gpus 2 with 2 GPUs). Also writes iterations/s (eager vs compiled, bf16 vs
# fp32), peak memory and seconds per predicted case to its JSON summary. Without CUDA it runs the
# same steps on the CPU with tiny backbones (GPU-only assertions skipped; --ddp-cpu adds the
# 2-process DDP runs on the CPU). At most about 10 minutes on one H100.
# Usage: bash benchmarks/gpu/gpu_check.sh [--work DIR] [--json FILE] [--methods unet msam ...] [--iters N] [--cpu] [--ddp-cpu]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
export AUTOSAM_DDP_TIMEOUT_MINUTES=${AUTOSAM_DDP_TIMEOUT_MINUTES:-5}  # a stuck collective fails within minutes
exec "$PYTHON" "$HERE/gpu_check.py" "$@"
