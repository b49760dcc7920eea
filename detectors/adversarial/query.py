"""Black-box query attacks per client: bounded per-client memory, a global hash index, k of m."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detectors.adversarial._query_state import QueryState, calibrate_k
from detectors.base import Detector, check_array, register

FloatArray = NDArray[np.float64]
U64 = NDArray[np.uint64]


@dataclass(frozen=True)
class ClientAlert:
    """One client crossing the count rule: ``count`` of its last ``window`` queries flagged.

    ``record_index`` is the position in the batch of the query that crossed; ``linked``
    lists the other pseudonyms whose earlier queries matched this client's flagged ones (an
    attack split over pseudonyms shows up here).
    """

    client: str
    record_index: int
    count: int
    window: int
    linked: tuple[str, ...]


@dataclass(frozen=True)
class QueryResult:
    """Per-query signals and the clients alerted in one batch.

    Attributes
    ----------
    flagged : ndarray of bool, shape (n,)
        The query is near a previous query of its client (``neighbor_distance < tau_``) or
        shares at least ``min_shared_`` window hashes with an earlier query of any client.
    neighbor_distance : ndarray of shape (n,)
        Distance of the query's embedding to its nearest non-identical earlier query of the
        same client (``inf`` with no history).
    shared : ndarray of int, shape (n,)
        Most window hashes shared with one earlier, non-identical query (global index).
    duplicate : ndarray of bool, shape (n,)
        Exact repeat of a query in its client's memory: skipped (neither flagged nor counted).
    counts : ndarray of int, shape (n,)
        Flags among the client's last ``window`` queries after this one.
    is_attack : ndarray of bool, shape (n,)
        ``counts >= k_``.
    alerts : tuple of ClientAlert
        Clients whose count crossed ``k_`` in this batch (once per crossing).
    detector : str
        Registered name of the detector.
    """

    flagged: NDArray[np.bool_]
    neighbor_distance: FloatArray
    shared: NDArray[np.int64]
    duplicate: NDArray[np.bool_]
    counts: NDArray[np.int64]
    is_attack: NDArray[np.bool_]
    alerts: tuple[ClientAlert, ...]
    detector: str

    @property
    def alerted_clients(self) -> list[str]:
        return [a.client for a in self.alerts]

    def to_dict(self) -> dict[str, Any]:
        def finite(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return {
            "flagged": self.flagged.tolist(),
            "neighbor_distance": [finite(v) for v in self.neighbor_distance],
            "shared": self.shared.tolist(),
            "duplicate": self.duplicate.tolist(),
            "counts": self.counts.tolist(),
            "is_attack": self.is_attack.tolist(),
            "alerts": [
                {"client": a.client, "record_index": a.record_index, "count": a.count,
                 "window": a.window, "linked": list(a.linked)}
                for a in self.alerts
            ],
            "detector": self.detector,
        }


@register("adversarial.query")
class QueryAttackDetector(Detector):
    """Stateful detection of black-box query attacks, per client pseudonym.

    Each query brings the client's pseudonym, the record's embedding, its window hashes
    (:func:`~detectors.adversarial.hashing.window_hashes`, computed by the sidecar) and an
    exact content digest. A query is *flagged* when

    * its embedding is within ``tau_`` of one of the client's ``history`` last queries (the
      small steps of HopSkipJump-style boundary walks), or
    * it shares at least ``min_shared_`` window hashes with one earlier query of *any*
      client in a global index (patch-style attacks such as Square change part of the input
      and keep the rest; the index is global so that switching pseudonyms does not reset it).

    Exact repeats (same digest) are skipped: real attackers cache, and benign clients retry.
    A client is alerted when ``k_`` of its last ``window`` counted queries are flagged.
    ``fit`` calibrates ``tau_`` and ``min_shared_`` so that a benign query is flagged with
    probability about ``query_fpr`` each, and ``k_`` so that a benign client is alerted
    within ``budget_queries`` queries with probability at most ``alert_budget`` (Monte Carlo
    of the count rule at the measured benign flag rate). Window hashes that are frequent in
    benign traffic (blank background) are ignored.

    Memory is bounded: at most ``max_clients`` clients (least recently seen evicted), each
    with ``history`` embeddings (float16) and ``window`` flags; the global index is a
    fixed-size table of ``index_size`` slots (newer hashes overwrite older ones).

    Parameters
    ----------
    history : int
        Earlier queries per client compared with each new one.
    window : int
        ``m`` of the count rule. Attacks send their flagged queries back to back, so a
        short window costs them little and lets ``k`` be small: with ``m = 5`` and
        ``query_fpr = 0.00025`` the calibration picks ``k = 2`` on the digits benchmark, and
        an attack is alerted at its third query at the earliest (the first one is the clean
        input, which nothing flags). SquareAttack on 8×8 digits often succeeds by its
        second or third query; every query the rule waits for is a run lost
        (``benchmarks/results/security.md``).
    k : int or None
        ``k`` of the count rule; ``None`` calibrates it.
    query_fpr : float
        Target benign flag rate of each signal, per query (low, so that ``k = 2`` keeps
        benign clients within ``alert_budget``; the calibration stream should then hold
        well over ``1 / query_fpr`` benign queries).
    alert_budget : float
        Target probability that a benign client is alerted within ``budget_queries``.
    budget_queries : int
        Length of the benign run the budget refers to.
    max_df : float
        Window hashes present in more than this share of benign queries are ignored.
    max_clients : int
        Clients remembered at once.
    index_size : int
        Slots of the global hash index (a power of two).
    seed : int
        Seed of the Monte Carlo calibration of ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.adversarial.hashing import content_digest, window_hashes
    >>> rng = np.random.default_rng(0)
    >>> benign = rng.random((3000, 64))  # 3000 distinct inputs from 30 clients
    >>> ids = [f"c{i % 30}" for i in range(3000)]
    >>> emb = lambda x: x - 0.5
    >>> det = QueryAttackDetector(max_clients=100, index_size=1 << 14).fit(
    ...     ids, emb(benign), window_hashes(benign), content_digest(benign))
    >>> walk = rng.random(64) + np.cumsum(rng.normal(0, 0.002, (40, 64)), axis=0)  # tiny steps
    >>> send = lambda who, x: det.update_batch(who, emb(x), window_hashes(x), content_digest(x))
    >>> res = send(["mallory"] * 40, walk)
    >>> [(a.client, a.record_index) for a in res.alerts]
    [('mallory', 2)]
    >>> fresh = rng.random((200, 64))
    >>> send(["alice"] * 200, fresh).alerts
    ()
    """

    tau_: float
    min_shared_: int
    k_: int
    benign_flag_rate_: float
    stop_hashes_: U64
    n_features_in_: int
    n_hashes_: int

    def __init__(
        self,
        history: int = 32,
        window: int = 5,
        k: int | None = None,
        query_fpr: float = 0.00025,
        alert_budget: float = 0.005,
        budget_queries: int = 1000,
        max_df: float = 0.01,
        max_clients: int = 10_000,
        index_size: int = 1 << 18,
        seed: int = 0,
    ) -> None:
        self.history = history
        self.window = window
        self.k = k
        self.query_fpr = query_fpr
        self.alert_budget = alert_budget
        self.budget_queries = budget_queries
        self.max_df = max_df
        self.max_clients = max_clients
        self.index_size = index_size
        self.seed = seed
        self._state: QueryState | None = None

    # --- fit --------------------------------------------------------------------------------
    def fit(
        self,
        clients: Sequence[str],
        embeddings: ArrayLike,
        hashes: ArrayLike,
        digests: ArrayLike | None = None,
    ) -> Self:
        """Calibrate on a benign query stream (in arrival order); the memory starts empty.

        Parameters
        ----------
        clients : sequence of str
            Pseudonym of each query.
        embeddings : array-like of shape (n, d)
            Embedding of each query.
        hashes : array-like of uint64, shape (n, h)
            Window hashes of each query.
        digests : array-like of uint64, shape (n,), optional
            Exact content digests (default: derived from the embedding bytes).
        """
        for key in list(self._learned()):
            delattr(self, key)
        if not 0 < self.query_fpr < 1 or not 0 < self.alert_budget < 1:
            raise ValueError("query_fpr and alert_budget must be in (0, 1)")
        if self.index_size & (self.index_size - 1) or self.index_size < 16:
            raise ValueError(f"index_size must be a power of two >= 16, got {self.index_size}")
        if self.history < 1 or self.window < 1 or self.max_clients < 1:
            raise ValueError("history, window and max_clients must be at least 1")
        E, H, D = self._check(clients, embeddings, hashes, digests, fitted=False)
        if len(clients) < 10 * self.window:
            raise ValueError(
                f"calibration needs a benign stream of at least {10 * self.window} queries "
                f"(10 windows), got {len(clients)}"
            )
        self.n_features_in_, self.n_hashes_ = int(E.shape[1]), int(H.shape[1])
        # window hashes present in many benign queries (blank background) carry no identity
        uniq = np.concatenate([np.unique(row) for row in H])
        vals, df = np.unique(uniq, return_counts=True)
        self.stop_hashes_ = vals[df > self.max_df * H.shape[0]].astype(np.uint64)
        self.tau_, self.min_shared_, self.k_ = 0.0, 1 << 30, 1 << 30  # signals only
        scratch = QueryState.empty(self, np.float64)
        dist, shared, dup = scratch.process(clients, E, H, D, self)[:3]
        keep = ~dup
        d_ok, s_ok = dist[keep], shared[keep]
        finite = d_ok[np.isfinite(d_ok)]
        self.tau_ = float(np.quantile(finite, self.query_fpr)) if finite.size else 0.0
        self.min_shared_ = _min_count(s_ok, self.query_fpr)
        flags = (d_ok < self.tau_) | (s_ok >= self.min_shared_)
        self.benign_flag_rate_ = float(flags.mean()) if flags.size else 0.0
        if self.k is None:
            n = max(1, int(flags.size))
            p_hi = self.benign_flag_rate_ + 2.0 * np.sqrt(max(self.benign_flag_rate_, 1.0 / n) / n)
            self.k_ = calibrate_k(
                min(p_hi, 1.0), self.window, self.budget_queries, self.alert_budget, self.seed
            )
        else:
            self.k_ = int(self.k)
        self._state = QueryState.empty(self)
        return self

    # --- streaming --------------------------------------------------------------------------
    def update_batch(
        self,
        clients: Sequence[str],
        embeddings: ArrayLike,
        hashes: ArrayLike,
        digests: ArrayLike | None = None,
    ) -> QueryResult:
        """Process queries in arrival order; update each client's memory and the index."""
        self._check_fitted()
        E, H, D = self._check(clients, embeddings, hashes, digests, fitted=True)
        if self._state is None:
            self._state = QueryState.empty(self)
        dist, shared, dup, counts, alerts = self._state.process(clients, E, H, D, self)
        flagged = ~dup & ((dist < self.tau_) | (shared >= self.min_shared_))
        return QueryResult(
            flagged=flagged,
            neighbor_distance=dist,
            shared=shared,
            duplicate=dup,
            counts=counts,
            is_attack=counts >= self.k_,
            alerts=tuple(ClientAlert(*a) for a in alerts),
            detector=self.name,
        )

    def update(
        self, client: str, embedding: ArrayLike, hashes: ArrayLike, digest: int | None = None
    ) -> QueryResult:
        """One query (see :meth:`update_batch`)."""
        d = None if digest is None else np.array([digest], dtype=np.uint64)
        return self.update_batch(
            [client], np.asarray(embedding)[None, :], np.asarray(hashes)[None, :], d
        )

    @property
    def n_clients(self) -> int:
        """Clients currently remembered (at most ``max_clients``)."""
        return 0 if self._state is None else len(self._state.slots)

    @property
    def n_evicted(self) -> int:
        """Clients evicted so far (the least recently seen, when ``max_clients`` are held)."""
        return 0 if self._state is None else int(self._state.epoch.sum())

    def memory_bytes(self) -> int:
        """Bytes held by the per-client memory and the global index."""
        return 0 if self._state is None else self._state.nbytes()

    # --- validation and state ---------------------------------------------------------------
    def _check(
        self, clients: Sequence[str], embeddings: ArrayLike, hashes: ArrayLike,
        digests: ArrayLike | None, *, fitted: bool,
    ) -> tuple[FloatArray, U64, U64]:
        E = check_array(embeddings, name="embeddings", dim=self.n_features_in_ if fitted else None)
        n = E.shape[0]
        if isinstance(clients, str) or len(clients) != n:
            raise ValueError(f"clients must be a sequence of {n} pseudonyms, one per query")
        if any(not isinstance(c, str) or not 0 < len(c) <= 256 for c in clients):
            raise ValueError("each client pseudonym must be a non-empty str of at most 256 chars")
        H = np.asarray(hashes)
        if H.ndim != 2 or H.shape[0] != n or H.dtype != np.uint64:
            raise ValueError(
                f"hashes must be uint64 of shape ({n}, n_windows) (window_hashes output), "
                f"got {H.dtype} {H.shape}"
            )
        if fitted and H.shape[1] != self.n_hashes_:
            raise ValueError(f"hashes have {H.shape[1]} windows, calibration had {self.n_hashes_}")
        if digests is None:
            D = _embedding_digests(E)
        else:
            D = np.asarray(digests)
            if D.shape != (n,) or D.dtype != np.uint64:
                raise ValueError(f"digests must be uint64 of shape ({n},), got {D.dtype} {D.shape}")
        return E, H, D

    def _extra_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        if self._state is None:
            return {}, {}
        return self._state.to_arrays()

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self._state = QueryState.from_arrays(arrays, meta) if meta else None


def _min_count(shared: NDArray[np.int64], fpr: float) -> int:
    """Smallest count ``c >= 1`` with ``P(shared >= c) <= fpr`` on benign queries."""
    if shared.size == 0:
        return 1
    top = int(shared.max()) + 1
    tail = np.cumsum(np.bincount(shared, minlength=top + 1)[::-1])[::-1] / shared.size
    ok = np.flatnonzero((tail <= fpr) & (np.arange(tail.size) >= 1))
    return int(ok[0]) if ok.size else top


def _embedding_digests(E: FloatArray) -> U64:
    from detectors.adversarial.hashing import content_digest

    return content_digest(E)
