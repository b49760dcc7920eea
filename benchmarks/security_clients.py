"""Per-client query attacks on the digits model (part of ``benchmarks/security.py``).

Benign traffic: clients sending distinct digits images (all 1797, in random order) with
occasional benign retries (the same image again with small Gaussian noise). The detector is
calibrated on one set of benign clients and judged on fresh ones. Attacks: ART's HopSkipJump
(label-only) and SquareAttack (scores, L∞ ε = 0.2) against the ONNX model, one run per
correctly classified test image; their query streams are de-duplicated (exact repeats
dropped, as a caching attacker would) before the detector sees them. Each query is
featurised as the sidecar would: SSL embedding, window hashes, exact digest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from security_models import OnnxDigits

from detectors.adversarial import QueryAttackDetector, content_digest, window_hashes

Array = NDArray[Any]


def unique_rows(Q: Array) -> Array:
    """Rows of ``Q`` with exact repeats dropped, first occurrences in order."""
    _, first = np.unique(content_digest(Q), return_index=True)
    return Q[np.sort(first)]


def featurize(model: OnnxDigits, Q: Array) -> tuple[Array, Array, Array]:
    return model.views(Q)[1].astype(np.float64), window_hashes(Q), content_digest(Q)


def benign_streams(pool: Array, n_clients: int, n_queries: int, retry: float, noise: float,
                   rng: np.random.Generator) -> list[Array]:
    """Per client: ``n_queries`` distinct images, each followed by a noisy retry w.p. ``retry``."""
    out = []
    for _ in range(n_clients):
        rows = []
        for i in rng.choice(len(pool), n_queries, replace=False):
            rows.append(pool[i])
            if rng.random() < retry:
                rows.append(np.clip(pool[i] + rng.normal(0, noise, 64), 0.0, 1.0))
        out.append(np.asarray(rows, dtype=np.float32))
    return out


def interleave(streams: list[Array], prefix: str) -> tuple[list[str], Array]:
    """Round-robin merge of client streams: ``(client names, queries)``."""
    names, rows = [], []
    for t in range(max(len(s) for s in streams)):
        for c, s in enumerate(streams):
            if t < len(s):
                names.append(f"{prefix}{c}")
                rows.append(s[t])
    return names, np.asarray(rows)


def first_alert(res: Any) -> int | None:
    """Unique-query number (1-based) of the first alert, or ``None``."""
    return res.alerts[0].record_index + 1 if res.alerts else None


def send(det: QueryAttackDetector, model: OnnxDigits, names: list[str], Q: Array) -> Any:
    return det.update_batch(names, *featurize(model, Q))


def variants(det: QueryAttackDetector) -> dict[str, Callable[[], QueryAttackDetector]]:
    """The detector, and each signal alone (fresh memory each time)."""

    def fresh(tau: float | None = None, shared: int | None = None) -> QueryAttackDetector:
        d = QueryAttackDetector.from_state(*det.get_state())
        if tau is not None:
            d.tau_ = tau
        if shared is not None:
            d.min_shared_ = shared
        return d

    return {
        "both signals": fresh,
        "embedding distance only": lambda: fresh(shared=1 << 30),
        "window hashes only": lambda: fresh(tau=0.0),
    }


def run(model: OnnxDigits, pool: Array, victims: Array, labels: Array,
        hsj: dict[str, Array], square: dict[str, Array], seed: int, n_benign: int,
        retry: float, eps: float) -> dict[str, Any]:
    """Calibrate, then per variant: benign alert rate, HSJ/Square detection, pseudonym split."""
    rng = np.random.default_rng(seed)
    names, Q = interleave(benign_streams(pool, 10, 1000, retry, 0.01, rng), "cal")
    det = QueryAttackDetector().fit(names, *featurize(model, Q))
    b_names, B = interleave(benign_streams(pool, n_benign, 1000, retry, 0.01, rng), "benign")
    runs = {
        "HopSkipJump": [unique_rows(hsj["queries"][hsj["run"] == i]) for i in range(len(victims))],
        "Square": [unique_rows(square["queries"][square["run"] == i])
                   for i in range(len(victims))],
    }
    out: dict[str, Any] = {
        "calibration": {"tau": det.tau_, "min_shared": det.min_shared_, "k": det.k_,
                        "window": det.window, "benign_flag_rate": det.benign_flag_rate_,
                        "stop_hashes": int(det.stop_hashes_.size)},
        "queries_per_run": {k: [len(r) for r in v] for k, v in runs.items()},
    }
    for vname, make in variants(det).items():
        d = make()
        res = send(d, model, b_names, B)
        alerted = {a.client for a in res.alerts}
        row: dict[str, Any] = {
            "benign_alerted": len(alerted), "benign_clients": n_benign,
            "benign_flag_rate": float(res.flagged.mean()),
        }
        for attack, streams in runs.items():
            found, succeeded, stopped = [], [], 0
            for i, Qa in enumerate(streams):
                r = send(d, model, [f"{attack}-{i}"] * len(Qa), Qa)
                at = first_alert(r)
                found.append(at)
                pred = model.logits(Qa).argmax(1)
                ok = (pred != labels[i]) & (np.abs(Qa - victims[i]).max(1) <= eps + 1e-5)
                success = int(np.flatnonzero(ok)[0]) + 1 if ok.any() else None
                succeeded.append(success)
                if at is not None and (success is None or at < success):
                    stopped += 1
            # a k-of-m rule alerts at the earliest on query k + 1: the first query is the
            # clean image, which nothing flags; a run that succeeds by then is out of reach
            reachable = sum(s is None or s > det.k_ + 1 for s in succeeded)
            row[attack] = {"alerts": found, "success": succeeded,
                           "stopped_before_success": stopped, "reachable": reachable}
        for attack, streams in runs.items():  # the longest run, split over 10 pseudonyms
            Qa = max(streams, key=len)
            r = send(d, model, [f"{attack}-sock{j % 10}" for j in range(len(Qa))], Qa)
            row[f"{attack} over 10 pseudonyms"] = {
                "first_alert": first_alert(r), "pseudonyms_alerted": len(r.alerts),
                "linked": max((len(a.linked) for a in r.alerts), default=0),
                "queries": len(Qa),
            }
        out[vname] = row
    return out
