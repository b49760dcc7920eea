"""Findings and their alert events: CloudEvents 1.0 (structured JSON), dedupe keys, signatures.

Pure functions, no I/O. A :class:`Finding` is what a pipeline decides (a drifted window, a window
with too many OOD records, a sequential detection). :func:`dedupe_key` derives a deterministic
key from model, model version, detector and window bounds, so the *same* window found again
after a restart (replayed from the last committed offset) yields the *same* key, and the sinks
refuse to deliver it twice. The key is also the CloudEvent ``id`` and the event ``time`` is the
event time of the window's last record, so a replayed event is byte-for-byte the event that was
sent (a consumer that de-duplicates on ``source`` + ``id``, as CloudEvents intends, is safe too).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

AlertKind = Literal["drift", "ood", "adversarial", "attack", "poisoning"]
Severity = Literal["info", "warning", "critical"]
EVENT_TYPE_PREFIX = "io.repwatch.alert."
SIGNATURE_HEADER = "X-Repwatch-Signature"
DELIVERY_HEADER = "X-Repwatch-Delivery"
CONTENT_TYPE = "application/cloudevents+json"


@dataclass(frozen=True)
class Finding:
    """A decision a pipeline made about one window of one model version."""

    kind: AlertKind
    model: str
    model_version: str
    detector: str  # the pipeline's detector id (registered name, ``#i`` if repeated)
    statistic: float
    threshold: float
    window: dict[str, Any]  # ClosedWindow.bounds() (+ "partition" when the runtime knows it)
    severity: Severity = "warning"
    p_value: float | None = None
    evidence: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # effect size, flagged fraction…
    alert: bool = True  # False: recorded in metrics only (detector configured alert: false)


def dedupe_key(f: Finding) -> str:
    """Deterministic id of a finding: same model/version/detector/window ⇒ same key."""
    w = f.window
    ident = [f.kind, f.model, f.model_version, f.detector, w["kind"], w["start"], w["end"]]
    if w.get("partition") is not None:
        ident.append(w["partition"])
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def _num(x: float | None) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _iso(ms: int | None) -> str:
    t = datetime.fromtimestamp((ms or 0) / 1000, tz=UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_cloudevent(f: Finding, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode event for a finding."""
    return {
        "specversion": "1.0",
        "type": EVENT_TYPE_PREFIX + f.kind,
        "source": source,
        "id": dedupe_key(f),
        "time": _iso(f.window.get("last_ts_ms")),
        "subject": f.model,
        "datacontenttype": "application/json",
        "data": {
            "model": f.model,
            "model_version": f.model_version,
            "detector": f.detector,
            "statistic": _num(f.statistic),
            "threshold": _num(f.threshold),
            "p_value": _num(f.p_value),
            "window": f.window,
            "severity": f.severity,
            "evidence": {"record_ids": list(f.evidence)},
            "details": {k: _num(v) if isinstance(v, float) else v for k, v in f.details.items()},
        },
    }


def encode_event(event: dict[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys): identical events give identical bodies/signatures."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: bytes) -> str:
    """``sha256=<hex>`` HMAC of the exact body bytes (GitHub-webhook style)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: bytes, header: str) -> bool:
    """Constant-time check of a signature header (for receivers and tests)."""
    return hmac.compare_digest(sign(body, secret), header)


def kafka_headers(event: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Headers of a structured-mode CloudEvent on Kafka (content type + id for consumers)."""
    return [("content-type", CONTENT_TYPE.encode()), ("ce_id", str(event["id"]).encode())]
