"""End to end on the real broker: clean traffic, then a shift → one drift alert on the alerts
topic, on a signed webhook, and in Prometheus; poison pills land in the dead-letter topic."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

from monitor import localstack
from monitor import records as R
from monitor.alerts import verify
from monitor.metrics import serve_metrics

pytestmark = pytest.mark.integration
SECRET = "s3cret-for-tests"


def _query(prom: localstack.Service, promql: str) -> list[dict]:
    url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]["result"]  # type: ignore[no-any-return]


def _lag(worker) -> float | None:
    """Consumer lag of the partition that holds the model (the one with a position)."""
    for (topic, part) in worker.positions:
        value = worker.registry.get_sample_value(
            "repwatch_consumer_lag_records", {"topic": topic, "partition": str(part)})
        if value is not None:
            return value
    return None


def test_clean_then_shift_alerts_on_kafka_webhook_and_prometheus(
    mon, webhook_receiver, prometheus, monkeypatch
) -> None:
    monkeypatch.setenv("REPWATCH_TEST_WEBHOOK_SECRET", SECRET)
    detectors = [
        {"name": "drift.mmd", "params": {"n_permutations": 100, "seed": 0},
         "window": {"kind": "count", "size": 300, "min_records": 50}, "severity": "critical"},
        {"name": "ood.knn", "params": {"k": 10, "fpr": 0.01, "normalize": False},
         "window": {"kind": "count", "size": 300}, "min_flagged_fraction": 0.2},
    ]
    config = mon.config(detectors, webhooks=[
        {"url": webhook_receiver.url, "secret": {"env": "REPWATCH_TEST_WEBHOOK_SECRET"}}
    ])
    worker = mon.worker(config)
    server = serve_metrics(worker.registry)
    localstack.set_scrape_targets(prometheus, [f"127.0.0.1:{server.port}"])
    try:
        clean = mon.make("digits", 600)
        shifted = mon.make("digits", 600, shift=1.5, start=600)
        mon.produce(clean)
        mon.run_until(worker, lambda: worker.processed >= 600)
        assert webhook_receiver.requests == []  # two clean windows: no alert
        mon.produce(shifted)
        mon.run_until(worker, lambda: worker.processed >= 1200)
        got = webhook_receiver.wait_for(2, timeout=15)
        # One drift alert (onset of the episode: windows 3 and 4 both drift) and one OOD alert.
        by_type = {e["type"]: e for e in got}
        assert sorted(by_type) == ["io.repwatch.alert.drift", "io.repwatch.alert.ood"], got
        drift = by_type["io.repwatch.alert.drift"]
        assert drift["specversion"] == "1.0" and drift["subject"] == "digits"
        assert drift["source"] == "repwatch/test"
        data = drift["data"]
        assert data["detector"] == "drift.mmd" and data["severity"] == "critical"
        assert data["window"]["start"] == 600 and data["window"]["end"] == 900
        assert data["p_value"] <= 0.05 and data["statistic"] > data["threshold"]
        assert len(data["evidence"]["record_ids"]) == 10
        shifted_ids = {r.record_id for r in shifted}
        assert set(data["evidence"]["record_ids"]) <= shifted_ids
        # The webhook delivery is signed with the configured secret (Standard Webhooks).
        headers, body = next((h, b) for h, b in webhook_receiver.requests
                             if json.loads(b)["id"] == drift["id"])
        assert verify(body, SECRET.encode(), headers)
        # The same events are on the alerts topic, keyed by model.
        on_topic = mon.read(mon.alerts_topic, 2)
        assert {json.loads(m.value)["id"] for m in on_topic} == {e["id"] for e in got}
        assert all(m.key == b"digits" for m in on_topic)
        # Prometheus scraped the drift decision.
        deadline = time.monotonic() + 20
        result: list[dict] = []
        while time.monotonic() < deadline and not result:
            result = _query(prometheus, 'repwatch_drift_detected{model="digits"} == 1')
            time.sleep(0.3)
        assert result and result[0]["metric"]["detector"] == "drift.mmd"
        alerts = _query(prometheus, 'repwatch_alerts_total{model="digits",type="drift"}')
        assert alerts and float(alerts[0]["value"][1]) == 1.0
        processed = _query(prometheus, 'sum(repwatch_records_processed_total{model="digits"})')
        assert float(processed[0]["value"][1]) == 1200.0
        mon.run_until(worker, lambda: _lag(worker) is not None)  # lag is sampled every 1 s
        assert _lag(worker) == 0.0  # caught up on the partition that holds "digits"
    finally:
        localstack.set_scrape_targets(prometheus, [])
        worker.close()
        server.close()


def test_poison_pills_go_to_the_dead_letter_topic_with_a_reason(mon) -> None:
    config = mon.config(unknown_models="dlq")
    worker = mon.worker(config)
    good = mon.make("digits", 20)
    nan = mon.make("digits", 1, start=20)[0]
    nan_bytes = bytearray(R.encode(R.Record(**{**nan.__dict__, "embedding": np.ones(16, "f4")})))
    one = np.float32(1.0).tobytes()
    nan_bytes[nan_bytes.index(one):nan_bytes.index(one) + 4] = np.float32("nan").tobytes()
    pills = [
        (b"digits", b"\xc1 not msgpack"),
        (b"digits", bytes(nan_bytes)),
        (b"digits", R.encode(mon.make("digits", 1, start=21, dim=8)[0])),  # dimension change
        (b"other", R.encode(mon.make("other", 1, start=22)[0])),  # unknown model
    ]
    try:
        mon.produce(good[:10])
        mon.produce(pills)
        mon.produce(good[10:])
        mon.run_until(worker, lambda: worker.processed >= 24)
        worker.checkpoint_and_commit()
        dlq = mon.read(mon.dlq_topic, 4)
        reasons = sorted(dict(m.headers)["repwatch-error-reason"].decode() for m in dlq)
        assert reasons == ["decode", "decode", "dimension", "unknown_model"]
        messages = [dict(m.headers)["repwatch-error"].decode() for m in dlq]
        assert any("NaN" in s for s in messages)
        assert any("embedding has 8 dims, model 'digits' version '1' expects 16" in s
                   for s in messages)
        assert {m.value for m in dlq} == {v for _, v in pills}  # the original bytes
        assert worker.metrics.records.labels("digits", "1", "inference")._value.get() == 20
    finally:
        worker.close()
