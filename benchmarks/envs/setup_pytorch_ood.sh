#!/usr/bin/env bash
# Build the peer environment for benchmarks/ood.py: pytorch-ood in its own virtualenv.
#
# Why a separate venv: pytorch-ood imports torchvision at package import, and PyPI's torchvision
# fails beside the project's CPU torch 2.13 ("operator torchvision::nms does not exist"). The
# matching pair torch==2.14.1 / torchvision==0.29.1 installs from this machine's local wheel
# index (a CUDA build, ~5.5 GB, runs on the CPU). The benchmark driver calls this venv as a
# subprocess on arrays saved to a temporary .npz, so repwatch itself never imports torchvision.
#
# Usage: benchmarks/envs/setup_pytorch_ood.sh [VENV_DIR]   (default: <repo>/.venv-pytorch-ood)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/.venv-pytorch-ood}"
python="${PYTHON:-python3.11}"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import pytorch_ood" 2>/dev/null; then
    echo "pytorch-ood already importable in $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# pytorch-ood pinned: benchmarks/ood.py relies on 0.4.0's score conventions (e.g. Mahalanobis
# on the sum of outer products, KNN normalising by default).
"$venv/bin/pip" install --quiet "torch==2.14.1" "torchvision==0.29.1" "pytorch-ood==0.4.0" numpy scikit-learn
"$venv/bin/python" - <<'PY'
import pytorch_ood, torch, torchvision
print("pytorch-ood", getattr(pytorch_ood, "__version__", "?"), "torch", torch.__version__,
      "torchvision", torchvision.__version__)
PY
