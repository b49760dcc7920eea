"""Regenerate ``tests/data/security_attacks.npz``: small real ART attacks on the digits model.

Run from the repository root (needs the ``attacks`` extra, ``pip install -e '.[attacks]'``,
unless ``benchmarks/.cache`` already holds the benchmark's runs with the same parameters)::

    python tests/data/make_security_attacks.py

The attacks are the benchmark's own (``benchmarks/security_attacks.py``, same seeds and
parameters, inputs on [0, 1]; the tests multiply by 16 for the model):

* ``pgd_0.2``: PGD-L∞ ε=0.2, 40 steps (white box, on the torch mirror of the ONNX graph), on
  the test split, keeping the first 100 that flip the prediction;
* ``hsj_queries``: the de-duplicated query stream of HopSkipJump (label-only) against the
  first correctly classified test image, in the order ART sent it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from security_attacks import hopskipjump_runs, white_box  # noqa: E402
from security_models import OnnxDigits, load_torch_digits  # noqa: E402

from serving.encoders.models import digits_data  # noqa: E402


def unique_in_order(Q: np.ndarray) -> np.ndarray:
    _, first = np.unique(Q, axis=0, return_index=True)
    return Q[np.sort(first)]


def main() -> None:
    X, y, split = digits_data()
    X01 = (X / 16.0).astype(np.float32)
    te = np.asarray(split["test"])
    onnx_model = OnnxDigits()
    adv = white_box(load_torch_digits(), X01[te], y[te], seed=0)["pgd_0.2"]
    flipped = onnx_model.logits(adv).argmax(1) != y[te]
    correct = te[onnx_model.logits(X01[te]).argmax(1) == y[te]]
    ok = correct[:20]  # the benchmark's first 20 victims (its cached runs)
    hsj = hopskipjump_runs(onnx_model, X01[ok], y[ok], seed=0)
    out = {
        "pgd_0.2": adv[flipped][:100],
        "hsj_queries": unique_in_order(hsj["queries"][hsj["run"] == 0]),
    }
    path = ROOT / "tests" / "data" / "security_attacks.npz"
    np.savez_compressed(path, **{k: v.astype(np.float32) for k, v in out.items()})
    print(path, {k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
