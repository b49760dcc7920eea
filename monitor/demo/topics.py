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
    """Inference records in stream order (and the model's feedback records beside them)."""

    ids: tuple[str, ...]
    ts_ms: NDArray[np.int64]
    X: NDArray[np.float64]
    undecodable: int
    predictions: NDArray[np.int64] | None = None  # class ids; -1 where not an integer class
    penultimate: NDArray[np.float64] | None = None  # when every inference record carries it
    feedback: FeedbackWindow | None = None


@dataclass(frozen=True)
class FeedbackWindow:
    """Feedback records with integer labels, in stream order (their ids are the inferences')."""

    ids: tuple[str, ...]
    ts_ms: NDArray[np.int64]
    X: NDArray[np.float64]
    labels: NDArray[np.int64]


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
    """Records of ``model`` with event time in [since_ms, until_ms], stream order: inference
    records (embedding, prediction, penultimate features) and feedback records with labels."""
    from monitor import records as R
    from monitor.kafka_io import read_range

    inf: list[Any] = []
    fb: list[Any] = []
    bad = 0
    for value in read_range(kafka, topic, start_ms=since_ms, end_ms=None,
                            max_messages=max_records * 2):
        try:
            r = R.decode(value)
        except R.RecordError:
            bad += 1
            continue
        if r.model != model or (since_ms is not None and r.timestamp_ms < since_ms) or (
                until_ms is not None and r.timestamp_ms > until_ms):
            continue
        if r.kind == "inference":
            inf.append(r)
        elif r.kind == "feedback" and type(r.label) is int:
            fb.append(r)
        if len(inf) + len(fb) >= max_records:
            break
    dim = inf[0].embedding.shape[0] if inf else 0
    X = np.vstack([r.embedding for r in inf]).astype(np.float64) if inf else np.zeros((0, dim))
    pred = np.array([r.prediction if type(r.prediction) is int else -1 for r in inf],
                    dtype=np.int64)
    pens = [p for r in inf if (p := (r.features or {}).get("penultimate")) is not None]
    pen = np.vstack(pens).astype(np.float64) if inf and len(pens) == len(inf) else None
    feedback = None
    if fb:
        feedback = FeedbackWindow(
            tuple(r.record_id for r in fb), np.array([r.timestamp_ms for r in fb], np.int64),
            np.vstack([r.embedding for r in fb]).astype(np.float64),
            np.array([r.label for r in fb], dtype=np.int64))
    return RecordWindow(tuple(r.record_id for r in inf),
                        np.array([r.timestamp_ms for r in inf], dtype=np.int64), X, bad, pred,
                        pen, feedback)
