"""Read back what a running system wrote: alert CloudEvents and a window of records.

Shared by the demo and ``repwatch report``. Reads are bounded (``max_records``) and a record
that does not decode is counted and skipped, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class RecordWindow:
    ids: tuple[str, ...]
    ts_ms: NDArray[np.int64]
    X: NDArray[np.float64]
    undecodable: int


def _consumer(broker: str, topic: str, timeout_ms: int) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest",
                         consumer_timeout_ms=timeout_ms, enable_auto_commit=False)


def read_alerts(broker: str, topic: str, timeout_ms: int = 3000,
                max_events: int = 10_000) -> list[tuple[dict[str, Any], int]]:
    """Alert CloudEvents on ``topic`` with the broker's timestamp (ms) of each."""
    c = _consumer(broker, topic, timeout_ms)
    out: list[tuple[dict[str, Any], int]] = []
    try:
        for m in c:
            try:
                event = json.loads(m.value)
            except ValueError:
                continue
            if isinstance(event, dict) and "type" in event and "data" in event:
                out.append((event, int(m.timestamp)))
            if len(out) >= max_events:
                break
    finally:
        c.close()
    return out


def read_records(broker: str, topic: str, model: str, kind: str = "inference",
                 since_ms: int = 0, until_ms: int | None = None, max_records: int = 200_000,
                 timeout_ms: int = 3000) -> RecordWindow:
    """Records of ``model`` and ``kind`` with event time in [since_ms, until_ms], stream order."""
    from monitor import records as R

    c = _consumer(broker, topic, timeout_ms)
    ids: list[str] = []
    ts: list[int] = []
    rows: list[NDArray[Any]] = []
    bad = 0
    try:
        for m in c:
            try:
                r = R.decode(m.value)
            except R.RecordError:
                bad += 1
                continue
            if r.model != model or r.kind != kind or r.timestamp_ms < since_ms:
                continue
            if until_ms is not None and r.timestamp_ms > until_ms:
                continue
            ids.append(r.record_id)
            ts.append(r.timestamp_ms)
            rows.append(np.asarray(r.embedding, dtype=np.float64))
            if len(ids) >= max_records:
                break
    finally:
        c.close()
    dim = rows[0].shape[0] if rows else 0
    return RecordWindow(tuple(ids), np.asarray(ts, dtype=np.int64),
                        np.vstack(rows) if rows else np.zeros((0, dim)), bad)
