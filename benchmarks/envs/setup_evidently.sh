#!/usr/bin/env bash
# Create the Evidently peer venv used by benchmarks/drift_speed.py.
# Usage: bash benchmarks/envs/setup_evidently.sh [VENV_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../.venv-evidently}"
python3.11 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet -r "$here/evidently.txt"
DO_NOT_TRACK=1 "$venv/bin/python" -c "import evidently, numpy, pandas; print('evidently', evidently.__version__, 'numpy', numpy.__version__, 'pandas', pandas.__version__)"
