"""Per-record adversarial detection on the digits model (part of ``benchmarks/security.py``).

Reference: the train split with its labels; calibration: the validation split (clean, with
the model's predictions); test: the test split, clean and attacked. Only attacks that flip
the prediction count. Two readings of each detector: at the threshold calibrated on the
validation split (what a deployment gets), and at the test-clean ROC point (the curve).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from security_models import DigitsTorch, OnnxDigits

from detectors.adversarial import (
    CombinedAdversarialDetector,
    DisagreementDetector,
    LIDDetector,
    Views,
)
from detectors.ood import KNNDetector, MahalanobisDetector
from detectors.ood.calibration import conformal_threshold

Array = NDArray[Any]
Scorer = Callable[[Views, Array], Array]  # (views, raw inputs on [0, 1]) -> scores


def views_of(model: OnnxDigits, X01: Array) -> Views:
    logits, emb, feats = model.views(X01)
    return Views(emb.astype(np.float64), logits.argmax(1), feats.astype(np.float64))


def auroc(neg: Array, pos: Array) -> float:
    """P(pos > neg) + P(tie) / 2."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(pos, neg).statistic / (len(neg) * len(pos)))


def feature_squeezing(model: OnnxDigits) -> Scorer:
    """Xu et al. (NDSS 2018): max L1 between softmax of the input and of squeezed copies
    (1-bit depth as for MNIST, and a 2×2 median filter)."""
    from scipy.ndimage import median_filter

    def softmax(z: Array) -> Array:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def score(_: Views, X01: Array) -> Array:
        p = softmax(model.logits(X01))
        bits = np.round(X01)
        med = median_filter(X01.reshape(-1, 8, 8), size=(1, 2, 2), mode="reflect").reshape(-1, 64)
        return np.maximum(  # type: ignore[no-any-return]
            np.abs(p - softmax(model.logits(bits))).sum(1),
            np.abs(p - softmax(model.logits(med))).sum(1),
        )

    return score


def scorers(onnx_model: OnnxDigits, ref: Views, y_ref: Array, cal: Views) -> dict[str, Scorer]:
    """Every detector in the table, fitted on the reference (calibrated on ``cal``)."""
    out: dict[str, Scorer] = {}
    for name, det in (
        ("combined (min)", CombinedAdversarialDetector(combine="min")),
        ("combined (Fisher)", CombinedAdversarialDetector(combine="fisher")),
        ("disagreement (SSL kNN vs prediction)", DisagreementDetector()),
        ("LID (penultimate)", LIDDetector()),
    ):
        det.fit(ref, y_ref, calibration=cal)
        out[name] = lambda v, _x, det=det: det.score(v)
    maha = MahalanobisDetector(fpr=0.2, calibration_fraction=0.1, n_jobs=1)
    maha.fit(ref.features, y_ref)
    out["Mahalanobis (penultimate, class-conditional)"] = lambda v, _x: maha.score(v.features)
    for label, view in (("SSL embedding", "embedding"), ("penultimate", "features")):
        knn = KNNDetector(k=1, fpr=0.2, calibration_fraction=0.1, n_jobs=1)
        knn.fit(getattr(ref, view))
        out[f"kNN ({label})"] = lambda v, _x, knn=knn, view=view: knn.score(getattr(v, view))
    out["feature squeezing (peer)"] = feature_squeezing(onnx_model)
    return out


def evaluate(
    score: Scorer, cal: tuple[Views, Array], clean: tuple[Views, Array],
    attacks: dict[str, tuple[Views, Array]],
) -> dict[str, Any]:
    """Detection of each attack at the calibrated thresholds and at test-ROC points."""
    s_cal = np.sort(score(*cal))
    s_clean = score(*clean)
    row: dict[str, Any] = {}
    for fpr in (0.05, 0.01):
        t_cal = conformal_threshold(s_cal, fpr)
        t_roc = float(np.quantile(s_clean, 1 - fpr))
        row[f"clean@{fpr}"] = float(np.mean(s_clean > t_cal))
        for name, (v, x) in attacks.items():
            s = score(v, x)
            row[f"{name}@cal{fpr}"] = float(np.mean(s > t_cal))
            row[f"{name}@roc{fpr}"] = float(np.mean(s > t_roc))
    for name, (v, x) in attacks.items():
        row[f"{name}@auroc"] = auroc(s_clean, score(v, x))
    return row


def adaptive_pgd(
    model: DigitsTorch, X01: Array, y: Array, ref: Views, y_ref: Array, eps: float,
    steps: int = 100, lam_ssl: float = 5.0, lam_feat: float = 0.05, seed: int = 0,
) -> Array:
    """Targeted PGD-L∞ that also pulls the SSL embedding and the penultimate features to the
    target class (it knows the detector: disagreement and Mahalanobis read those two).

    Target: the runner-up class on the clean image. Loss (minimised):
    ``CE(logits, t) + lam_ssl * |n(ssl(x)) - mu_ssl[t]|^2 + lam_feat * |feat(x) - mu_feat[t]|^2``
    with ``n`` the L2 normalisation and ``mu`` the reference class means.
    """
    torch.manual_seed(seed)
    with torch.no_grad():
        logits0 = model(torch.from_numpy(X01.astype(np.float32)))
        masked = logits0.clone()
        masked[torch.arange(len(y)), torch.from_numpy(y)] = -1e9
        target = masked.argmax(1)
    emb = ref.embedding / np.linalg.norm(ref.embedding, axis=1, keepdims=True)
    mu_ssl = torch.tensor(
        np.stack([emb[y_ref == c].mean(0) for c in range(8)]), dtype=torch.float32
    )
    mu_ssl = mu_ssl / mu_ssl.norm(dim=1, keepdim=True)
    mu_feat = torch.tensor(np.stack([ref.features[y_ref == c].mean(0) for c in range(8)]),
                           dtype=torch.float32)
    x0 = torch.from_numpy(X01.astype(np.float32))
    x = (x0 + torch.empty_like(x0).uniform_(-eps, eps)).clamp(0, 1)
    step = eps / 20
    for _ in range(steps):
        x.requires_grad_(True)
        logits, ssl, feat = model.views(x)
        ssl = ssl / ssl.norm(dim=1, keepdim=True)
        loss = (
            torch.nn.functional.cross_entropy(logits, target, reduction="sum")
            + lam_ssl * ((ssl - mu_ssl[target]) ** 2).sum()
            + lam_feat * ((feat - mu_feat[target]) ** 2).sum()
        )
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x - step * grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
    return x.detach().numpy()
