#!/usr/bin/env bash
# Create the alibi-detect peer venv used by benchmarks/drift_speed.py and
# benchmarks/alibi_equivalence.py. Usage: bash benchmarks/envs/setup_alibi.sh [VENV_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../.venv-alibi}"
python3.11 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# torch first, alone, so the exact local CPU wheel is what satisfies alibi-detect[torch].
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet -r "$here/alibi.txt"
"$venv/bin/python" -c "import alibi_detect, numpy, torch; print('alibi-detect', alibi_detect.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
