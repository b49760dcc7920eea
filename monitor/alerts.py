"""Findings and their alert events: CloudEvents 1.0 (structured JSON), dedupe keys, signatures.

Pure functions, no I/O. A :class:`Finding` is what a pipeline decides (a drifted window, a window
with too many OOD records, a sequential detection). :func:`dedupe_key` derives a deterministic
key from the deployment, model, model version, detector, the stage key (the client pseudonym of
a client-keyed stage) and window bounds, so the *same* window found again after a restart
(replayed from the last committed offset) yields the *same* key, and the sinks refuse to deliver
it twice. The key is also the CloudEvent ``id`` and the event ``time`` is the event time of the
window's last record, so a replayed event is byte-for-byte the event that was sent.

Delivery is **at least once**: an event sent just before a crash whose acknowledgement was not
recorded is sent again, identical. Consumers de-duplicate on ``source`` + ``id`` (CloudEvents'
own uniqueness rule); that is the contract.

``source`` is a URI naming the deployment (``alerts.source``; by default
``repwatch://monitor/<consumer group>``) and the ``id`` is derived from it and from the
deployment's instance id (a random id kept in the checkpoint directory, so it survives restarts
and is shared by the workers of one deployment): two deployments, or two demo runs, never emit
the same ``source`` + ``id``. On Kafka the event travels in *structured* mode: the value is the
whole event and the only header is ``content-type`` (a ``ce_id`` header would make CloudEvents
SDKs read the message as binary mode).

Webhook deliveries are signed to the `Standard Webhooks`_ spec: ``webhook-id`` (the dedupe key,
the same on every retry), ``webhook-timestamp`` (Unix seconds of the attempt) and
``webhook-signature``, a space-separated list of ``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``, one per configured secret, so a secret can be rotated without a gap.
:func:`verify` is the receiver's side: any one valid signature, a timestamp inside the tolerance
window (old or future deliveries are replays), and optionally a :class:`ReplayGuard` that
refuses an id it accepted before. The body-only ``X-Repwatch-Signature: sha256=<hex>`` header of
0.1 is still sent and accepted (:func:`sign`) for one release; it is deprecated because a
captured delivery verifies forever.

.. _Standard Webhooks: https://www.standardwebhooks.com/
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import threading
import time
import urllib.parse
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

AlertKind = Literal["drift", "ood", "adversarial", "attack", "poisoning"]
Severity = Literal["info", "warning", "critical"]
EVENT_TYPE_PREFIX = "io.repwatch.alert."
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
DEFAULT_TOLERANCE_SECONDS = 300.0  # the Standard Webhooks recommendation: five minutes
SIGNATURE_HEADER = "X-Repwatch-Signature"  # deprecated: body-only HMAC, replayable; see sign()
DELIVERY_HEADER = "X-Repwatch-Delivery"  # deprecated alias of webhook-id
_SECRET_PREFIX = b"whsec_"
_MAX_SIGNATURE_HEADER = 4096  # bytes of webhook-signature a receiver reads (about 40 signatures)
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
    key: str | None = None  # stage key: the client pseudonym of a client-keyed stage


def dedupe_key(f: Finding, namespace: str = "") -> str:
    """Deterministic id of a finding: same deployment/model/version/detector/key/window ⇒ same
    key. ``namespace`` names the deployment (source URI and instance id)."""
    w = f.window
    ident = [f.kind, f.model, f.model_version, f.detector, w["kind"], w["start"], w["end"]]
    if w.get("partition") is not None:
        ident.append(w["partition"])
    if f.key is not None:
        ident.append(["key", f.key])
    if namespace:
        ident.insert(0, namespace)
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]


def default_source(group_id: str) -> str:
    """The deployment's CloudEvent source URI, derived from the consumer group."""
    return "repwatch://monitor/" + urllib.parse.quote(group_id, safe="")


