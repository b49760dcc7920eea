"""MMD permutation test: statistic, null, calibration, power, modes, persistence, errors."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from detectors.base import NotFittedError, load
from detectors.drift import MMDDrift


def naive_mmd2(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD² with plain loops (independent of the vectorised code)."""
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * sigma**2))

    m, n = len(X), len(Y)
    kxx = sum(k(X[i], X[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(Y[i], Y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x, y) for x in X for y in Y) / (m * n)
    return kxx + kyy - 2 * kxy


def test_statistic_equals_naive_computation() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 3)), rng.normal(0.3, 1.0, size=(25, 3))
    det = MMDDrift(bandwidth=1.3).fit(X)
    expected = naive_mmd2(X, Y, 1.3)
    assert det.score(Y)[0] == pytest.approx(expected, rel=1e-10)
    assert det.predict(Y).statistic == pytest.approx(expected, rel=1e-10)


def test_median_heuristic_matches_pdist() -> None:
    X = np.random.default_rng(2).normal(size=(150, 5))
    det = MMDDrift().fit(X)
    assert det.bandwidth_ == pytest.approx(math.sqrt(np.median(pdist(X, "sqeuclidean")) / 2))


def test_permutation_null_equals_recomputed_statistics() -> None:
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(30, 2)), rng.normal(size=(20, 2))
    det = MMDDrift(bandwidth=1.0, n_permutations=50, seed=7).fit(X)
    _, null = det._statistic_and_null(Y, 50)
    Zx, Zy = det._memberships(30, 20, 50)
    pooled = np.vstack([X, Y])
    test_side = np.hstack([Zx, Zy]).astype(bool)
    for b in range(5):
        expected = naive_mmd2(pooled[~test_side[b]], pooled[test_side[b]], 1.0)
        assert null[b] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_p_value_counts_the_observed_statistic() -> None:
    rng = np.random.default_rng(4)
    det = MMDDrift(n_permutations=99).fit(rng.normal(size=(100, 4)))
    res = det.predict(rng.normal(5.0, 1.0, size=(50, 4)))
    assert res.p_value == pytest.approx(1 / 100)  # never 0 (alibi-detect#960)
    assert res.is_drift and res.statistic > res.threshold


@pytest.mark.parametrize("method", ["exact", "rff"])
def test_calibration_under_no_drift(method: str, calib: Any) -> None:
    p = calib.null_p_values(
        lambda i: MMDDrift(n_permutations=100, seed=i, method=method, n_features=256),  # type: ignore[arg-type]
        calib.gaussian_pairs(200, 100, 8),
    )
    calib.assert_calibrated(p, n_permutations=100)


def test_power_mean_shift_0_3_sigma_d64() -> None:
    rng = np.random.default_rng(5)
    detected = 0
    for r in range(2):
        det = MMDDrift(n_permutations=100, seed=r).fit(rng.normal(size=(2000, 64)))
        for _ in range(10):
            detected += det.predict(rng.normal(0.3, 1.0, size=(500, 64))).is_drift
    assert detected >= 19  # >= 95 % of 20 trials


def test_rff_statistic_approximates_exact_kernel() -> None:
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(500, 4)), rng.normal(0.5, 1.0, size=(200, 4))
    exact = MMDDrift(method="exact", bandwidth=2.0).fit(X).score(Y)[0]
    rff = MMDDrift(method="rff", bandwidth=2.0, n_features=8192).fit(X).score(Y)[0]
    assert rff == pytest.approx(exact, rel=0.1)


def test_auto_uses_random_features_from_20k_rows() -> None:
    rng = np.random.default_rng(7)
    det = MMDDrift(n_features=64, n_permutations=20).fit(rng.normal(size=(20_000, 2)))
    assert det.method_ == "rff"
    assert det.predict(rng.normal(1.0, 1.0, size=(300, 2))).is_drift


def test_min_effect_size_gate_suppresses_negligible_shift() -> None:
    rng = np.random.default_rng(8)
    det = MMDDrift(n_permutations=100, min_effect_size=0.05, bandwidth=1.0)
    det.fit(rng.normal(size=(1500, 2)))
    small = det.predict(rng.normal(0.15, 1.0, size=(1500, 2)))
    assert small.significant and not small.is_drift and small.effect_size < 0.05
    big = det.predict(rng.normal(2.0, 1.0, size=(300, 2)))
    assert big.is_drift and big.effect_size > 0.05


def test_state_round_trip_and_pure_predict(tmp_path: object) -> None:
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(120, 3)), rng.normal(0.2, 1.0, size=(60, 3))
    det = MMDDrift(n_permutations=60).fit(X)
    X_copy, Y_copy = X.copy(), Y.copy()
    first = det.predict(Y)
    assert det.predict(Y) == first  # deterministic under the seed
    path = f"{tmp_path}/mmd.npz"
    det.save(path)
    again = load(path)
    assert isinstance(again, MMDDrift)
    assert again.predict(Y) == first
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(Y, Y_copy)
    np.testing.assert_array_equal(det.x_ref_, X)


def test_torch_path_matches_numpy() -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    X, Y = rng.normal(size=(200, 4)), rng.normal(0.1, 1.0, size=(80, 4))
    for method in ("exact", "rff"):
        a = MMDDrift(method=method, n_features=128).fit(X)._statistic_and_null(Y, 50)  # type: ignore[arg-type]
        b = MMDDrift(method=method, n_features=128, device="cpu").fit(X)._statistic_and_null(  # type: ignore[arg-type]
            Y, 50
        )
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)


def test_torch_is_not_imported_with_the_package() -> None:
    code = "import sys, detectors.drift; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(11)
    with pytest.raises(NotFittedError, match="not fitted"):
        MMDDrift().predict(rng.normal(size=(10, 2)))
    det = MMDDrift().fit(rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match="3 features, the detector was fitted on 2"):
        det.predict(rng.normal(size=(10, 3)))
    bad = rng.normal(size=(10, 2))
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        det.predict(bad)
    with pytest.raises(ValueError, match="at least 2"):
        det.predict(rng.normal(size=(1, 2)))
    with pytest.raises(ValueError, match="never reach alpha"):
        MMDDrift(n_permutations=10).fit(rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match="bandwidth"):
        MMDDrift(bandwidth=-1.0).fit(rng.normal(size=(50, 2)))
    with pytest.raises(ValueError, match="no spread"):
        MMDDrift().fit(np.ones((20, 2)))


def test_reference_kernel_is_built_in_slabs_without_a_float64_matrix() -> None:
    import tracemalloc

    from detectors.drift.base import gaussian_kernel
    from detectors.drift.mmd import _reference_kernel

    rng = np.random.default_rng(11)
    X = rng.normal(size=(3000, 8))
    K32, rows = _reference_kernel(X, 2.0)
    full = gaussian_kernel(X, X, 2.0)
    np.fill_diagonal(full, 0.0)
    np.testing.assert_array_equal(K32, full.astype(np.float32))
    np.testing.assert_allclose(rows, full.sum(axis=1), rtol=1e-12)
    del full
    tracemalloc.start()
    MMDDrift(method="exact", bandwidth=2.0).fit(X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the float32 matrix (36 MB) plus the temporaries of one 8 MB slab; the old build held a
    # float64 matrix and its float32 copy, 12 N^2 = 108 MB
    assert peak < 4 * 3000**2 + 4 * (1 << 23), peak
