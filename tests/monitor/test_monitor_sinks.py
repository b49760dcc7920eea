"""Alert ledger (dedupe + outbox), webhook delivery, and the admin API — no Kafka needed."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from monitor import localstack
from monitor.alerts import WEBHOOK_ID_HEADER, verify
from monitor.config import Config
from monitor.sinks import AlertLedger, Webhook, WebhookDispatcher

EVENT = {"specversion": "1.0", "id": "k1", "type": "io.repwatch.alert.drift", "data": {"x": 1}}


def test_ledger_claims_once_and_tracks_pending_sinks(tmp_path: Path) -> None:
    ledger = AlertLedger(tmp_path)
    assert ledger.claim("k1", EVENT, ["kafka", "webhook:u"])
    assert not AlertLedger(tmp_path).claim("k1", EVENT, ["kafka"])  # another worker/restart
    ledger.delivered("k1", "kafka")
    assert ledger.pending() == [("k1", EVENT, ["webhook:u"])]
    ledger.delivered("k1", "webhook:u")
    assert ledger.pending() == [] and "k1" in ledger


def test_webhook_is_signed_and_carries_the_delivery_key(webhook_receiver) -> None:
    results: list[tuple[str, str, str]] = []
    d = WebhookDispatcher([Webhook(webhook_receiver.url, b"topsecret")],
                          lambda *r: results.append(r))
    d.submit("k1", EVENT)
    assert webhook_receiver.wait_for(1, 10) == [EVENT]
    headers, body = webhook_receiver.requests[0]
    assert verify(body, b"topsecret", headers)
    assert {k.lower(): v for k, v in headers.items()}[WEBHOOK_ID_HEADER] == "k1"
    assert headers["Content-Type"] == "application/cloudevents+json"
    d.close()
    assert results == [("k1", f"webhook:{webhook_receiver.url}", "delivered")]


def test_unreachable_webhook_never_blocks_and_gives_up_at_its_deadline() -> None:
    dead = f"http://127.0.0.1:{localstack.free_port()}/"  # nothing listens there
    results: list[tuple[str, str, str]] = []
    done = threading.Event()
    d = WebhookDispatcher(
        [Webhook(dead, None, timeout_seconds=0.2, max_retries=50, deadline_seconds=1.0)],
        lambda *r: (results.append(r), done.set()), backoff_seconds=0.05,
    )
    t0 = time.perf_counter()
    for i in range(100):
        d.submit(f"k{i}", EVENT)
    assert time.perf_counter() - t0 < 0.1  # submit only queues
    assert done.wait(5.0)
    assert results[0][2] == "failed"
    d.close(timeout=0.5)


@pytest.fixture
def worker(tmp_path: Path):
    from monitor.runtime import Worker

    ref = tmp_path / "ref.npy"
    np.save(ref, np.random.default_rng(0).normal(size=(200, 4)))
    cfg = Config.model_validate({
        "models": [{"name": "digits", "reference": str(ref),
                    "detectors": [{"name": "drift.ks"}]}],
        "monitor": {"checkpoint_dir": str(tmp_path / "state")},
    })
    w = Worker(cfg)
    stop = threading.Event()

    def loop() -> None:  # stands in for the consumer loop: applies admin commands
        while not stop.is_set():
            w._run_commands()
            time.sleep(0.01)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield w
    stop.set()
    t.join(2)


def _post(url: str, token: str | None, body: dict) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_admin_replaces_a_reference_only_with_the_token_and_logs_it(
    worker, tmp_path: Path, caplog
) -> None:
    from monitor.admin import AdminServer
    from monitor.checkpoint import ReferenceOverrides

    new = tmp_path / "new.npy"
    np.save(new, np.random.default_rng(1).normal(3.0, 1.0, size=(300, 4)))
    admin = AdminServer(worker, b"tok3n")
    url = f"http://127.0.0.1:{admin.port}/v1/models/digits/reference"
    caplog.set_level(logging.WARNING)
    try:
        assert _post(url, None, {"path": str(new)})[0] == 401
        assert _post(url, "wrong", {"path": str(new)})[0] == 401
        assert worker.references["digits"].rows == 200
        assert _post(url.replace("digits", "nope"), "tok3n", {"path": str(new)})[0] == 404
        code, body = _post(url, "tok3n", {"path": str(new)})
        assert code == 200 and body["rows"] == 300
    finally:
        admin.close()
    assert worker.references["digits"].rows == 300
    assert worker.metrics.reference_replaced.labels("digits")._value.get() == 1
    assert ReferenceOverrides(tmp_path / "state").read()["digits"]["path"] == str(new)
    logs = [r.getMessage() for r in caplog.records]
    assert sum("refused" in m for m in logs) == 2
    assert any("reference of model 'digits' replaced" in m for m in logs)
