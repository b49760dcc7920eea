"""Build the security incidents' inputs for ``repwatch demo`` (run once, at model-build time).

Writes ``monitor/demo/assets/security.npz`` (small, committed), so the demo needs neither torch
nor ART at run time. Everything is seeded; a rerun on the same models gives the same arrays
(up to float16 rounding, which is what ships). Needs the ``attacks`` extra::

    .venv/bin/pip install -e '.[attacks]'
    .venv/bin/python scripts/build_demo_assets.py

What it makes, all from the bundled digits models and the test split (digits 0-7 the models
never trained on), pixels on the sidecar's scale 0..16:

* ``pgd``: white-box PGD-L-inf (eps 0.2 on [0, 1], 40 steps, one random start) on the torch
  mirror of the ONNX graph (``benchmarks/security_models.py``); only inputs whose ONNX
  prediction flips (after the float16 rounding) are kept, with their true labels and the
  digits index of the image each was made from (``pgd_src``).
* ``probe_hsj`` / ``probe_square``: black-box query sequences recorded from ART's HopSkipJump
  (label-only) and SquareAttack (scores, eps 0.2) against the ONNX model on onnxruntime, each
  query logged in order, exact repeats dropped (as a caching attacker sends them).
* ``flip_idx`` / ``flip_label``: test-split images with a wrong label (uniform over the others).
* ``backdoor`` / ``backdoor_label``: ART's pixel-pattern backdoor (``add_pattern_bd``) pasted on
  test images of other classes, labelled as the target class 0 (dirty label).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "monitor" / "demo" / "assets" / "security.npz"
PIXEL_MAX = 16.0
SEED = 0
TARGET = 0


def _pgd(model: Any, onnx_model: Any, X01: np.ndarray, y: np.ndarray, test: np.ndarray,
         n: int) -> dict[str, Any]:
    import torch
    from art.attacks.evasion import ProjectedGradientDescent
    from security_attacks import art_classifier

    torch.manual_seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002 (ART draws from the legacy global state)
    pgd = ProjectedGradientDescent(art_classifier(model), norm=np.inf, eps=0.2, eps_step=0.05,
                                   max_iter=40, num_random_init=1, batch_size=512, verbose=False)
    adv = (pgd.generate(X01, y=y) * PIXEL_MAX).astype(np.float16)
    pred = onnx_model.logits(adv.astype(np.float32) / PIXEL_MAX).argmax(axis=1)
    keep = np.flatnonzero(pred != y)[:n]
    return {"pgd": adv[keep], "pgd_label": y[keep].astype(np.int8),
            "pgd_src": test[keep].astype(np.int16),
            "pgd_flipped": f"{(pred != y).sum()}/{len(y)}"}


def _dedupe(Q: np.ndarray) -> np.ndarray:
    from detectors.adversarial import content_digest

    _, first = np.unique(content_digest(Q), return_index=True)
    return Q[np.sort(first)]


def _probes(onnx_model: Any, X01: np.ndarray, y: np.ndarray, max_rows: int) -> dict[str, Any]:
    from art.attacks.evasion import HopSkipJump, SquareAttack
    from art.estimators.classification import (
        BlackBoxClassifier,
        BlackBoxClassifierNeuralNetwork,
    )
    from security_attacks import QueryLog

    np.random.seed(SEED)  # noqa: NPY002
    log = QueryLog(onnx_model, scores=False)
    clf = BlackBoxClassifier(log, (64,), 8, clip_values=(0.0, 1.0))
    # ART draws HopSkipJump's starting point from an unseeded RandomState: draw it here, the
    # same way (uniform noise the model labels differently), from a seeded generator.
    rng = np.random.default_rng(SEED)
    noise = rng.uniform(0.0, 1.0, (100, 64)).astype(np.float32)
    start = noise[onnx_model.logits(noise).argmax(axis=1) != y[0]][:1]
    HopSkipJump(clf, targeted=False, max_iter=5, max_eval=200, init_eval=50,
                verbose=False).generate(X01[:1], x_adv_init=start)
    hsj = _dedupe(np.asarray(log.rows, dtype=np.float32))[:max_rows]
    rows: list[np.ndarray] = []
    for x, label in zip(X01[1:6], y[1:6], strict=True):  # a few runs: Square stops at success
        slog = QueryLog(onnx_model, scores=True)
        sclf = BlackBoxClassifierNeuralNetwork(lambda a, lg=slog: lg(a), (1, 8, 8), 8,
                                               channels_first=True, clip_values=(0.0, 1.0))
        SquareAttack(sclf, norm=np.inf, eps=0.2, max_iter=300, nb_restarts=1,
                     verbose=False).generate(x.reshape(1, 1, 8, 8), y=np.eye(8)[[label]])
        rows.extend(slog.rows)
    square = _dedupe(np.asarray(rows, dtype=np.float32))[:max_rows]
    return {"probe_hsj": (hsj * PIXEL_MAX).astype(np.float16),
            "probe_square": (square * PIXEL_MAX).astype(np.float16)}


def _poison(X01: np.ndarray, y: np.ndarray, test: np.ndarray, n: int) -> dict[str, Any]:
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd

    rng = np.random.default_rng(SEED)
    flip = rng.choice(len(test), n, replace=False)
    flip_label = (y[flip] + rng.integers(1, 8, n)) % 8
    others = np.flatnonzero(y != TARGET)
    bd = rng.choice(others, n, replace=False)
    xp, _ = PoisoningAttackBackdoor(add_pattern_bd).poison(
        X01[bd].reshape(-1, 8, 8), y=np.eye(8)[TARGET], broadcast=True)
    return {"flip_idx": test[flip].astype(np.int16), "flip_label": flip_label.astype(np.int8),
            "backdoor": (xp.reshape(-1, 64) * PIXEL_MAX).astype(np.float16),
            "backdoor_src": test[bd].astype(np.int16),
            "backdoor_label": np.full(n, TARGET, dtype=np.int8)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--pgd", type=int, default=250, help="adversarial inputs kept")
    ap.add_argument("--probe", type=int, default=400, help="queries kept per attack")
    ap.add_argument("--poison", type=int, default=60, help="flipped and backdoored each")
    args = ap.parse_args(argv)
    import torch
    from security_models import OnnxDigits, check_agreement, load_torch_digits

    from serving.encoders.models import digits_data

    torch.set_num_threads(1)
    t0 = time.monotonic()
    X, y_all, split = digits_data()
    test = np.asarray(split["test"])
    X01, y = X[test] / PIXEL_MAX, y_all[test]
    model, onnx_model = load_torch_digits(), OnnxDigits()
    gap = check_agreement(model, onnx_model, X01)
    if gap > 1e-4:
        raise SystemExit(f"the torch mirror differs from the ONNX graph by {gap:.2g}")
    out: dict[str, Any] = {}
    out.update(_pgd(model, onnx_model, X01, y, test, args.pgd))
    right = y == onnx_model.logits(X01).argmax(axis=1)  # attack images the model gets right
    out.update(_probes(onnx_model, X01[right], y[right], args.probe))
    out.update(_poison(X01, y, test, args.poison))
    meta = {"seed": SEED, "pixel_max": PIXEL_MAX, "torch_onnx_gap": gap,
            "pgd": "L-inf eps 0.2 on [0,1], 40 steps of 0.05, 1 random start; kept: flipped",
            "pgd_flipped": out.pop("pgd_flipped"), "backdoor_target": TARGET,
            "probe": "HopSkipJump label-only (max_iter 5, max_eval 200, init_eval 50) on one "
                     "test image; SquareAttack scores (eps 0.2, 300 iters) on five; de-duplicated",
            "built_in_s": round(time.monotonic() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                        **out)
    sizes = {k: v.shape for k, v in out.items()}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB): {sizes}; {meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
