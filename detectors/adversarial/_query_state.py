"""Bounded memory of :class:`~detectors.adversarial.query.QueryAttackDetector` as arrays + JSON.

Per client slot: a ring of the last ``history`` embeddings (float16, L2-normalised) and
content digests, and a ring of the last ``window`` flags. Clients are kept in LRU order; the
least recently seen is evicted when ``max_clients`` are held, and its slot's ``epoch`` moves
on so that index entries pointing at the evicted client are no longer attributed to the new
one. The global index is a direct-mapped table: slot ``hash & (size - 1)`` holds the newest
query that had that window hash.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
U64 = NDArray[np.uint64]

#: Alert evidence: how many other pseudonyms a client's matched queries are linked to.
MAX_LINKED = 16
_ARRAYS = (
    "emb", "dig", "hist_n", "hist_pos", "flags", "flag_pos", "count", "alerted", "epoch",
    "tab_hash", "tab_qid", "tab_slot", "tab_epoch", "tab_digest",
)


class _Params(Protocol):
    history: int
    window: int
    max_clients: int
    index_size: int
    n_features_in_: int
    tau_: float
    min_shared_: int
    k_: int
    stop_hashes_: U64


class QueryState:
    """The mutable memory; see the module docstring."""

    def __init__(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        for name in _ARRAYS:
            setattr(self, name, arrays[name])
        self.emb: NDArray[Any]
        self.dig: U64
        self.hist_n: NDArray[np.int64]
        self.hist_pos: NDArray[np.int64]
        self.flags: NDArray[np.bool_]
        self.flag_pos: NDArray[np.int64]
        self.count: NDArray[np.int64]
        self.alerted: NDArray[np.bool_]
        self.epoch: NDArray[np.int64]
        self.tab_hash: U64
        self.tab_qid: NDArray[np.int64]
        self.tab_slot: NDArray[np.int64]
        self.tab_epoch: NDArray[np.int64]
        self.tab_digest: U64
        self.slots: OrderedDict[str, int] = OrderedDict(
            (c, int(s)) for c, s in zip(meta["clients"], meta["slots"], strict=True)
        )
        self.names: dict[int, str] = {s: c for c, s in self.slots.items()}
        self.linked: dict[int, list[str]] = {int(k): list(v) for k, v in meta["linked"].items()}
        self.next_qid = int(meta["next_qid"])

    @classmethod
    def empty(cls, p: _Params, dtype: type = np.float16) -> QueryState:
        c, h, m, d, s = p.max_clients, p.history, p.window, p.n_features_in_, p.index_size
        arrays: dict[str, NDArray[Any]] = {
            "emb": np.zeros((c, h, d), dtype=dtype),
            "dig": np.zeros((c, h), dtype=np.uint64),
            "hist_n": np.zeros(c, dtype=np.int64),
            "hist_pos": np.zeros(c, dtype=np.int64),
            "flags": np.zeros((c, m), dtype=bool),
            "flag_pos": np.zeros(c, dtype=np.int64),
            "count": np.zeros(c, dtype=np.int64),
            "alerted": np.zeros(c, dtype=bool),
            "epoch": np.zeros(c, dtype=np.int64),
            "tab_hash": np.zeros(s, dtype=np.uint64),
            "tab_qid": np.full(s, -1, dtype=np.int64),
            "tab_slot": np.zeros(s, dtype=np.int64),
            "tab_epoch": np.zeros(s, dtype=np.int64),
            "tab_digest": np.zeros(s, dtype=np.uint64),
        }
        return cls(arrays, {"clients": [], "slots": [], "linked": {}, "next_qid": 0})

    # --- state ------------------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays = {name: getattr(self, name).copy() for name in _ARRAYS}
        meta = {
            "clients": list(self.slots),
            "slots": list(self.slots.values()),
            "linked": {str(k): v for k, v in self.linked.items()},
            "next_qid": self.next_qid,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> QueryState:
        return cls({k: np.array(v) for k, v in arrays.items()}, meta)

    def nbytes(self) -> int:
        return sum(int(getattr(self, name).nbytes) for name in _ARRAYS)

    # --- clients ----------------------------------------------------------------------------
    def _slot(self, client: str) -> int:
        slot = self.slots.get(client)
        if slot is not None:
            self.slots.move_to_end(client)
            return slot
        if len(self.slots) < self.hist_n.shape[0]:
            slot = len(self.slots)
        else:  # evict the least recently seen client
            _, slot = self.slots.popitem(last=False)
            del self.names[slot]
            self.hist_n[slot] = self.hist_pos[slot] = 0
            self.flags[slot] = False
            self.flag_pos[slot] = self.count[slot] = 0
            self.alerted[slot] = False
            self.epoch[slot] += 1
            self.linked.pop(slot, None)
        self.slots[client] = slot
        self.names[slot] = client
        return slot

    # --- the stream -------------------------------------------------------------------------
    def process(
        self, clients: Sequence[str], E: FloatArray, H: U64, D: U64, p: _Params
    ) -> tuple[FloatArray, NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], list[Any]]:
        n = E.shape[0]
        norms = np.sqrt(np.einsum("ij,ij->i", E, E))
        norms[norms == 0.0] = 1.0
        En = E / norms[:, None]
        dist = np.full(n, np.inf)
        shared = np.zeros(n, dtype=np.int64)
        dup = np.zeros(n, dtype=bool)
        counts = np.zeros(n, dtype=np.int64)
        alerts: list[Any] = []
        mask = np.uint64(self.tab_hash.shape[0] - 1)
        stop = p.stop_hashes_
        hist_len, window = self.emb.shape[1], self.flags.shape[1]
        for i in range(n):
            slot = self._slot(clients[i])
            dg = D[i]
            nh = int(self.hist_n[slot])
            if nh:
                if (self.dig[slot, :nh] == dg).any():  # exact repeat: skipped
                    dup[i] = True
                    counts[i] = self.count[slot]
                    continue
                diff = self.emb[slot, :nh].astype(np.float64) - En[i]
                dist[i] = float(np.sqrt(np.einsum("ij,ij->i", diff, diff).min()))
            h = np.unique(H[i])
            if stop.size:
                pos = np.minimum(np.searchsorted(stop, h), stop.size - 1)
                h = h[stop[pos] != h]
            owner = -1
            if h.size:
                s = (h & mask).astype(np.intp)
                hit = (self.tab_hash[s] == h) & (self.tab_qid[s] >= 0) & (self.tab_digest[s] != dg)
                if hit.any():
                    qids = self.tab_qid[s[hit]]
                    uq, cnt = np.unique(qids, return_counts=True)
                    best = int(cnt.argmax())
                    shared[i] = int(cnt[best])
                    j = s[hit][int(np.flatnonzero(qids == uq[best])[0])]
                    o = int(self.tab_slot[j])
                    if self.tab_epoch[j] == self.epoch[o] and o != slot:
                        owner = o
                self.tab_hash[s] = h
                self.tab_qid[s] = self.next_qid
                self.tab_slot[s] = slot
                self.tab_epoch[s] = self.epoch[slot]
                self.tab_digest[s] = dg
            self.next_qid += 1
            pos_h = int(self.hist_pos[slot])
            self.emb[slot, pos_h] = En[i]
            self.dig[slot, pos_h] = dg
            self.hist_pos[slot] = (pos_h + 1) % hist_len
            self.hist_n[slot] = min(nh + 1, hist_len)
            flag = bool(dist[i] < p.tau_ or shared[i] >= p.min_shared_)
            fp = int(self.flag_pos[slot])
            self.count[slot] += int(flag) - int(self.flags[slot, fp])
            self.flags[slot, fp] = flag
            self.flag_pos[slot] = (fp + 1) % window
            c = int(self.count[slot])
            counts[i] = c
            if flag and owner >= 0:
                links = self.linked.setdefault(slot, [])
                name = self.names[owner]
                if name not in links and len(links) < MAX_LINKED:
                    links.append(name)
            if c >= p.k_ and not self.alerted[slot]:
                self.alerted[slot] = True
                alerts.append((clients[i], i, c, window, tuple(self.linked.get(slot, ()))))
            elif c == 0:
                self.alerted[slot] = False
        return dist, shared, dup, counts, alerts


def calibrate_k(p: float, window: int, n_queries: int, budget: float, seed: int) -> int:
    """Smallest ``k >= 2`` with P(some ``window`` of ``n_queries`` Bernoulli(p) flags >= k)
    at most ``budget`` (Monte Carlo, 4000 seeded runs); ``window`` + 1 if none is."""
    rng = np.random.default_rng(seed)
    runs = 4000
    n = max(n_queries, window)
    best = np.zeros(runs, dtype=np.int64)
    for lo in range(0, runs, 500):  # bounded memory
        flags = rng.random((min(500, runs - lo), n)) < p
        c = np.concatenate(
            [np.zeros((flags.shape[0], 1), dtype=np.int64), np.cumsum(flags, axis=1)], axis=1
        )
        best[lo : lo + flags.shape[0]] = (c[:, window:] - c[:, :-window]).max(axis=1)
    for k in range(2, window + 1):
        if float((best >= k).mean()) <= budget:
            return k
    return window + 1
