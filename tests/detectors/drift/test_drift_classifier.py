"""Classifier two-sample test: LOO closed form vs refits, calibration, power, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detectors.base import NotFittedError
from detectors.drift import ClassifierDrift


@pytest.mark.parametrize("features", ["linear", "rff"])
def test_held_out_auc_equals_brute_force_leave_one_out(features: str) -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 3)), rng.normal(0.4, 1.0, size=(25, 3))
    det = ClassifierDrift(features=features, n_features=16).fit(X)  # type: ignore[arg-type]
    F = det._design(np.vstack([X, Y]))
    labels = np.r_[np.zeros(40), np.ones(25)]
    G = F.T @ F
    lam = det.ridge * np.trace(G) / G.shape[0]
    loo = np.empty(65)
    for i in range(65):  # refit without row i, score row i
        keep = np.arange(65) != i
        A = F[keep].T @ F[keep] + lam * np.eye(F.shape[1])
        w = np.linalg.solve(A, F[keep].T @ labels[keep])
        loo[i] = F[i] @ w
    assert det.score(Y)[0] == pytest.approx(roc_auc_score(labels, loo), abs=1e-12)


@pytest.mark.parametrize("features", ["linear", "rff"])
def test_calibration_under_no_drift(features: str, calib: Any) -> None:
    p = calib.null_p_values(
        lambda i: ClassifierDrift(seed=i, features=features, n_features=32),  # type: ignore[arg-type]
        calib.gaussian_pairs(150, 75, 4),
    )
    calib.assert_calibrated(p, n_permutations=100)


def test_power_and_what_each_feature_map_sees() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 8))
    linear, rff = ClassifierDrift().fit(X), ClassifierDrift(features="rff").fit(X)
    shifted = [linear.predict(rng.normal(0.3, 1.0, size=(200, 8))).is_drift for _ in range(10)]
    assert sum(shifted) >= 9
    wider = rng.normal(0.0, 1.6, size=(200, 8))  # same mean, larger spread
    assert rff.predict(wider).is_drift
    assert not linear.predict(wider).is_drift


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(3)
    with pytest.raises(NotFittedError):
        ClassifierDrift().predict(rng.normal(size=(5, 2)))
    det = ClassifierDrift().fit(rng.normal(size=(30, 2)))
    with pytest.raises(ValueError, match="fitted on 2"):
        det.predict(rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="features"):
        ClassifierDrift(features="mlp").fit(rng.normal(size=(30, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ridge"):
        ClassifierDrift(ridge=0.0).fit(rng.normal(size=(30, 2)))
    with pytest.raises(ValueError, match="never reach"):
        ClassifierDrift(n_permutations=5).fit(rng.normal(size=(30, 2)))
