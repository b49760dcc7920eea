"""The real services the platform runs on: Tansu (Kafka protocol) and Prometheus."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry, Counter

from monitor import localstack
from monitor import records as R
from monitor.metrics import serve_metrics

pytestmark = pytest.mark.integration


def _records(n: int, model: str) -> list[R.Record]:
    rng = np.random.default_rng(0)
    return [
        R.Record(
            model=model,
            record_id=f"r{i}",
            timestamp_ms=1000 + i,
            embedding=rng.normal(size=16).astype(np.float32),
        )
        for i in range(n)
    ]


def test_records_through_a_consumer_group_with_committed_offsets(
    kafka_broker, consumer_timeouts
) -> None:
    topic = f"repwatch.records.{uuid.uuid4().hex[:8]}"
    group = f"g-{uuid.uuid4().hex[:8]}"
    sent = _records(50, "digits")
    producer = KafkaProducer(bootstrap_servers=kafka_broker.address, compression_type="gzip")
    for rec in sent:
        producer.send(topic, key=rec.model.encode(), value=R.encode(rec))
    producer.flush(10)
    producer.close()

    def consume(expected: int, committed_after: int) -> list[R.Record]:
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.address,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **consumer_timeouts,
        )
        got: list[R.Record] = []
        deadline = time.monotonic() + 30
        while len(got) < expected and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                got.extend(R.decode(m.value) for m in msgs)
        consumer.commit()
        # Auto-created topics have several partitions; one key lands in exactly one of them.
        committed = sum(consumer.committed(tp) or 0 for tp in consumer.assignment())
        consumer.close()
        assert committed == committed_after
        return got

    first = consume(50, committed_after=50)
    assert first == sent  # one key, one partition: order is kept
    # A new consumer in the same group resumes after the committed offset: nothing is re-read.
    producer = KafkaProducer(bootstrap_servers=kafka_broker.address)
    extra = _records(1, "digits")[0]
    producer.send(
        topic, key=b"digits", value=R.encode(R.Record(**{**extra.__dict__, "record_id": "late"}))
    )
    producer.flush(10)
    producer.close()
    second = consume(1, committed_after=51)
    assert [r.record_id for r in second] == ["late"]


def _query(prom: localstack.Service, promql: str) -> list[dict]:
    url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success"
    return body["data"]["result"]


def test_prometheus_scrapes_a_repwatch_metrics_endpoint(prometheus) -> None:
    registry = CollectorRegistry()
    counter = Counter(
        "repwatch_records_processed", "Records processed.", ["model", "kind"], registry=registry
    )
    counter.labels("digits", "inference").inc(42)
    server = serve_metrics(registry)
    try:
        localstack.set_scrape_targets(prometheus, [f"127.0.0.1:{server.port}"])
        deadline = time.monotonic() + 20
        result: list[dict] = []
        while time.monotonic() < deadline and not result:
            result = _query(prometheus, 'repwatch_records_processed_total{model="digits"}')
            time.sleep(0.2)
        assert result, "Prometheus never scraped the repwatch endpoint"
        assert float(result[0]["value"][1]) == 42.0
        assert result[0]["metric"]["kind"] == "inference"
    finally:
        localstack.set_scrape_targets(prometheus, [])
        server.close()


def test_alertmanager_delivers_to_a_webhook(alertmanager, alertmanager_receiver) -> None:
    # The receiver is shared by the session: look only at what arrives after this POST.
    before = len(alertmanager_receiver.requests)
    alert = [
        {
            "labels": {"alertname": "RepwatchTest", "model": "digits"},
            "annotations": {"summary": "test"},
        }
    ]
    req = urllib.request.Request(
        f"{alertmanager.url}/api/v2/alerts",
        data=json.dumps(alert).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 15
    names: list[str] = []
    while "RepwatchTest" not in names and time.monotonic() < deadline:
        got = alertmanager_receiver.wait_for(before + 1, timeout=1)
        names = [a["labels"]["alertname"] for msg in got[before:] for a in msg["alerts"]]
    assert "RepwatchTest" in names
