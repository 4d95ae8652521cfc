#!/usr/bin/env bash
# Install autosam (with its test extra) into a virtual environment: the README's install commands.
#   bash scripts/install.sh [VENV_DIR]        (default .venv; created when missing)
# torch/torchvision are capped by constraints.txt (see README, "Install"); pip never pulls a
# newer multi-GB build. The example third-party plugin (tests/example_plugin) is installed too,
# because the tests use it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${AUTOSAM_PYTHON:-python3.11}"

if [ ! -x "$venv/bin/python" ]; then
    command -v "$python" >/dev/null || { echo "install.sh: $python not found (set AUTOSAM_PYTHON to a Python >= 3.10)" >&2; exit 1; }
    echo "== creating virtual environment $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
echo "== installing autosam into $venv"
pip install --progress-bar off -e ".[test]" -c constraints.txt
pip install --progress-bar off ./tests/example_plugin --no-deps
python -c "import torch, torchvision, autosam; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, autosam {autosam.__version__}')"
