"""Mahalanobis detectors against scipy/numpy/scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.covariance import ledoit_wolf

from detectors.ood import MahalanobisDetector, RelativeMahalanobisDetector
from detectors.ood._gaussian import ledoit_wolf_shrinkage
from detectors.ood.calibration import calibration_split


def _labelled(n: int = 2000, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    mix = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix + 3.0 * np.eye(d)[y], y


def _fit_part(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fit_idx, _ = calibration_split(X.shape[0], 0.2, 0)
    return X[fit_idx], y[fit_idx]


@pytest.mark.parametrize("shape", [(400, 30), (30, 50)])  # n > d and n < d
def test_ledoit_wolf_matches_scikit_learn(shape: tuple[int, int]) -> None:
    X = np.random.default_rng(1).normal(size=shape) @ np.diag(np.linspace(0.1, 3, shape[1]))
    X -= X.mean(axis=0)
    assert ledoit_wolf_shrinkage(X) == pytest.approx(ledoit_wolf(X, assume_centered=True)[1])


def test_class_conditional_matches_scipy() -> None:
    X, y = _labelled()
    Q = np.random.default_rng(2).normal(size=(200, 6)) * 4.0
    Xf, yf = _fit_part(X, y)
    means = np.array([Xf[yf == c].mean(axis=0) for c in range(3)])
    resid = Xf - means[yf]
    VI = np.linalg.inv(resid.T @ resid / len(Xf))
    expected = cdist(Q, means, "mahalanobis", VI=VI).min(axis=1) ** 2
    got = MahalanobisDetector(shrinkage=0.0).fit(X, y).score(Q)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_plain_with_ledoit_wolf_matches_scikit_learn_covariance() -> None:
    X, y = _labelled()
    Q = np.random.default_rng(3).normal(size=(200, 6)) * 4.0
    Xf, _ = _fit_part(X, y)
    cov, _ = ledoit_wolf(Xf)
    expected = cdist(Q, Xf.mean(axis=0)[None], "mahalanobis", VI=np.linalg.inv(cov))[:, 0] ** 2
    np.testing.assert_allclose(MahalanobisDetector().fit(X).score(Q), expected, rtol=1e-9)


def test_relative_matches_independent_computation() -> None:
    X, y = _labelled()
    Q = np.random.default_rng(4).normal(size=(200, 6)) * 4.0
    Xf, yf = _fit_part(X, y)
    means = np.array([Xf[yf == c].mean(axis=0) for c in range(3)])
    resid = Xf - means[yf]
    md_c = cdist(Q, means, "mahalanobis", VI=np.linalg.inv(resid.T @ resid / len(Xf))) ** 2
    cov0 = np.cov(Xf.T, bias=True)
    md_0 = cdist(Q, Xf.mean(axis=0)[None], "mahalanobis", VI=np.linalg.inv(cov0))[:, 0] ** 2
    got = RelativeMahalanobisDetector(shrinkage=0.0).fit(X, y).score(Q)
    np.testing.assert_allclose(got, md_c.min(axis=1) - md_0, rtol=1e-8, atol=1e-9)


def test_fewer_rows_than_dimensions() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 64))
    with pytest.warns(UserWarning, match="cannot certify"):  # only 8 calibration rows
        det = MahalanobisDetector().fit(X)  # Ledoit-Wolf keeps the covariance invertible
    assert 0.0 < det.shrinkage_ <= 1.0
    far = rng.normal(size=(20, 64)) + 3.0
    assert det.score(far).min() > np.median(det.score(rng.normal(size=(20, 64))))
    with pytest.raises(ValueError, match="shrinkage='ledoit-wolf'"):
        MahalanobisDetector(shrinkage=0.0).fit(X)


def test_relative_without_labels_uses_seeded_clusters() -> None:
    X, _ = _labelled()
    Q = np.random.default_rng(6).normal(size=(50, 6))
    a = RelativeMahalanobisDetector(seed=3).fit(X).score(Q)
    b = RelativeMahalanobisDetector(seed=3).fit(X).score(Q)
    np.testing.assert_array_equal(a, b)
    assert np.ptp(a) > 0  # not the degenerate one-class score (identically zero)


def test_string_labels_round_trip() -> None:
    X, y = _labelled()
    names = np.array(["cat", "dog", "eel"], dtype=object)[y]
    det = MahalanobisDetector().fit(X, names)
    clone = MahalanobisDetector.from_state(*det.get_state())
    assert clone.classes_ is not None
    assert clone.classes_.tolist() == ["cat", "dog", "eel"]
    np.testing.assert_array_equal(clone.score(X[:10]), det.score(X[:10]))
