"""Fault injection against the real sidecar process (``repwatch serve``) on the real broker: the
sidecar items of issue 17 (1, 6, 7, 10 and the sidecar side of the 3/7 timestamps).

Each test sends what an attacker or a careless client would and checks that the stream keeps
flowing, the event loop keeps answering, memory comes back and errors are 4xx JSON without
stack traces in the log.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from monitor import localstack
from tests.conftest import read_topic
from tests.faults.conftest import SidecarProcess, metric

pytestmark = pytest.mark.integration

Sidecar = Callable[..., SidecarProcess]
INFER = "/v2/models/digits/infer"


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 16, size=(n, 64)).astype(np.float32)


def binary_infer(url: str, x: np.ndarray, timeout: float = 120) -> httpx.Response:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return httpx.post(
        url + INFER,
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
        timeout=timeout,
    )


def post_records(url: str, ids: list[str], **fields: Any) -> httpx.Response:
    emb = [0.5] * 32
    recs = [{"embedding": emb, "id": i, **fields} for i in ids]
    return httpx.post(f"{url}/v1/records", json={"model": "digits", "records": recs}, timeout=30)


def wait_ids(address: str, topic: str, ids: set[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    got: set[str] = set()
    while time.monotonic() < deadline and not ids <= got:
        got = {r.record_id for r in read_topic(address, topic, len(ids), 3)}
    return got & ids


def json_error(r: httpx.Response, *statuses: int) -> str:
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    return str(r.json()["error"])


# ---- item 1: one record must not stop the record stream ---------------------------------
def test_item1_oversized_fields_refused_at_intake(
    kafka_broker: localstack.Service, sidecar: Sidecar
) -> None:
    side = sidecar(kafka_broker.address, "faults.item1.intake")
    big = "x" * 1_100_000
    err = json_error(post_records(side.url, [big]), 413)
    assert "records[0].id is over 256 bytes (serving.limits.max_id_bytes)" in err
    r = httpx.post(
        f"{side.url}/v1/records",
        timeout=30,
        json={"model": "digits", "records": [{"embedding": [0.5] * 32, "prediction": big}]},
    )
    assert "max_prediction_bytes" in json_error(r, 413)
    # Issue 17 item 6's request: refused at once by the row limit, not run for 16-28 s.
    t0 = time.perf_counter()
    r = binary_infer(side.url, rows(65_520))
    assert "65520 rows, over the limit of 4096" in json_error(r, 413)
    assert time.perf_counter() - t0 < 5
    ids = [f"after-{i}" for i in range(200)]
    assert post_records(side.url, ids).status_code == 202
    got = wait_ids(kafka_broker.address, "faults.item1.intake", set(ids), 30)
    assert len(got) == 200
    assert metric(side.url, "repwatch_serving_rejected_total", reason="field_size") == 2


@pytest.mark.parametrize("kafka_client", ["confluent", "kafka-python"])
def test_item1_record_refused_by_the_producer_is_dropped_not_requeued(
    kafka_broker: localstack.Service, sidecar: Sidecar, kafka_client: str
) -> None:
    """Intake bounds loosened past the producer's maximum request size: the producer refuses the
    record; it is dropped and counted, and the next 200 records are all sent."""
    topic = f"faults.item1.producer.{kafka_client}"
    side = sidecar(
        kafka_broker.address,
        topic,
        kafka_client=kafka_client,
        limits={"max_id_bytes": 2_000_000, "max_record_bytes": 3_000_000},
    )
    assert post_records(side.url, ["y" * 1_100_000]).status_code == 202
    ids = [f"next-{i}" for i in range(200)]
    for start in range(0, 200, 50):
        assert post_records(side.url, ids[start : start + 50]).status_code == 202
    got = wait_ids(kafka_broker.address, topic, set(ids), 30)
    assert len(got) == 200, f"{len(got)} of the next 200 records were sent"
    assert metric(side.url, "repwatch_serving_records_dropped_total", reason="too_large") == 1
    assert metric(side.url, "repwatch_serving_records_sent_total", model="digits") == 200


@pytest.mark.parametrize(
    "recover", [False, pytest.param(True, marks=pytest.mark.slow, id="recover")]
)
def test_item1_readiness_reports_a_stream_that_does_not_deliver(
    sidecar: Sidecar, recover: bool
) -> None:
    """Degraded in readiness detail and the gauge while the broker is gone; with ``recover``
    (slow: in-flight records first wait out the 30 s delivery timeout), ok again after."""
    broker = localstack.start_tansu()
    try:
        side = sidecar(broker.address, "faults.item1.ready", stream_stall_seconds=1.0)
        x = rows(1)
        assert binary_infer(side.url, x).status_code == 200
        assert len(read_topic(broker.address, "faults.item1.ready", 1, 20)) == 1
        broker.stop()
        deadline = time.monotonic() + 20
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert binary_infer(side.url, x).status_code == 200  # predictions never fail
            r = httpx.get(f"{side.url}/v2/health/ready", timeout=5)
            assert r.status_code == 200
            doc = r.json()
            if doc["stream"]["state"] == "degraded":
                break
            time.sleep(0.2)
        assert doc["stream"]["state"] == "degraded", doc
        assert doc["stream"]["waiting_records"] > 0
        assert doc["stream"]["seconds_without_delivery"] > 1.0
        assert metric(side.url, "repwatch_serving_record_stream_degraded") == 1
        if not recover:
            return
        restarted = localstack.start_tansu(port=broker.port, workdir=broker.workdir)
        broker.proc = restarted.proc
        # Back to ok once records are delivered again (the producer rebuilds itself against a
        # broker restarted with empty storage; that can take tens of seconds on a busy machine).
        sent = metric(side.url, "repwatch_serving_records_sent_total", model="digits")
        t0 = time.monotonic()
        state = "degraded"
        while time.monotonic() < t0 + 90 and state != "ok":
            binary_infer(side.url, x)
            time.sleep(0.5)
            state = httpx.get(f"{side.url}/v2/health/ready", timeout=5).json()["stream"]["state"]
        after = metric(side.url, "repwatch_serving_records_sent_total", model="digits")
        print(f"item 1: stream back to {state} {time.monotonic() - t0:.1f} s after the restart")
        assert state == "ok" and after > sent, (state, sent, after)
    finally:
        broker.stop()


# ---- item 6: a big request neither blocks the loop nor keeps its memory -----------------
def test_item6_big_batch_off_the_loop_and_memory_returned(
    kafka_broker: localstack.Service, sidecar: Sidecar
) -> None:
    """A 16,384-row request (4x the default row limit; the issue's 65,520 rows run past the
    30 s request timeout on these 2 shared cores), allowed here by raised limits: health probes
    are answered while it runs, and the RSS comes back near its baseline afterwards."""
    topic = "faults.item6"
    side = sidecar(
        kafka_broker.address,
        topic,
        queue_size=20_000,
        max_body_bytes=17 * 1024 * 1024,
        limits={"max_rows": 16_384},
    )
    for i in range(20):
        assert binary_infer(side.url, rows(4, i)).status_code == 200
    time.sleep(1.0)
    baseline = side.rss_mb()
    probes: list[float] = []
    peak = [baseline]
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t0 = time.perf_counter()
                assert c.get(f"{side.url}/v2/health/live").status_code == 200
                probes.append(time.perf_counter() - t0)
                peak[0] = max(peak[0], side.rss_mb())
                time.sleep(0.02)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    big = rows(16_384, 99)
    took = []
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            r = binary_infer(side.url, big)
            took.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text[:300]
    finally:
        stop.set()
        thread.join(30)
    want = 20 * 4 + 2 * 16_384
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if metric(side.url, "repwatch_serving_records_sent_total", model="digits") >= want:
            break
        time.sleep(0.5)
    assert metric(side.url, "repwatch_serving_records_sent_total", model="digits") == want
    time.sleep(2.0)  # release_memory runs at most once a second
    binary_infer(side.url, rows(4))
    after = side.rss_mb()
    print(
        f"item 6: RSS baseline {baseline:.0f} MB, peak {peak[0]:.0f} MB, after {after:.0f} MB; "
        f"big request {max(took):.2f} s; health probe max {max(probes) * 1000:.0f} ms, "
        f"p50 {np.median(probes) * 1000:.1f} ms over {len(probes)} probes"
    )
    assert max(probes) < 1.0, f"a health probe waited {max(probes):.2f} s"
    assert after < baseline + 200, (baseline, peak[0], after)


# ---- item 7: rows over the queue, timestamps that break the encoder ---------------------
def test_item7_rows_over_queue_and_bad_timestamps(
    kafka_broker: localstack.Service, sidecar: Sidecar
) -> None:
    topic = "faults.item7"
    side = sidecar(kafka_broker.address, topic, queue_size=100)
    err = json_error(binary_infer(side.url, rows(101)), 413)
    assert "101 rows, over the limit of 100 per request" in err
    err = json_error(post_records(side.url, [f"q{i}" for i in range(101)]), 413)
    assert "101 rows" in err
    # Timestamps the encoder or the monitor cannot hold are refused at intake (items 3 and 7),
    # while other clients' records, sent at the same time, all arrive.
    ids = [f"other-{i}" for i in range(400)]
    bad_answers: list[int] = []

    def bad() -> None:
        for ts in (10**30, 2**63, 2**64, -1, 2**62):
            for path, body in (
                (
                    "/v1/records",
                    {"model": "digits", "records": [{"embedding": [0.5] * 32, "timestamp_ms": ts}]},
                ),
                (
                    "/v1/feedback",
                    {"model": "digits", "feedback": [{"id": "r", "label": 1, "timestamp_ms": ts}]},
                ),
            ):
                r = httpx.post(side.url + path, json=body, timeout=30)
                bad_answers.append(r.status_code)
                assert "timestamp_ms" in json_error(r, 400)

    thread = threading.Thread(target=bad)
    thread.start()
    for start in range(0, 400, 40):
        assert post_records(side.url, ids[start : start + 40]).status_code == 202
    thread.join(60)
    assert bad_answers == [400] * 10
    got = wait_ids(kafka_broker.address, topic, set(ids), 30)
    assert len(got) == 400, f"{len(got)} of 400 other records arrived"
    assert metric(side.url, "repwatch_serving_records_dropped_total", reason="queue_full") == 0
    assert metric(side.url, "repwatch_serving_records_dropped_total", reason="invalid_record") == 0
    assert metric(side.url, "repwatch_serving_rejected_total", reason="timestamp") == 10


# ---- item 10: slow bodies, stack traces, JSON errors -------------------------------------
def slow_request(url: str, path: str, timeout: float) -> tuple[str, float]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            'Content-Length: 1000\r\n\r\n{"inp'.encode()
        )
        t0 = time.perf_counter()
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        return data.decode("latin-1"), time.perf_counter() - t0


def test_item10_slow_bodies_time_out_and_client_errors_log_no_traces(
    kafka_broker: localstack.Service, sidecar: Sidecar
) -> None:
    side = sidecar(kafka_broker.address, "faults.item10", body_timeout_seconds=1.0)
    for path in (INFER, "/v1/records"):
        answer, took = slow_request(side.url, path, 10)
        assert answer.startswith("HTTP/1.1 408"), (path, answer[:200], took)
        assert took < 4
    assert binary_infer(side.url, rows(1)).status_code == 200
    deep = b'{"inputs": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    bad: list[tuple[str, bytes, dict[str, str]]] = [
        (INFER, deep, {}),
        ("/v1/records", deep, {}),
        ("/v1/feedback", deep, {}),
        (
            INFER,
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [0, 10**30], "data": []}
                    ]
                }
            ).encode(),
            {},
        ),
        (
            INFER,
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1] * 65, "data": [1.0]}
                    ]
                }
            ).encode(),
            {},
        ),
        (
            INFER,
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}
                    ],
                    "parameters": {"class_count": 3},
                }
            ).encode(),
            {},
        ),
        (INFER, b"\x1f\x8b not really gzip", {"Content-Encoding": "gzip"}),
        ("/v1/records", b"\x93\x01", {"Content-Type": "application/msgpack"}),
        ("/v1/records", b'{"model": "digits", "records": [{"embedding": "abc"}]}', {}),
    ]
    for path, body, headers in bad:
        r = httpx.post(side.url + path, content=body, headers=headers, timeout=30)
        json_error(r, 400, 404, 408, 413, 415)
        assert binary_infer(side.url, rows(1)).status_code == 200
    time.sleep(0.5)
    log = side.stderr()
    assert "Traceback" not in log, log[-3000:]
