"""Attacks for ``benchmarks/security.py``, generated with the adversarial-robustness-toolbox.

White-box FGSM/PGD run on the torch mirror of the ONNX graph (:mod:`security_models`); the
black-box attacks (HopSkipJump label-only, SquareAttack with scores) query the ONNX model on
onnxruntime through ART's black-box wrappers, and every query they send is logged in order.
Inputs are on [0, 1]; the models scale by 16. Generated arrays are cached as ``.npz`` under
``benchmarks/.cache/`` (gitignored), keyed by the attack and its parameters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from security_models import DigitsTorch, OnnxDigits

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
Array = NDArray[Any]


def cached(key: dict[str, Any], make: Callable[[], dict[str, Array]]) -> dict[str, Array]:
    """``make()``'s arrays, from ``benchmarks/.cache`` when the same key ran before."""
    CACHE.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = CACHE / f"security-{key['attack']}-{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    out = make()
    np.savez_compressed(path, **out)  # type: ignore[arg-type]
    return out


def art_classifier(model: DigitsTorch) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(64,), nb_classes=8,
        clip_values=(0.0, 1.0), device_type="cpu",
    )


def white_box(model: DigitsTorch, X01: Array, y: Array, seed: int) -> dict[str, Array]:
    """FGSM ε=0.1 and PGD-L∞ ε ∈ {0.1, 0.2, 0.3} (40 steps, step ε/10·2.5, one random start)."""
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    def make() -> dict[str, Array]:
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (ART draws from the legacy global state)
        clf = art_classifier(model)
        out = {"fgsm_0.1": FastGradientMethod(clf, eps=0.1).generate(X01, y=y)}
        for eps in (0.1, 0.2, 0.3):
            pgd = ProjectedGradientDescent(
                clf, norm=np.inf, eps=eps, eps_step=eps / 4, max_iter=40, num_random_init=1,
                batch_size=512, verbose=False,
            )
            out[f"pgd_{eps}"] = pgd.generate(X01, y=y)
        return {k: v.astype(np.float32) for k, v in out.items()}

    return cached({"attack": "whitebox", "n": len(X01), "seed": seed,
                   "x": hashlib.sha256(X01.tobytes()).hexdigest()}, make)


class QueryLog:
    """Wraps the ONNX model: logs every row ART sends, answers labels or probabilities."""

    def __init__(self, model: OnnxDigits, scores: bool) -> None:
        self.model = model
        self.scores = scores
        self.rows: list[Array] = []

    def __call__(self, x: Array) -> Array:
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), 64)
        self.rows.extend(flat)
        logits = self.model.logits(flat)
        if self.scores:
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)  # type: ignore[no-any-return]
        return np.eye(8, dtype=np.float32)[logits.argmax(axis=1)]


def hopskipjump_runs(model: OnnxDigits, X01: Array, y: Array, seed: int) -> dict[str, Array]:
    """One HopSkipJump (label-only, L2, untargeted) run per image; all queries logged."""
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

    def make() -> dict[str, Array]:
        np.random.seed(seed)  # noqa: NPY002 (ART draws from the legacy global state)
        rows, run = [], []
        for i, (x, _) in enumerate(zip(X01, y, strict=True)):
            log = QueryLog(model, scores=False)
            clf = BlackBoxClassifier(log, (64,), 8, clip_values=(0.0, 1.0))
            HopSkipJump(clf, targeted=False, max_iter=5, max_eval=200, init_eval=50,
                        verbose=False).generate(x[None, :])
            rows.extend(log.rows)
            run.extend([i] * len(log.rows))
        return {"queries": np.asarray(rows, dtype=np.float32), "run": np.asarray(run)}

    return cached({"attack": "hsj", "n": len(X01), "seed": seed,
                   "x": hashlib.sha256(X01.tobytes()).hexdigest()}, make)


def square_runs(model: OnnxDigits, X01: Array, y: Array, seed: int, eps: float = 0.2,
                max_iter: int = 300) -> dict[str, Array]:
    """One SquareAttack (scores, L∞ ε) run per image; all queries logged."""
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    def make() -> dict[str, Array]:
        np.random.seed(seed)  # noqa: NPY002 (ART draws from the legacy global state)
        rows, run = [], []
        for i, (x, label) in enumerate(zip(X01, y, strict=True)):
            log = QueryLog(model, scores=True)
            clf = BlackBoxClassifierNeuralNetwork(
                lambda a, log=log: log(a), (1, 8, 8), 8, channels_first=True,
                clip_values=(0.0, 1.0),
            )
            SquareAttack(clf, norm=np.inf, eps=eps, max_iter=max_iter, nb_restarts=1,
                         verbose=False).generate(x.reshape(1, 1, 8, 8), y=np.eye(8)[[label]])
            rows.extend(log.rows)
            run.extend([i] * len(log.rows))
        return {"queries": np.asarray(rows, dtype=np.float32), "run": np.asarray(run)}

    return cached({"attack": "square", "n": len(X01), "seed": seed, "eps": eps,
                   "iters": max_iter, "x": hashlib.sha256(X01.tobytes()).hexdigest()}, make)
