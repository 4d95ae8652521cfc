#!/usr/bin/env bash
# GPU check (see benchmarks/gpu_check.py): on a CUDA machine every method trains a short epoch with
# its real architecture (random weights), predicts, and runs 2-GPU DDP when 2 GPUs are visible;
# prints iterations/s, peak GPU memory, TFLOP/s against the card's peak and the precision (bf16/fp16)
# and writes a JSON summary. Without CUDA it runs the same steps on the CPU with tiny backbones
# (--ddp-cpu adds the DDP runs as 2 CPU processes).
# Usage: bash benchmarks/gpu_check.sh [--work DIR] [--json FILE] [--methods unet msam ...] [--iters N] [--cpu] [--ddp-cpu]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
exec "$PYTHON" "$HERE/gpu_check.py" "$@"
