"""Webhook deliveries to the Standard Webhooks spec, checked against the spec's own Python
library (``standardwebhooks``) as an independent receiver, over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks

from monitor.alerts import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    InvalidDelivery,
    ReplayGuard,
    check_delivery,
    delivery_headers,
    sign,
    sign_delivery,
    verify,
)
from monitor.config import Config
from monitor.sinks import Webhook, WebhookDispatcher
from monitor.version import version

EVENT = {"specversion": "1.0", "id": "k1", "type": "io.repwatch.alert.drift", "data": {"x": 1}}
RAW_SECRET = b"a-raw-secret-from-the-environment"
WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def test_signature_matches_the_spec_test_vector() -> None:
    # The example of the Standard Webhooks spec and its reference libraries.
    secret = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, ts, body = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    assert sign_delivery(msg_id, ts, body, [secret]) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    # ... and a raw (non-whsec_) secret is the HMAC key itself.
    mac = hmac.new(RAW_SECRET, b"%s.%d.%s" % (msg_id.encode(), ts, body), hashlib.sha256)
    assert sign_delivery(msg_id, ts, body, [RAW_SECRET]) == (
        "v1," + base64.b64encode(mac.digest()).decode()
    )


def test_delivery_verifies_with_the_reference_library_and_carries_the_user_agent(
    webhook_receiver,
) -> None:
    d = WebhookDispatcher([Webhook(webhook_receiver.url, WHSEC.encode())])
    t0 = int(time.time())
    d.submit("k1", EVENT)
    assert webhook_receiver.wait_for(1, 10) == [EVENT]
    d.close()
    headers, body = webhook_receiver.requests[0]
    h = _lower(headers)
    assert h["webhook-id"] == "k1" and abs(int(h["webhook-timestamp"]) - t0) <= 2
    assert h["user-agent"] == f"repwatch/{version()}" and version() != "0+unknown"
    assert h["content-type"] == "application/cloudevents+json"
    assert standardwebhooks.Webhook(WHSEC).verify(body, h) == EVENT
    assert verify(body, WHSEC.encode(), headers)
    # The deprecated 0.1 headers still ride along, and still verify (with a warning).
    assert h[DELIVERY_HEADER.lower()] == "k1"
    with pytest.deprecated_call():
        assert verify(body, WHSEC.encode(), h[SIGNATURE_HEADER.lower()])


def test_rotation_signs_with_every_secret_and_either_receiver_accepts() -> None:
    old, new = b"old-secret-still-deployed", WHSEC.encode()
    body = b'{"id":"k2"}'
    headers = delivery_headers("k2", body, [old, new])
    assert len(headers["webhook-signature"].split()) == 2
    # A receiver that has only the old secret, only the new one, or both: all accept.
    assert standardwebhooks.Webhook(old).verify(body, headers) is not None
    assert standardwebhooks.Webhook(WHSEC).verify(body, headers) is not None
    assert verify(body, old, headers) and verify(body, new, headers)
    assert verify(body, [b"unrelated", new], headers)
    assert not verify(body, b"unrelated", headers)
    # Deprecated header: signed with the primary (first) secret only.
    assert headers[SIGNATURE_HEADER] == sign(body, old)


def test_old_future_tampered_and_replayed_deliveries_are_refused() -> None:
    body, ts = b'{"id":"k3"}', 1_700_000_000
    headers = delivery_headers("k3", body, [RAW_SECRET], timestamp=ts)
    assert verify(body, RAW_SECRET, headers, now=ts + 299)
    assert not verify(body, RAW_SECRET, headers, now=ts + 301)  # captured and replayed later
    assert not verify(body, RAW_SECRET, headers, now=ts - 301)  # from the future
    assert verify(body, RAW_SECRET, headers, now=ts + 1000, tolerance_seconds=1200)
    # The reference library agrees on the window (it reads the real clock).
    fresh = delivery_headers("k3", body, [RAW_SECRET])
    stale = delivery_headers("k3", body, [RAW_SECRET], timestamp=int(time.time()) - 600)
    ref = standardwebhooks.Webhook(RAW_SECRET)
    assert ref.verify(body, fresh) is not None
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        ref.verify(body, stale)
    # Changing the body, the id or the timestamp breaks the signature.
    for b, h in [(body + b" ", headers), (body, {**headers, "webhook-id": "k4"}),
                 (body, {**headers, "webhook-timestamp": str(ts + 1)})]:
        with pytest.raises(InvalidDelivery, match="no webhook-signature matches"):
            check_delivery(b, RAW_SECRET, h, now=ts)
    # Inside the window, a guard refuses the second arrival of the same id.
    guard = ReplayGuard()
    assert check_delivery(body, RAW_SECRET, headers, now=ts + 5, seen=guard) == "k3"
    with pytest.raises(InvalidDelivery, match="accepted before"):
        check_delivery(body, RAW_SECRET, headers, now=ts + 6, seen=guard)
    # A forged delivery never reaches the guard, so it cannot block the real one.
    guard2 = ReplayGuard()
    assert not verify(body, b"forger", headers, now=ts, seen=guard2)
    assert verify(body, RAW_SECRET, headers, now=ts, seen=guard2)


def test_bad_headers_are_named() -> None:
    body = b"{}"
    good = delivery_headers("k5", body, [RAW_SECRET], timestamp=100)
    cases: list[tuple[dict[str, str], str]] = [
        ({k: v for k, v in good.items() if k != "webhook-timestamp"}, "webhook-timestamp header"),
        ({**good, "webhook-timestamp": "yesterday"}, "not Unix seconds"),
        ({**good, "webhook-signature": "v2,abc sha256=def"}, "no v1 signature"),
        ({**good, "webhook-signature": "v1," + "A" * 5000}, "longer than 4096"),
    ]
    for headers, message in cases:
        with pytest.raises(InvalidDelivery, match=message):
            check_delivery(body, RAW_SECRET, headers, now=100)
    upper = {k.upper(): v for k, v in good.items()}  # header names are case-insensitive
    assert verify(body, RAW_SECRET, upper, now=100)
    message = HTTPMessage()  # what http.server hands a handler as self.headers (README example)
    for k, v in good.items():
        message[k.title()] = v
    assert verify(body, RAW_SECRET, message, now=100)  # type: ignore[arg-type]


def test_replay_guard_is_bounded() -> None:
    guard = ReplayGuard(tolerance_seconds=10, max_ids=3)
    assert all(guard.first_time(f"m{i}", now=0.0) for i in range(5))
    assert len(guard._ids) == 3 and guard.first_time("m0", now=0.0)  # oldest forgotten
    assert not guard.first_time("m4", now=1.0)
    assert guard.first_time("m4", now=25.0)  # older than twice the tolerance


class _Flaky:
    """A receiver that answers 503 to the first POST, then 200: records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(_lower(dict(self.headers)))
                self.send_response(503 if len(outer.requests) == 1 else 200)
                self.end_headers()
                if len(outer.requests) > 1:
                    outer.done.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def flaky() -> Iterator[_Flaky]:
    f = _Flaky()
    yield f
    f.server.shutdown()
    f.server.server_close()


