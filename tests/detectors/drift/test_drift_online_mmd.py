"""Online MMD: statistic vs naive windows, vectorised calibration vs loops, ERT, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import NotFittedError, load
from detectors.drift import OnlineMMDDrift
from detectors.drift.base import gaussian_kernel


def naive_mmd2(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    kxx, kyy, kxy = (gaussian_kernel(a, b, sigma) for a, b in ((X, X), (Y, Y), (X, Y)))
    m, n = len(X), len(Y)
    return float(
        (kxx.sum() - m) / (m * (m - 1)) + (kyy.sum() - n) / (n * (n - 1)) - 2 * kxy.mean()
    )


def test_stream_statistic_equals_naive_window_mmd() -> None:
    rng = np.random.default_rng(1)
    det = OnlineMMDDrift(ert=50, window_size=8, n_bootstraps=200).fit(rng.normal(size=(120, 3)))
    window = det.initial_window_.copy()
    stream = rng.normal(0.3, 1.0, size=(30, 3))
    res = det.update_batch(stream)
    for t in range(30):
        window = np.vstack([window[1:], stream[t]])
        # both kernel terms are float32 products (kernel values to ~1e-7): MMD² to ~2e-7
        expected = naive_mmd2(det.x_ref_, window, det.bandwidth_)
        assert res.statistics[t] == pytest.approx(expected, rel=1e-6, abs=2e-7)
    assert res.thresholds[0] == det.thresholds_[1] and res.thresholds[-1] == det.thresholds_[-1]


def test_update_one_by_one_equals_batch() -> None:
    rng = np.random.default_rng(2)
    a = OnlineMMDDrift(ert=50, window_size=5, n_bootstraps=200).fit(rng.normal(size=(80, 2)))
    b = load_copy(a)
    X = rng.normal(size=(700, 2))  # more than one internal chunk
    batch = a.update_batch(X).statistics
    single = np.array([b.update(x).statistic for x in X])
    # float32 kernels of different shapes round differently: ~2e-7 on MMD² values ~1e-2
    # (a wrong window sum is off by ~1e-2)
    np.testing.assert_allclose(single, batch, rtol=1e-6, atol=5e-7)
    assert a.t_ == b.t_ == 700


def load_copy(det: OnlineMMDDrift) -> OnlineMMDDrift:
    return OnlineMMDDrift.from_state(*det.get_state())


def test_vectorised_bootstrap_equals_loop() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 2))
    det = OnlineMMDDrift(window_size=4, n_bootstraps=30, ert=10, bandwidth=1.0)
    K = gaussian_kernel(X, X, 1.0)
    det.n_bootstraps_ = 30
    stats = det._bootstrap_statistics(K, np.random.default_rng(0))
    draws = np.random.default_rng(0).random((30, 60)).argpartition(8, axis=1)[:, :8]
    for b in range(30):
        ext = draws[b]
        ref = np.setdiff1d(np.arange(60), ext)
        for w in range(5):
            expected = naive_mmd2(X[ref], X[ext[w : w + 4]], 1.0)
            assert stats[b, w] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mean_run_length_close_to_target_ert() -> None:
    rng = np.random.default_rng(4)
    # ERT is a mean over references too: one reference of 500 rows has its own run length
    # (between-reference sd ~25 %), so many short experiments beat a few long ones.
    ert, run_lengths = 50, []
    for r in range(60):
        det = OnlineMMDDrift(ert=ert, window_size=10, seed=r)  # default B = max(1000, 10 ert)
        det.fit(rng.normal(size=(500, 4)))
        for _ in range(30):
            det.reset()
            while not (res := det.update_batch(rng.normal(size=(200, 4)))).is_drift:
                pass
            assert res.detection_time is not None
            run_lengths.append(res.detection_time)
    assert np.mean(run_lengths) == pytest.approx(ert, rel=0.15)


def test_detects_a_shift_quickly() -> None:
    rng = np.random.default_rng(5)
    det = OnlineMMDDrift(ert=1000, window_size=20, n_bootstraps=5000, seed=1)
    det.fit(rng.normal(size=(600, 4)))
    delays = []
    for _ in range(10):
        det.reset()
        res = det.update_batch(rng.normal(0.8, 1.0, size=(200, 4)))
        delays.append(res.detection_time if res.is_drift else 10_000)
    assert np.median(delays) <= 20


def test_state_round_trip_mid_stream(tmp_path: object) -> None:
    rng = np.random.default_rng(6)
    det = OnlineMMDDrift(ert=100, window_size=10, n_bootstraps=500).fit(rng.normal(size=(200, 3)))
    det.update_batch(rng.normal(size=(37, 3)))
    path = f"{tmp_path}/online.npz"
    det.save(path)
    resumed = load(path)
    assert isinstance(resumed, OnlineMMDDrift) and resumed.t_ == 37
    nxt = rng.normal(0.5, 1.0, size=(60, 3))
    a, b = det.update_batch(nxt), resumed.update_batch(nxt)
    np.testing.assert_array_equal(a.statistics, b.statistics)
    assert a.detection_time == b.detection_time


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(NotFittedError):
        OnlineMMDDrift().update(np.zeros(3))
    with pytest.raises(ValueError, match="at least 102"):
        OnlineMMDDrift(window_size=50).fit(rng.normal(size=(80, 3)))
    with pytest.raises(ValueError, match="n_bootstraps"):
        OnlineMMDDrift(ert=500, n_bootstraps=100).fit(rng.normal(size=(300, 3)))
    det = OnlineMMDDrift(ert=20, window_size=5, n_bootstraps=200).fit(rng.normal(size=(60, 3)))
    with pytest.raises(ValueError, match="update_batch"):
        det.update(rng.normal(size=(2, 3)))
    with pytest.raises(ValueError, match="fitted on 3"):
        det.update_batch(rng.normal(size=(4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        det.update(np.array([0.0, np.inf, 1.0]))


def test_large_reference_uses_a_fixed_sub_reference_and_the_deployed_statistic() -> None:
    rng = np.random.default_rng(8)
    X = rng.normal(size=(900, 3))
    det = OnlineMMDDrift(ert=50, window_size=8, n_bootstraps=500, max_reference=200).fit(X)
    assert det.x_ref_.shape == (200, 3)
    window = det.initial_window_.copy()
    assert naive_mmd2(det.x_ref_, window, det.bandwidth_) < det.thresholds_[0]
    stream = rng.normal(size=(20, 3))
    res = det.update_batch(stream)
    for t in range(20):
        window = np.vstack([window[1:], stream[t]])
        expected = naive_mmd2(det.x_ref_, window, det.bandwidth_)
        assert res.statistics[t] == pytest.approx(expected, rel=1e-6, abs=2e-7)
    clone = OnlineMMDDrift.from_state(*det.get_state())
    np.testing.assert_array_equal(clone.thresholds_, det.thresholds_)


def test_pool_bootstrap_equals_loop_against_the_fixed_sub_reference() -> None:
    rng = np.random.default_rng(9)
    Xr, Xp = rng.normal(size=(40, 2)), rng.normal(size=(70, 2))
    det = OnlineMMDDrift(window_size=4, ert=10, bandwidth=1.0)
    det.n_bootstraps_, det.bandwidth_ = 25, 1.0
    c_pool = gaussian_kernel(Xr, Xp, 1.0).mean(axis=0)
    kxx = (gaussian_kernel(Xr, Xr, 1.0).sum() - 40) / (40 * 39)
    stats = det._pool_statistics(Xp, c_pool, kxx, np.random.default_rng(0))
    draws = np.random.default_rng(0)
    for b in range(25):
        ext = draws.choice(70, 8, replace=False)
        for w in range(5):
            expected = naive_mmd2(Xr, Xp[ext[w : w + 4]], 1.0)
            assert stats[b, w] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_run_length_with_a_sub_reference_close_to_target_ert() -> None:
    rng = np.random.default_rng(10)
    ert, run_lengths = 50, []
    for r in range(30):  # 750 runs: s.e. ~6 % with the between-reference spread
        det = OnlineMMDDrift(ert=ert, window_size=10, seed=r, max_reference=150)
        det.fit(rng.normal(size=(1500, 4)))
        for _ in range(25):
            det.reset()
            while not (res := det.update_batch(rng.normal(size=(200, 4)))).is_drift:
                pass
            assert res.detection_time is not None
            run_lengths.append(res.detection_time)
    assert np.mean(run_lengths) == pytest.approx(ert, rel=0.2)


def test_float32_statistic_against_float64_at_deployment_size() -> None:
    # d = 64, W = 50, the default 1,000-row sub-reference, batches of 100: the float32 stream
    # stays within 1e-6 of the float64 MMD² (thresholds here are ~1e-3, so far below them)
    rng = np.random.default_rng(11)
    det = OnlineMMDDrift(ert=100, window_size=50, n_bootstraps=1000)
    det.fit(rng.normal(size=(1200, 64)))
    window = det.initial_window_.copy()
    stream = rng.normal(0.05, 1.0, size=(200, 64))
    stats = np.concatenate([det.update_batch(stream[i : i + 100]).statistics for i in (0, 100)])
    expected = []
    for t in range(200):
        window = np.vstack([window[1:], stream[t]])
        expected.append(naive_mmd2(det.x_ref_, window, det.bandwidth_))
    np.testing.assert_allclose(stats, expected, rtol=0, atol=1e-6)
    assert det.thresholds_[-1] > 1e-4


def test_small_blas_pins_threads_and_restores_them() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from detectors.drift.base import small_blas

    def blas_threads() -> list[int]:
        info = threadpoolctl.threadpool_info()
        return [i["num_threads"] for i in info if i["user_api"] == "blas"]

    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        with small_blas():
            assert set(blas_threads()) <= {1}
        assert blas_threads() == before
    with threadpoolctl.threadpool_limits(1, user_api="blas"), small_blas():
        assert set(blas_threads()) <= {1}
