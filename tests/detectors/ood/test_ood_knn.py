"""kNN detector: scores against brute force, blocked/threaded paths, no reference copy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from detectors.ood import KNNDetector
from detectors.ood.calibration import calibration_split
from detectors.ood.knn import kth_largest_index


def _brute_force(X_ref: np.ndarray, Q: np.ndarray, k: int, normalize: bool, seed: int = 0):
    fit_idx, _ = calibration_split(X_ref.shape[0], 0.2, seed)
    R = X_ref[fit_idx]
    if normalize:
        R = R / np.linalg.norm(R, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    return np.sort(cdist(Q, R), axis=1)[:, k - 1]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 7])
def test_scores_match_brute_force(normalize: bool, k: int) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1500, 24)) * 2.0 + 1.0
    Q = rng.normal(size=(400, 24)) * 2.0 + 1.0
    Q[:20] = X[:20] + 1e-7 * rng.normal(size=(20, 24))  # near-duplicates: float32 cancels there
    det = KNNDetector(k=k, normalize=normalize).fit(X)
    expected = _brute_force(X, Q, k, normalize)
    # the reference is stored in float32 (rounding ~1e-7 per coordinate); distances to it are
    # computed in float64
    np.testing.assert_allclose(det.score(Q), expected, rtol=1e-6, atol=1e-6)


def test_near_duplicates_are_exact() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1000, 32))
    det = KNNDetector(k=1).fit(X)
    R = det.reference_.astype(np.float64)
    Q = R[:50] + 1e-5 * rng.normal(size=(50, 32))
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    expected = np.linalg.norm(Qn - R[:50], axis=1)
    np.testing.assert_allclose(det.score(Q), expected, rtol=1e-6)


def test_blocked_threaded_and_serial_paths_agree() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 16))
    Q = rng.normal(size=(1000, 16))
    serial = KNNDetector(k=5, n_jobs=1, block_bytes=1 << 30).fit(X).score(Q)
    blocked = KNNDetector(k=5, n_jobs=3, block_bytes=1 << 12).fit(X).score(Q)
    # BLAS may round a 16-row block differently from one big product: float32 ulps only
    np.testing.assert_allclose(serial, blocked, rtol=1e-6, atol=1e-7)


def test_scoring_does_not_copy_the_reference() -> None:
    rng = np.random.default_rng(6)
    det = KNNDetector(k=10, calibration_fraction=0.01, block_bytes=1 << 20, n_jobs=2)
    det.fit(rng.normal(size=(40_000, 128)).astype(np.float32))
    ref = det.reference_
    Q = rng.normal(size=(1000, 128))
    det.score(Q[:10])  # warm-up: thread pool, BLAS buffers
    tracemalloc.start()
    det.score(Q)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert det.reference_ is ref
    # a copy alone would cost ref.nbytes (20 MB); the query (float64 + float32) and, per
    # thread, a 16-row similarity block plus its partitioned copy take ~13 MB
    assert peak < ref.nbytes, (peak, ref.nbytes)


def test_further_from_the_reference_scores_higher() -> None:
    rng = np.random.default_rng(7)
    centre = np.zeros(8)
    centre[0] = 5.0
    det = KNNDetector(k=5).fit(rng.normal(size=(2000, 8)) + centre)
    inlier = rng.normal(size=(300, 8)) + centre
    rotated = rng.normal(size=(300, 8)) + np.roll(centre, 3)
    assert np.median(det.score(rotated)) > np.quantile(det.score(inlier), 0.99)


def test_k_larger_than_reference_names_the_fix() -> None:
    with pytest.raises(ValueError, match="lower k"):
        KNNDetector(k=50).fit(np.random.default_rng(0).normal(size=(40, 4)))


def test_without_threadpoolctl_blocks_run_serially(monkeypatch: pytest.MonkeyPatch) -> None:
    import detectors.ood._blocks as blocks

    rng = np.random.default_rng(8)
    X, Q = rng.normal(size=(2000, 16)), rng.normal(size=(600, 16))
    det = KNNDetector(k=5, block_bytes=1 << 12, n_jobs=2).fit(X)
    threaded = det.score(Q)
    monkeypatch.setattr(blocks, "single_threaded_blas", lambda: None)
    np.testing.assert_allclose(det.score(Q), threaded, rtol=1e-12)


def test_default_k_scales_with_the_reference() -> None:
    rng = np.random.default_rng(9)
    assert KNNDetector().fit(rng.normal(size=(500, 4))).k_ == 1  # 400 fitted rows
    det = KNNDetector().fit(rng.normal(size=(12_500, 4)))  # 10,000 fitted rows
    assert det.k_ == 10
    clone = KNNDetector.from_state(*det.get_state())
    assert clone.k is None and clone.k_ == 10


@pytest.mark.parametrize("n", [40, 999, 1000, 10_001])
@pytest.mark.parametrize("k", [1, 2, 10, 50])
def test_kth_largest_index_matches_a_full_sort(n: int, k: int) -> None:
    if k > n:
        return
    rng = np.random.default_rng(n + k)
    S = rng.normal(size=(37, n)).astype(np.float32)
    S[:5] = np.round(S[:5])  # heavy ties
    idx = kth_largest_index(S, k)
    expected = -np.sort(-S, axis=1)[:, k - 1]
    np.testing.assert_array_equal(S[np.arange(37), idx], expected)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_reference_searched_in_chunks_matches_brute_force(normalize: bool, k: int) -> None:
    # block_bytes this small forces column chunks of 4k rows and a running top-k merge
    rng = np.random.default_rng(11)
    X = rng.normal(size=(2500, 12)) + 0.5
    Q = rng.normal(size=(300, 12)) + 0.5
    det = KNNDetector(k=k, normalize=normalize, block_bytes=1 << 14, n_jobs=2).fit(X)
    np.testing.assert_allclose(
        det.score(Q), _brute_force(X, Q, k, normalize), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("k", [1, 3, 25])
def test_top_k_columns_are_the_k_largest(k: int) -> None:
    from detectors.ood._exact import top_k_columns

    rng = np.random.default_rng(k)
    S = rng.normal(size=(29, 3000)).astype(np.float32)
    cols = top_k_columns(S, k)
    got = np.sort(np.take_along_axis(S, cols, axis=1), axis=1)
    np.testing.assert_array_equal(got, np.sort(S, axis=1)[:, -k:])


def test_calibration_is_capped_and_the_rest_is_fitted() -> None:
    rng = np.random.default_rng(12)
    X = rng.normal(size=(3000, 8))
    det = KNNDetector(k=3, max_calibration=200).fit(X)
    assert det.calibration_scores_.shape == (200,)
    assert det.reference_.shape == (2800, 8)
    # uncapped: the plain 20 % hold-out, as before the cap existed
    assert KNNDetector(k=3, max_calibration=None).fit(X).reference_.shape == (2400, 8)


def _clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    return centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, 16))


def test_ivf_index_recall_threshold_and_state_round_trip() -> None:
    rng = np.random.default_rng(13)
    centres = rng.normal(size=(20, 16))
    X, Q = _clustered(6000, rng, centres), _clustered(500, rng, centres)
    exact = KNNDetector(k=5).fit(X)
    approx = KNNDetector(k=5, approximate_from=1000, nlist=40, nprobe=8).fit(X)
    assert approx.index_ == "ivf" and exact.index_ == "exact"
    s_exact, s_approx = exact.score(Q), approx.score(Q)
    # an approximate search can only miss neighbours: its k-th distance is never shorter
    assert np.all(s_approx >= s_exact - 1e-9)
    assert np.mean(np.isclose(s_approx, s_exact, rtol=1e-9)) > 0.95
    one_probe = KNNDetector(k=5, approximate_from=1000, nlist=40, nprobe=1).fit(X).score(Q)
    assert np.mean(np.isclose(one_probe, s_exact, rtol=1e-9)) < 0.95  # the index is in use
    flagged = approx.predict(_clustered(4000, rng, centres)).ood_rate
    assert flagged < 0.02  # calibrated on the same index: fpr=0.01 holds
    arrays, meta = approx.get_state()
    assert arrays["extra.ivf_index"].dtype == np.uint8 and meta["extra"]["index_format"] == 1
    clone = KNNDetector.from_state(arrays, meta)
    np.testing.assert_array_equal(clone.score(Q), s_approx)
    meta["extra"]["index_format"] = 99
    with pytest.raises(ValueError, match="refit"):
        KNNDetector.from_state(arrays, meta)