def test_a_retry_keeps_the_id_and_is_signed_afresh(flaky: _Flaky) -> None:
    clock = iter([1_700_000_000, 1_700_000_040])  # the retry goes out 40 s later
    d = WebhookDispatcher([Webhook(flaky.url, RAW_SECRET)], backoff_seconds=0.01,
                          clock=lambda: next(clock))
    d.submit("k6", EVENT)
    assert flaky.done.wait(10)
    d.close()
    first, retry = flaky.requests
    assert first["webhook-id"] == retry["webhook-id"] == "k6"
    assert (first["webhook-timestamp"], retry["webhook-timestamp"]) == ("1700000000", "1700000040")
    assert first["webhook-signature"] != retry["webhook-signature"]


def test_config_rotation_needs_a_primary_and_bad_whsec_is_named(monkeypatch, tmp_path) -> None:
    with pytest.raises(ValueError, match="set 'secret' too"):
        Config.model_validate({"alerts": {"webhooks": [
            {"url": "http://127.0.0.1:1/", "extra_secrets": [{"env": "X"}]}]}})
    with pytest.raises(ValueError, match=r"webhook http://h/: .*base64"):
        Webhook("http://h/", b"whsec_not*base64!")
    monkeypatch.setenv("REPWATCH_T_OLD", "old")
    monkeypatch.setenv("REPWATCH_T_NEW", "new")
    from prometheus_client import CollectorRegistry

    from monitor.alerting import Alerter
    from monitor.sinks import AlertLedger
    from monitor.telemetry import MonitorMetrics

    cfg = Config.model_validate({"alerts": {"webhooks": [
        {"url": "http://127.0.0.1:1/", "secret": {"env": "REPWATCH_T_OLD"},
         "extra_secrets": [{"env": "REPWATCH_T_NEW"}]}]}})
    alerter = Alerter(cfg, AlertLedger(tmp_path), MonitorMetrics(CollectorRegistry()))
    alerter.start(producer=None)  # type: ignore[arg-type]
    assert alerter.webhooks is not None
    assert alerter.webhooks.webhooks[0].secrets == (b"old", b"new")
    alerter.close(0.1)
