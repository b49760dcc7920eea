"""``repwatch demo``: the most complete real flow that exists, on one machine, in one command.

Starts the local stack on loopback (Tansu broker, Prometheus), produces records through the real
broker, consumes them in a consumer group, exports metrics that Prometheus scrapes, and prints
a PromQL answer. Everything is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
import urllib.request
from typing import Any

import numpy as np


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on a local stack (loopback only)")
    p.add_argument("--records", type=int, default=2000, help="records to stream (default 2000)")
    p.set_defaults(func=run)


def _promql(url: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        return json.load(resp)["data"]["result"]  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, KafkaProducer
    from prometheus_client import CollectorRegistry, Counter

    from monitor import localstack
    from monitor import records as R
    from monitor.metrics import serve_metrics

    registry = CollectorRegistry()
    processed = Counter(
        "repwatch_records_processed",
        "Records decoded by the monitor.",
        ["model", "kind"],
        registry=registry,
    )
    dead = Counter(
        "repwatch_dlq_records", "Records that failed to decode.", ["reason"], registry=registry
    )
    metrics = serve_metrics(registry)
    with (
        localstack.running(localstack.start_tansu()) as broker,
        localstack.running(localstack.start_prometheus([f"127.0.0.1:{metrics.port}"])) as prom,
    ):
        print(f"broker {broker.address}, prometheus {prom.url}, metrics :{metrics.port}")
        rng = np.random.default_rng(0)
        producer = KafkaProducer(bootstrap_servers=broker.address, linger_ms=10)
        for i in range(args.records):
            emb = rng.normal(size=64).astype(np.float32)
            rec = R.Record(
                model="digits",
                record_id=str(i),
                timestamp_ms=int(time.time() * 1000),
                embedding=emb,
            )
            producer.send("repwatch.records", key=b"digits", value=R.encode(rec))
        producer.send("repwatch.records", key=b"digits", value=b"not a record")
        producer.flush(30)
        producer.close()
        consumer = KafkaConsumer(
            "repwatch.records",
            bootstrap_servers=broker.address,
            group_id="repwatch-demo",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        seen, deadline = 0, time.monotonic() + 60
        while seen < args.records + 1 and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                batch = R.decode_many([m.value for m in msgs])
                seen += len(msgs)
                for r in batch.records:
                    processed.labels(r.model, r.kind).inc()
                for _, err in batch.errors:
                    dead.labels(err.field).inc()
            consumer.commit()
        consumer.close()
        print(f"consumed {seen} messages")
        deadline = time.monotonic() + 20
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = _promql(prom.url, "sum by (model) (repwatch_records_processed_total)")
            if result and float(result[0]["value"][1]) >= args.records:
                break
            time.sleep(0.5)
        print(
            "PromQL sum by (model) (repwatch_records_processed_total) ->",
            [(r["metric"], r["value"][1]) for r in result],
        )
        print(
            "PromQL repwatch_dlq_records_total ->",
            [(r["metric"], r["value"][1]) for r in _promql(prom.url, "repwatch_dlq_records_total")],
        )
    metrics.close()
    return 0
