"""Poisoned feedback on the digits models (part of ``benchmarks/security.py``).

Trusted reference: the train split with its labels; clean calibration: the validation split;
feedback window: the test split (289 records) with 5 % of it poisoned, two ways:

* random label flips (the label replaced by another class, uniformly);
* a dirty-label pixel-pattern backdoor: ART ``PoisoningAttackBackdoor(add_pattern_bd)`` pasted
  on images of other classes, labelled as the target class 0;
* a repeated trigger (for the burst signal): one image of class 0 with ART's pattern, resent
  with small noise (σ = 0.01) in place of 5 % of the window, correctly labelled — only its
  repetition gives it away.

Each scenario is drawn ``seeds`` times; precision and recall pool the draws. ART's
``SpectralSignatureDefense`` and ``ActivationDefence`` see the same window, with the bundled
model fine-tuned on reference + poisoned window (the retraining they are meant to guard) and
their activations read at the penultimate layer (ART picks ``layer_names[-1]``, the logits, by
default).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from security_models import OnnxDigits, load_torch_digits

from detectors.poisoning import (
    BurstDetector,
    FeedbackPoisoningDetector,
    LabelConsistencyDetector,
    PoisoningDetector,
    SpectralSignatureDetector,
)

Array = NDArray[Any]
TARGET = 0


def poison_window(
    X01: Array, y: Array, kind: str, rate: float, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    """``(inputs, claimed labels, is_poison)`` of one feedback window."""
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd

    n_poison = round(rate * len(y))
    x, labels = X01.copy(), y.copy()
    if kind == "flip":
        idx = rng.choice(len(y), n_poison, replace=False)
        labels[idx] = (y[idx] + rng.integers(1, 8, n_poison)) % 8
    elif kind == "repeat":  # one triggered image of the target class, resent with jitter
        idx = rng.choice(np.flatnonzero(y == TARGET), n_poison, replace=False)
        base = add_pattern_bd(x[idx[0]].reshape(8, 8), pixel_value=1).reshape(64)
        x[idx] = np.clip(base + rng.normal(0, 0.01, (n_poison, 64)), 0.0, 1.0)
        labels[idx] = TARGET
    else:
        idx = rng.choice(np.flatnonzero(y != TARGET), n_poison, replace=False)
        attack = PoisoningAttackBackdoor(add_pattern_bd)
        xp, _ = attack.poison(x[idx].reshape(-1, 8, 8), y=np.eye(8)[TARGET], broadcast=True)
        x[idx] = xp.reshape(-1, 64)
        labels[idx] = TARGET
    mask = np.zeros(len(y), dtype=bool)
    mask[idx] = True
    return x, labels, mask


def ours(
    ref_emb: Array, ref_feat: Array, y_ref: Array, cal_emb: Array, cal_feat: Array, y_cal: Array,
    window: int,
) -> dict[str, tuple[PoisoningDetector, str]]:
    """repwatch's detectors, each with the representation it reads."""
    dets: dict[str, tuple[PoisoningDetector, str]] = {
        "label consistency (SSL, fpr 0.01)": (LabelConsistencyDetector(fpr=0.01), "emb"),
        "spectral signatures (penultimate, fpr 0.01)": (
            SpectralSignatureDetector(window_size=window, fpr=0.01), "feat"),
        "burst (SSL, fpr 0.01)": (BurstDetector(window_size=window, fpr=0.01), "emb"),
        "combined: min-p of the three, one threshold (SSL, fpr 0.01)": (
            FeedbackPoisoningDetector(window_size=window, fpr=0.01), "emb"),
    }
    for det, view in dets.values():
        if view == "emb":
            det.fit(ref_emb, y_ref, cal_emb, y_cal)
        else:
            det.fit(ref_feat, y_ref, cal_feat, y_cal)
    return dets


def fine_tuned(X01: Array, labels: Array, epochs: int, seed: int) -> torch.nn.Module:
    """The bundled classifier, fine-tuned on ``X01, labels`` (Adam, lr 1e-3)."""
    torch.manual_seed(seed)
    model = load_torch_digits()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(model.clf.parameters()) + list(model.head.parameters()), lr=1e-3)
    x, t = torch.from_numpy(X01.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for lo in range(0, len(x), 64):
            rows = perm[lo : lo + 64]
            loss = torch.nn.functional.cross_entropy(model(x[rows]), t[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def art_defences(model: torch.nn.Module, x: Array, labels: Array) -> dict[str, Array]:
    """``is_poison`` flags of ART's two defences on one window (penultimate activations)."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    class Penultimate(PyTorchClassifier):  # type: ignore[misc]
        def get_activations(self, x: Array, layer: Any = None, batch_size: int = 128,
                            framework: bool = False) -> Array:
            with torch.no_grad():
                return model.penultimate(torch.from_numpy(x.astype(np.float32))).numpy()  # type: ignore[operator,no-any-return]

    clf = Penultimate(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(64,),
                      nb_classes=8, clip_values=(0.0, 1.0), device_type="cpu")
    onehot = np.eye(8)[labels]
    out = {}
    _, clean = SpectralSignatureDefense(clf, x, onehot, expected_pp_poison=0.05,
                                        eps_multiplier=1.5).detect_poison()
    out["ART SpectralSignatureDefense (expected 5 %, ×1.5)"] = np.asarray(clean) == 0
    _, clean = ActivationDefence(clf, x, onehot).detect_poison(
        nb_clusters=2, nb_dims=10, reduce="PCA", cluster_analysis="smaller")
    out["ART ActivationDefence (2 clusters, smaller)"] = np.asarray(clean) == 0
    return out


def run(onnx_model: OnnxDigits, X01: Array, y: Array, split: dict[str, Array], seeds: int,
        epochs: int) -> dict[str, dict[str, dict[str, float]]]:
    """Pooled precision/recall (and the window rate estimate) per scenario and detector."""
    tr, va, te = split["train"], split["val"], split["test"]
    _, e_tr, f_tr = onnx_model.views(X01[tr])
    _, e_va, f_va = onnx_model.views(X01[va])
    dets = ours(e_tr, f_tr, y[tr], e_va, f_va, y[va], window=len(te))
    results: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("flip", "backdoor", "repeat"):
        tally: dict[str, list[float]] = {}
        rates: dict[str, list[float]] = {}
        for s in range(seeds):
            rng = np.random.default_rng(1000 + s)
            x, labels, truth = poison_window(X01[te], y[te], kind, 0.05, rng)
            _, emb, feat = onnx_model.views(x)
            flags: dict[str, Array] = {}
            for name, (det, view) in dets.items():
                res = det.predict(emb if view == "emb" else feat, labels)
                flags[name] = res.is_poisoned
                rates.setdefault(name, []).append(res.poison_rate)
            model = fine_tuned(np.vstack([X01[tr], x]), np.concatenate([y[tr], labels]),
                               epochs, seed=s)
            flags.update(art_defences(model, x, labels))
            for name, f in flags.items():
                t = tally.setdefault(name, [0.0, 0.0, 0.0])
                t[0] += float((f & truth).sum())
                t[1] += float(f.sum())
                t[2] += float(truth.sum())
        results[kind] = {
            name: {
                "precision": tp / flagged if flagged else float("nan"),
                "recall": tp / pos,
                "flagged": flagged,
                "poisoned": pos,
                "rate": float(np.mean(rates[name])) if name in rates else float("nan"),
            }
            for name, (tp, flagged, pos) in tally.items()
        }
    return results
