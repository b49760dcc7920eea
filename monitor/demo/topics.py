"""Read back what a running system wrote: alert CloudEvents and a window of records.

Shared by the demo and ``repwatch report``; connection settings (SASL, TLS) come from the
configuration's ``kafka`` section. Reads are bounded (``max_records``, ``max_events``) and a
record or event that does not decode is counted and skipped, never fatal.
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


def read_alerts(kafka: Any, topic: str, since_ms: int | None = None,
                until_ms: int | None = None, max_events: int = 10_000,
                timeout_ms: int = 3000) -> tuple[list[tuple[dict[str, Any], int]], int]:
    """(alert CloudEvents on ``topic`` with the broker timestamp of each, undecodable count)."""
    from kafka import KafkaConsumer

    from monitor.kafka_io import client_kwargs

    c = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=timeout_ms,
                      enable_auto_commit=False, **client_kwargs(kafka))
    out: list[tuple[dict[str, Any], int]] = []
    bad = 0
    try:
        for m in c:
            try:
                event = json.loads(m.value)
            except ValueError:
                bad += 1
                continue
            if not (isinstance(event, dict) and isinstance(event.get("data"), dict)
                    and "type" in event):
                bad += 1
                continue
            # In the window when the records it judged are (event time), else when it arrived.
            window = event["data"].get("window")
            last = window.get("last_ts_ms") if isinstance(window, dict) else None
            at = int(last) if isinstance(last, int) else int(m.timestamp)
            if (since_ms is None or at >= since_ms) and (until_ms is None or at <= until_ms):
                out.append((event, int(m.timestamp)))
            if len(out) >= max_events:
                break
    finally:
        c.close()
    return out, bad


def read_records(kafka: Any, topic: str, model: str, since_ms: int | None = None,
                 until_ms: int | None = None, max_records: int = 200_000) -> RecordWindow:
    """Inference records of ``model`` with event time in [since_ms, until_ms], stream order."""
    from monitor import records as R
    from monitor.kafka_io import read_range

    ids: list[str] = []
    ts: list[int] = []
    rows: list[NDArray[Any]] = []
    bad = 0
    for value in read_range(kafka, topic, start_ms=since_ms, end_ms=None,
                            max_messages=max_records * 2):
        try:
            r = R.decode(value)
        except R.RecordError:
            bad += 1
            continue
        if r.model != model or r.kind != "inference":
            continue
        if (since_ms is not None and r.timestamp_ms < since_ms) or (
                until_ms is not None and r.timestamp_ms > until_ms):
            continue
        ids.append(r.record_id)
        ts.append(r.timestamp_ms)
        rows.append(np.asarray(r.embedding, dtype=np.float64))
        if len(ids) >= max_records:
            break
    dim = rows[0].shape[0] if rows else 0
    return RecordWindow(tuple(ids), np.asarray(ts, dtype=np.int64),
                        np.vstack(rows) if rows else np.zeros((0, dim)), bad)
