"""Per-client query-attack detection: hashes, the count rule, pseudonyms, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.adversarial import QueryAttackDetector, content_digest, window_hashes
from detectors.adversarial._query_state import calibrate_k


def _send(det: QueryAttackDetector, clients: list[str], X: np.ndarray):  # type: ignore[no-untyped-def]
    return det.update_batch(clients, X - 0.5, window_hashes(X), content_digest(X))


def _fitted(rng: np.random.Generator, **kw: int) -> QueryAttackDetector:
    X = rng.random((3000, 64))
    clients = [f"c{i % 30}" for i in range(3000)]
    det = QueryAttackDetector(**{"max_clients": 200, "index_size": 1 << 14, **kw})
    return det.fit(clients, X - 0.5, window_hashes(X), content_digest(X))


def test_window_hashes_are_seeded_position_free_and_validated() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((1, 64))
    H = window_hashes(x)
    np.testing.assert_array_equal(H, window_hashes(x.copy()))
    assert not np.intersect1d(H, window_hashes(x, seed=1)).size
    shifted = np.roll(x, 8, axis=1)  # the same content one row lower shares the inner windows
    assert len(np.intersect1d(H, window_hashes(shifted))) >= 40
    with pytest.raises(ValueError, match="NaN"):
        window_hashes(np.full((1, 64), np.nan))
    with pytest.raises(ValueError, match="window"):
        window_hashes(np.zeros((1, 3)))


def test_calibrate_k_matches_the_binomial_for_one_window() -> None:
    # one window of m = n queries: P(Bin(20, 0.1) >= 6) = 0.011, >= 7 = 0.0024
    assert calibrate_k(0.1, 20, 20, 0.005, seed=0) == 7


def test_boundary_walk_alerts_once_with_the_pseudonym() -> None:
    rng = np.random.default_rng(1)
    det = _fitted(rng)
    walk = rng.random(64) + np.cumsum(rng.normal(0, 0.002, (60, 64)), axis=0)
    res = _send(det, ["mallory"] * 60, walk)
    assert [a.client for a in res.alerts] == ["mallory"]
    assert res.alerts[0].record_index < 15
    assert res.is_attack[-1] and res.flagged[5:].all()


def test_benign_clients_stay_below_the_alert_budget() -> None:
    rng = np.random.default_rng(2)
    det = _fitted(rng)
    n_clients = 20
    X = rng.random((n_clients * 500, 64))
    clients = [f"b{i % n_clients}" for i in range(len(X))]
    res = _send(det, clients, X)
    assert len(res.alerts) == 0
    # each signal targets query_fpr per benign query; both together about twice that
    assert res.flagged.mean() <= 2 * det.query_fpr + 0.003


def test_exact_repeats_are_skipped_not_flagged() -> None:
    rng = np.random.default_rng(3)
    det = _fitted(rng)
    x = rng.random((1, 64))
    res = _send(det, ["retry"] * 30, np.repeat(x, 30, axis=0))
    assert res.duplicate[1:].all() and not res.flagged.any() and not res.alerts


def test_patch_attack_is_caught_by_the_global_hashes() -> None:
    rng = np.random.default_rng(4)
    det = _fitted(rng)
    base = rng.random(64)
    queries = []
    for _ in range(40):  # Square-style: a 2x2 patch changes, the rest stays
        q = base.copy()
        r, c = rng.integers(0, 7, 2)
        for dr in (0, 1):
            q[(r + dr) * 8 + c : (r + dr) * 8 + c + 2] = rng.random(2)
        queries.append(q)
    Q = np.asarray(queries)
    res = _send(det, ["sq"] * 40, Q)
    assert (res.shared[1:] >= det.min_shared_).mean() > 0.9
    assert res.alerts


def test_an_attack_split_over_ten_pseudonyms_is_still_flagged() -> None:
    rng = np.random.default_rng(5)
    det = _fitted(rng)
    walk = rng.random(64) + np.cumsum(rng.normal(0, 0.002, (200, 64)), axis=0)
    names = [f"sock{i % 10}" for i in range(200)]
    res = _send(det, names, walk)
    assert res.alerts, "no pseudonym alerted"
    assert any(a.linked for a in res.alerts)  # the evidence names the other pseudonyms


def test_memory_is_bounded_under_100k_distinct_clients() -> None:
    rng = np.random.default_rng(6)
    det = _fitted(rng, max_clients=500, history=4, window=10)
    before = det.memory_bytes()
    X = rng.random((1000, 64))
    E, H, D = X - 0.5, window_hashes(X), content_digest(X)
    for lo in range(0, 100_000, 1000):  # 100 batches of 1000 new clients (inputs reused)
        det.update_batch([f"u{lo + i}" for i in range(1000)], E, H, D + np.uint64(lo))
    assert det.n_clients == 500
    assert det.memory_bytes() == before < 3_000_000
    _, meta = det.get_state()
    assert len(meta["extra"]["clients"]) == 500


def test_state_round_trip_mid_stream_continues_identically() -> None:
    rng = np.random.default_rng(7)
    det = _fitted(rng)
    walk = rng.random(64) + np.cumsum(rng.normal(0, 0.002, (20, 64)), axis=0)
    _send(det, ["m"] * 10, walk[:10])
    again = QueryAttackDetector.from_state(*det.get_state())
    a, b = _send(det, ["m"] * 10, walk[10:]), _send(again, ["m"] * 10, walk[10:])
    assert a.to_dict() == b.to_dict()


def test_bad_input_names_the_problem() -> None:
    rng = np.random.default_rng(8)
    det = _fitted(rng)
    X = rng.random((2, 64))
    with pytest.raises(ValueError, match="uint64"):
        det.update_batch(["a", "b"], X - 0.5, window_hashes(X).astype(np.int64))
    with pytest.raises(ValueError, match="one per query"):
        det.update_batch(["a"], X - 0.5, window_hashes(X))
    with pytest.raises(ValueError, match="pseudonym"):
        det.update_batch(["a", ""], X - 0.5, window_hashes(X))
    with pytest.raises(ValueError, match="features"):
        det.update_batch(["a", "b"], X[:, :10], window_hashes(X))
    with pytest.raises(ValueError, match="power of two"):
        QueryAttackDetector(index_size=1000).fit(["a"] * 300, rng.random((300, 4)),
                                                 window_hashes(rng.random((300, 64))))
