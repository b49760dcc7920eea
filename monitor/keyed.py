"""Client-keyed stages: per-client state in a bounded, incrementally checkpointed store.

A detector configured with ``key: client`` runs in a :class:`KeyedStage`. Every record that
carries a client pseudonym updates that client's record in a
:class:`~monitor.state.KeyedStateStore` (bounded keys and bytes per key, idle and LRU eviction,
incremental checkpoints), in stream order: a client's records are always seen in the order they
were consumed. Records without a client id are counted as missing input.

Two kinds of detector fit here:

* a :class:`~detectors.base.RecordDetector` (``ood.knn`` …): every record is scored on the whole
  batch, and each client keeps a ring of its last ``window.size`` flags — a client whose recent
  flagged fraction reaches ``min_flagged_fraction`` (over at least ``window.min_records``
  records) is a finding *for that client*;
* a :class:`~detectors.base.KeyedDetector`: it declares its own per-key fields and its
  ``update_key(state, X, ts)`` returns the records' scores and flags (e.g. a query-attack
  detector keeping a client's recent queries).

Findings carry the client pseudonym as ``Finding.key``, so their dedupe key and CloudEvent id
are per client. Episodes (alert at onset only) are tracked per client, in the store.

Checkpoints: the store checkpoints itself (only dirty keys) *before* the model checkpoint file
is written, with the offset it covers. After a crash between the two, records below the
store's offset are already in it and are skipped by this stage, so each record enters a
client's state once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from detectors.base import KeyedDetector
from monitor.batch import RecordBatch
from monitor.config import DetectorConfig
from monitor.stages import Consumes, RecordScores, Stage, StepReport, evidence
from monitor.state import KeyedStateStore, StateKeyError, StateSchema, StoreLimits

if TYPE_CHECKING:
    from monitor.pipeline import Pipeline

DEFAULT_KEY_WINDOW = 100
DEFAULT_KEY_MIN_RECORDS = 20


class KeyedStage(Stage):
    kind = "keyed"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes, directory: Path | None) -> None:
        super().__init__(det_id, det, cfg, pipe, consumes)
        self.family = cfg.name.split(".", 1)[0]
        self.size = cfg.window.size if cfg.window else DEFAULT_KEY_WINDOW
        self.min_records = cfg.window.min_records if cfg.window else DEFAULT_KEY_MIN_RECORDS
        fields: dict[str, Any] = {"flags": ("uint8", (self.size,)), "n": "int64",
                                  "episode": "uint8"}
        if isinstance(det, KeyedDetector):
            fields.update({f"d_{k}": v for k, v in det.key_fields().items()})
        limits = StoreLimits(
            max_keys=cfg.max_keys, max_memory_bytes=cfg.max_key_memory_bytes,
            idle_timeout_ms=None if cfg.key_idle_seconds is None
            else int(cfg.key_idle_seconds * 1000), max_key_bytes=128)
        self.store = KeyedStateStore(StateSchema.of(**fields), limits, directory=directory)
        self.last_evictions = dict(self.store.evictions)

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        inp = self.inputs(batch, report)
        if inp is None:
            return
        b = inp.batch
        clients = b.clients
        done = -1 if self.store.offset is None else self.store.offset
        rows = [j for j, c in enumerate(clients) if c is not None and b.offsets[j] >= done]
        skipped = len(clients) - len(rows)
        if skipped:
            report.missing_input[self.id] = report.missing_input.get(self.id, 0) + skipped
        if not rows:
            return
        t0 = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for j in rows:
            groups.setdefault(clients[j], []).append(j)  # type: ignore[arg-type]
        scores = np.zeros(len(clients))
        flags = np.zeros(len(clients), dtype=bool)
        if not isinstance(self.det, KeyedDetector):
            res = self.det.predict(inp.values[rows])
            scores[rows], flags[rows] = res.scores, np.asarray(res.flags, dtype=bool)
        for client, js in groups.items():
            try:
                rec = self.store.get_or_create(client, event_ms=int(b.ts[js[-1]]))
            except StateKeyError:
                report.missing_input[self.id] = report.missing_input.get(self.id, 0) + len(js)
                continue
            if isinstance(self.det, KeyedDetector):
                view = _Prefixed(rec)
                res = self.det.update_key(view, inp.values[js], b.ts[js])
                scores[js], flags[js] = res.scores, np.asarray(res.flags, dtype=bool)
            self._update(client, rec, js, flags, scores, b, report)
        seconds = time.perf_counter() - t0
        report.observations.append(RecordScores(self.id, self.kind, seconds, len(rows),
                                                int(flags[rows].sum()), scores[rows]))

    def _update(self, client: str, rec: Any, js: list[int], flags: NDArray[np.bool_],
                scores: NDArray[np.float64], b: RecordBatch, report: StepReport) -> None:
        # Judged record by record, so an episode starts at the same client record however the
        # stream was batched: a worker restarted from a checkpoint re-raises the same window
        # (the same alert id), never a neighbouring one.
        ring, n = rec["flags"], int(rec["n"])
        flagged = int(ring[: min(n, self.size)].sum())
        was = bool(rec["episode"])
        onsets: list[tuple[int, int, int, int]] = []  # (k, n, held, flagged) at each onset
        for k, j in enumerate(js):
            pos = n % self.size
            if n >= self.size:
                flagged -= int(ring[pos])
            f = bool(flags[j])
            ring[pos] = f
            flagged += f
            n += 1
            held = min(n, self.size)
            detected = held >= self.min_records and flagged > 0 and (
                flagged / held >= self.cfg.min_flagged_fraction)
            if detected and not was:
                onsets.append((k, n, held, flagged))
            was = detected
        rec["n"] = n
        rec["episode"] = was
        for k, n_at, held, flagged_at in onsets:
            upto = js[: k + 1]
            ids = [b.ids[j] for j in upto]
            window = {"kind": "count", "start": n_at - held, "end": n_at,
                      "first_ts_ms": int(b.ts[upto[0]]), "last_ts_ms": int(b.ts[upto[-1]]),
                      "records": held}
            report.findings.append(self.finding(
                self.family, statistic=flagged_at / held,
                threshold=self.cfg.min_flagged_fraction, window=window, key=client,
                evidence=evidence(ids, np.where(flags[upto], scores[upto], -np.inf)),
                details={"flagged": flagged_at, "records": held, "client_records": n_at,
                         "window_spec": f"last {self.size} records of the client"}))

    def evictions_since(self) -> dict[str, int]:
        now = dict(self.store.evictions)
        delta = {k: v - self.last_evictions.get(k, 0) for k, v in now.items()}
        self.last_evictions = now
        return {k: v for k, v in delta.items() if v}

    def checkpoint(self, offset: int) -> None:
        if self.store.directory is not None:
            self.store.checkpoint(offset=offset)

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        return {}, {"keys": len(self.store), "store_offset": self.store.offset}


class _Prefixed:
    """A keyed detector's view of its own fields (``d_<name>``) in the client's record."""

    __slots__ = ("_rec",)

    def __init__(self, rec: Any) -> None:
        self._rec = rec

    def __getitem__(self, name: str) -> Any:
        return self._rec[f"d_{name}"]

    def __setitem__(self, name: str, value: Any) -> None:
        self._rec[f"d_{name}"] = value
