"""Aggregated KS test: statistics and p-values vs scipy, corrections, calibration, PCA, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from detectors.base import NotFittedError
from detectors.drift import KSDrift
from detectors.drift.base import benjamini_hochberg, bonferroni


def test_distances_and_asymptotic_p_values_match_scipy() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(300, 6)), rng.normal(0.2, 1.1, size=(120, 6))
    Y[:5, 0] = X[:5, 0]  # ties across samples
    det = KSDrift(method="asymp").fit(X)
    res = det.predict(Y)
    ref = [stats.ks_2samp(X[:, j], Y[:, j], method="asymp") for j in range(6)]
    np.testing.assert_allclose(det._distances(Y), [r.statistic for r in ref], rtol=1e-12)
    np.testing.assert_allclose(res.feature_p_values, bonferroni(np.array([r.pvalue for r in ref])))
    assert res.statistic == pytest.approx(max(r.statistic for r in ref))


def test_exact_randomised_p_values_lie_between_scipy_bounds() -> None:
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(60, 5)), rng.normal(size=(40, 5))
    det = KSDrift(method="exact", correction="bh").fit(X)
    p = det._p_values(det._distances(Y), 40)
    exact = np.array(
        [stats.ks_2samp(X[:, j], Y[:, j], method="exact").pvalue for j in range(5)]
    )  # P(D >= d)
    assert np.all(p <= exact + 1e-12) and np.all(p > 0)
    assert np.all(p < exact)  # the randomised tie correction moved every one below the atom top


def test_benjamini_hochberg_matches_scipy() -> None:
    p = np.random.default_rng(3).random(50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p))


@pytest.mark.parametrize(
    ("correction", "n_components", "uniform"),
    [("bonferroni", None, False), ("bh", None, True), ("bh", 4, True)],
)
def test_calibration_under_no_drift(
    correction: str, n_components: int | None, uniform: bool, calib: Any
) -> None:
    # Bonferroni's p-value min(1, d p_min) has an atom at 1: only its FPR is checked, plus
    # super-uniformity P(p <= u) <= u at a few levels.
    p = calib.null_p_values(
        lambda i: KSDrift(correction=correction, n_components=n_components, seed=i),  # type: ignore[arg-type]
        calib.gaussian_pairs(200, 100, 8),
    )
    calib.assert_calibrated(p, uniform=uniform)
    for u in (0.01, 0.1, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / p.size)


def test_asymptotic_calibration_at_benchmark_sizes(calib: Any) -> None:
    p = calib.null_p_values(
        lambda i: KSDrift(correction="bh", seed=i), calib.gaussian_pairs(2000, 500, 4), trials=300
    )
    assert 0.02 <= np.mean(p <= 0.05) <= 0.09  # 300 trials: +-3 standard errors


def test_power_single_feature_shift() -> None:
    rng = np.random.default_rng(4)
    det = KSDrift(correction="bh").fit(rng.normal(size=(1000, 32)))
    hits = 0
    for _ in range(20):
        Y = rng.normal(size=(300, 32))
        Y[:, 7] += 0.5
        res = det.predict(Y)
        hits += res.is_drift and int(np.argmin(res.feature_p_values)) == 7
    assert hits >= 19


def test_pca_components_are_fitted_on_half_the_reference() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 10)) * np.arange(1, 11)
    det = KSDrift(n_components=3).fit(X)
    assert det.components_.shape == (3, 10) and det.ref_sorted_.shape == (200, 3)
    assert abs(det.components_[0, 9]) > 0.9  # largest-variance axis first
    assert det.predict(rng.normal(size=(100, 10)) * np.arange(1, 11)).feature_p_values.shape == (3,)


def test_effect_gate() -> None:
    rng = np.random.default_rng(6)
    det = KSDrift(min_effect_size=0.1).fit(rng.normal(size=(5000, 2)))
    res = det.predict(rng.normal(0.1, 1.0, size=(5000, 2)))
    assert res.significant and not res.is_drift and res.effect_size < 0.1


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(NotFittedError):
        KSDrift().predict(rng.normal(size=(5, 2)))
    det = KSDrift().fit(rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match="fitted on 2"):
        det.predict(rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        det.predict(rng.normal(size=(1, 2)))
    with pytest.raises(ValueError, match="correction"):
        KSDrift(correction="holm").fit(rng.normal(size=(50, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_components=5"):
        KSDrift(n_components=5).fit(rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match="alpha"):
        KSDrift(alpha=1.5).fit(rng.normal(size=(50, 2)))


def test_distances_with_heavy_ties_match_scipy() -> None:
    rng = np.random.default_rng(8)
    for _ in range(100):
        N, n = rng.integers(2, 30, size=2)
        X = rng.integers(0, 5, size=(N, 3)).astype(float)
        Y = rng.integers(0, 5, size=(n, 3)).astype(float)
        expected = [stats.ks_2samp(X[:, j], Y[:, j]).statistic for j in range(3)]
        np.testing.assert_allclose(KSDrift().fit(X)._distances(Y), expected, rtol=1e-12)


def test_memoised_asymptotic_p_values_equal_scipy_and_a_fresh_detector() -> None:
    rng = np.random.default_rng(11)
    X = rng.normal(size=(600, 12))
    warm = KSDrift(method="asymp").fit(X)
    for shift in (0.0, 0.4, 0.4, 0.1):  # repeated window sizes hit the memo
        Y = rng.normal(shift, 1.0, size=(300, 12))
        got = warm.predict(Y)
        fresh = KSDrift(method="asymp").fit(X).predict(Y)
        assert got.p_value == fresh.p_value
        np.testing.assert_array_equal(got.feature_p_values, fresh.feature_p_values)
    dist = warm._distances(Y)
    h = np.round(dist * 600).astype(np.int64)  # lcm(600, 300) = 600
    np.testing.assert_allclose(warm._p_values(dist, 300), stats.kstwo.sf(h / 600, 200), rtol=0)