def instance_id(directory: os.PathLike[str] | str) -> str:
    """A random id for this deployment, created once in its (shared) checkpoint directory."""
    path = os.path.join(directory, "deployment-id")
    os.makedirs(directory, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with open(path) as f:
            return f.read().strip()
    value = uuid.uuid4().hex
    try:
        os.write(fd, value.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return value


def _num(x: float | None) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _iso(ms: int | None) -> str:
    t = datetime.fromtimestamp((ms or 0) / 1000, tz=UTC)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_cloudevent(f: Finding, source: str, instance: str = "") -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode event for a finding."""
    data_key = {} if f.key is None else {"key": f.key}
    return {
        "specversion": "1.0",
        "type": EVENT_TYPE_PREFIX + f.kind,
        "source": source,
        "id": dedupe_key(f, f"{source} {instance}".strip()),
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
            **data_key,
            "severity": f.severity,
            "evidence": {"record_ids": list(f.evidence)},
            "details": {k: _num(v) if isinstance(v, float) else v for k, v in f.details.items()},
        },
    }


def encode_event(event: dict[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys): identical events give identical bodies/signatures."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def signing_key(secret: bytes) -> bytes:
    """The HMAC key of a configured secret.

    A Standard Webhooks secret ``whsec_<base64>`` is base64-decoded (what the spec's libraries
    do); any other value is used as its raw bytes.
    """
    if secret.startswith(_SECRET_PREFIX):
        raw = secret[len(_SECRET_PREFIX):].rstrip(b"=")
        try:  # unpadded base64 is common in issued secrets
            return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
        except binascii.Error:
            raise ValueError("a webhook secret starting with 'whsec_' must be base64 after the "
                             "prefix; give the raw secret without the prefix instead") from None
    return secret


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256).digest()


def sign_delivery(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[bytes]) -> str:
    """The ``webhook-signature`` value: ``v1,<base64>`` for each secret, space-separated."""
    if not secrets:
        raise ValueError("sign_delivery needs at least one secret")
    return " ".join(
        "v1," + base64.b64encode(_signature(signing_key(s), msg_id, timestamp, body)).decode()
        for s in secrets
    )


def delivery_headers(msg_id: str, body: bytes, secrets: Sequence[bytes],
                     timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks headers of one delivery attempt (signed when there are secrets).

    The deprecated ``X-Repwatch-Signature`` (body only, first secret) and ``X-Repwatch-Delivery``
    ride along for receivers written against 0.1.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    headers = {WEBHOOK_ID_HEADER: msg_id, WEBHOOK_TIMESTAMP_HEADER: str(ts),
               DELIVERY_HEADER: msg_id}
    if secrets:
        headers[WEBHOOK_SIGNATURE_HEADER] = sign_delivery(msg_id, ts, body, secrets)
        headers[SIGNATURE_HEADER] = sign(body, secrets[0])
    return headers


def sign(body: bytes, secret: bytes) -> str:
    """Deprecated ``sha256=<hex>`` HMAC of the body alone (the ``X-Repwatch-Signature`` header).

    It carries no timestamp, so a captured delivery verifies forever: verify the Standard
    Webhooks headers with :func:`verify` instead. Sent until 0.3.
    """
    return "sha256=" + hmac.new(signing_key(secret), body, hashlib.sha256).hexdigest()


class InvalidDelivery(ValueError):
    """A webhook delivery failed verification; the message says which check and why."""


class ReplayGuard:
    """Remembers the ``webhook-id`` of each delivery accepted within the tolerance window.

    :func:`verify` with ``seen=guard`` refuses an id it accepted before, so a delivery captured
    and replayed inside the window is refused too (the timestamp check covers the rest). At most
    ``max_ids`` ids are kept; past that the oldest are forgotten first. Thread-safe.

    Examples
    --------
    >>> guard = ReplayGuard(tolerance_seconds=300)
    >>> guard.first_time("msg_1", now=1000.0), guard.first_time("msg_1", now=1001.0)
    (True, False)
    >>> guard.first_time("msg_1", now=1700.0)  # forgotten: verify() refuses its old timestamp
    True
    """

    def __init__(self, tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
                 max_ids: int = 100_000) -> None:
        if max_ids <= 0:
            raise ValueError(f"max_ids must be positive, got {max_ids}")
        self.tolerance = float(tolerance_seconds)
        self.max_ids = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, msg_id: str, now: float | None = None) -> bool:
        """Record ``msg_id``; False if it was recorded within the last two tolerance windows."""
        now = time.time() if now is None else now
        with self._lock:
            # A timestamp up to `tolerance` in the future passes verify(): keep ids for twice it.
            horizon = now - 2 * self.tolerance
            while self._ids and next(iter(self._ids.values())) < horizon:
                self._ids.popitem(last=False)
            if msg_id in self._ids:
                return False
            self._ids[msg_id] = now
            while len(self._ids) > self.max_ids:
                self._ids.popitem(last=False)
            return True


def _header(headers: Mapping[str, str], name: str) -> str:
    for k, v in headers.items():  # HTTP header names are case-insensitive
        if k.lower() == name:
            return v
    raise InvalidDelivery(f"the {name} header is missing (is the sender repwatch >= 0.2?)")


def check_delivery(
    body: bytes,
    secrets: bytes | Sequence[bytes],
    headers: Mapping[str, str],
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
    seen: ReplayGuard | None = None,
) -> str:
    """Verify a Standard Webhooks delivery; return its ``webhook-id`` or raise InvalidDelivery.

    ``secrets`` is the secret, or several while one is rotated (any one may match). A timestamp
    further than ``tolerance_seconds`` from ``now`` (default: the clock) either way is refused.
    """
    keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
    if not keys:
        raise ValueError("verify needs at least one secret")
    msg_id = _header(headers, WEBHOOK_ID_HEADER)
    raw_ts = _header(headers, WEBHOOK_TIMESTAMP_HEADER)
    sig_header = _header(headers, WEBHOOK_SIGNATURE_HEADER)
    try:
        ts = int(raw_ts)
    except ValueError:
        raise InvalidDelivery(f"webhook-timestamp {raw_ts[:40]!r} is not Unix seconds") from None
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_seconds:
        raise InvalidDelivery(
            f"webhook-timestamp {ts} is {now - ts:+.0f} s from now, outside the "
            f"{tolerance_seconds:g} s tolerance (a replayed or delayed delivery, or a skewed clock)"
        )
    if len(sig_header) > _MAX_SIGNATURE_HEADER:
        raise InvalidDelivery(f"webhook-signature is longer than {_MAX_SIGNATURE_HEADER} bytes")
    offered = []
    for part in sig_header.split():
        version, _, value = part.partition(",")
        if version == "v1":
            try:
                offered.append(base64.b64decode(value, validate=True))
            except binascii.Error:
                continue
    if not offered:
        raise InvalidDelivery("webhook-signature holds no v1 signature")
    expected = [_signature(signing_key(k), msg_id, ts, body) for k in keys]
    # Compare every pair, so the time taken does not tell which secret or signature matched.
    matches = [hmac.compare_digest(e, o) for e in expected for o in offered]
    if not any(matches):
        raise InvalidDelivery("no webhook-signature matches: wrong secret, or the body, id or "
                              "timestamp was changed in transit")
    if seen is not None and not seen.first_time(msg_id, now):
        raise InvalidDelivery(f"webhook-id {msg_id!r} was accepted before: a replayed delivery")
    return msg_id


def verify(
    body: bytes,
    secrets: bytes | Sequence[bytes],
    headers: Mapping[str, str] | str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
    seen: ReplayGuard | None = None,
) -> bool:
    """True if a webhook delivery is authentic and fresh (see :func:`check_delivery`).

    ``headers`` are the request's headers. Passing the deprecated ``X-Repwatch-Signature``
    value (a string) instead checks the body-only signature, with no replay protection.

    Examples
    --------
    >>> body, secret = b'{"id":"k1"}', b"s3cret"
    >>> headers = delivery_headers("k1", body, [secret], timestamp=1_700_000_000)
    >>> verify(body, secret, headers, now=1_700_000_100)
    True
    >>> verify(body, secret, headers, now=1_700_001_000)  # 1000 s later: a replay
    False
    >>> verify(body, [b"new-secret", secret], headers, now=1_700_000_100)  # during a rotation
    True
    """
    if isinstance(headers, str):
        warnings.warn("verify(body, secret, X-Repwatch-Signature) is deprecated and replayable; "
                      "pass the request headers to verify the webhook-signature instead",
                      DeprecationWarning, stacklevel=2)
        keys = [secrets] if isinstance(secrets, bytes) else list(secrets)
        return any([hmac.compare_digest(sign(body, k), headers) for k in keys])
    try:
        check_delivery(body, secrets, headers, tolerance_seconds=tolerance_seconds, now=now,
                       seen=seen)
    except InvalidDelivery:
        return False
    return True


def kafka_headers(event: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Headers of a structured-mode CloudEvent on Kafka: the content type only (no ``ce_*``
    header: CloudEvents SDKs take those as binary mode)."""
    return [("content-type", CONTENT_TYPE.encode())]
