"""``/v1/records``, ``/v1/feedback`` (joined by record id), a separate SSL encoder, and the
queue/stream mechanics (drop-oldest, back-pressure, shutdown flush) with a stand-in producer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import Config
from monitor.records import decode
from serving.app import create_app
from serving.metrics import ServingMetrics
from serving.stream import RecordQueue, RecordStream

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)


@pytest.fixture
def client(tiny_models: dict[str, Path], capture: Any) -> Iterator[TestClient]:
    config = Config.model_validate(
        {
            "models": [
                {"name": "tiny", "path": str(tiny_models["model"])},
                {
                    "name": "enc",
                    "path": str(tiny_models["model"]),
                    "encoder_path": str(tiny_models["encoder"]),
                },
                {"name": "external", "embedding_dim": 3},
            ]
        }
    )
    with TestClient(create_app(config, producer_factory=capture)) as c:
        yield c


def infer(client: TestClient, model: str, x: np.ndarray = X) -> str:
    req = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }
    r = client.post(f"/v2/models/{model}/infer", json=req)
    assert r.status_code == 200, r.text
    return str(r.headers["x-repwatch-record-id"])


def test_separate_encoder_embeds_off_the_request_path(
    client: TestClient, capture: Any, tiny_expected: Any
) -> None:
    rid = infer(client, "enc")
    rec = decode(capture.wait(1)[0][2])
    assert rec.record_id == rid and rec.model == "enc"
    np.testing.assert_allclose(rec.embedding, tiny_expected[1](X)[0], rtol=1e-5, atol=1e-6)
    assert rec.input_digest is not None and len(rec.input_digest) == 16


def test_post_records_json_and_msgpack(client: TestClient, capture: Any) -> None:
    r = client.post(
        "/v1/records",
        json={
            "model": "external",
            "records": [
                {"embedding": [0.1, 0.2, 0.3], "id": "a1", "prediction": 2, "timestamp_ms": 1234},
                {"embedding": [1, 2, 3], "client_id": "carol"},
            ],
        },
    )
    assert r.status_code == 202 and r.json()["accepted"] == 2 and r.json()["ids"][0] == "a1"
    body = msgpack.packb(
        {"model": "external", "records": [{"embedding": np.ones(3, "<f4").tobytes(), "id": "b"}]}
    )
    r = client.post("/v1/records", content=body, headers={"Content-Type": "application/msgpack"})
    assert r.status_code == 202, r.text
    records = {rec.record_id: rec for rec in (decode(v) for _, _, v in capture.wait(3))}
    assert records["a1"].timestamp_ms == 1234 and records["a1"].prediction == 2
    np.testing.assert_allclose(records["a1"].embedding, [0.1, 0.2, 0.3], rtol=1e-6)
    other = next(rec for rid, rec in records.items() if rid not in ("a1", "b"))
    assert other.client_id and "carol" not in other.client_id
    np.testing.assert_array_equal(records["b"].embedding, np.ones(3, np.float32))


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "ghost", "records": [{"embedding": [1]}]}, 404, "unknown model 'ghost'"),
        (
            {"model": "external", "records": [{"embedding": [1, 2]}]},
            400,
            "has 2 dims, the model expects 3",
        ),
        (
            {"model": "external", "records": [{"embedding": [1, "x", 3]}]},
            400,
            "not a list of numbers",
        ),
        ({"model": "external", "records": []}, 400, "non-empty 'records' list"),
        ({"records": []}, 400, "needs a string 'model'"),
        ({"model": "tiny", "records": [{"embedding": [0] * 4}]}, 400, "expects 5"),
    ],
)
def test_post_records_errors(
    client: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    r = client.post("/v1/records", json=body)
    assert r.status_code == status and fragment in r.json()["error"], r.text


def test_malformed_records_body(client: TestClient) -> None:
    body = b'{"model": "external", "records": [{"embedding": [1, NaN, 3]}]}'
    r = client.post("/v1/records", content=body)
    assert r.status_code == 400 and "contains NaN or inf" in r.json()["error"]
    r = client.post("/v1/records", content=b"{oops")
    assert r.status_code == 400 and "malformed JSON body" in r.json()["error"]


def test_feedback_joins_by_record_id(client: TestClient, capture: Any, tiny_expected: Any) -> None:
    rid = infer(client, "tiny")
    r = client.post("/v1/feedback", json={"model": "tiny", "feedback": [{"id": rid, "label": 5}]})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    client.post(
        "/v1/feedback", json={"model": "tiny", "feedback": [{"id": "never-seen", "label": 1}]}
    )
    client.post(
        "/v1/feedback",
        json={
            "model": "external",
            "feedback": [{"id": "old", "label": "cat", "embedding": [1, 2, 3]}],
        },
    )
    msgs = capture.wait(3)
    time.sleep(0.1)
    records = [decode(v) for _, _, v in capture.messages]
    assert len(records) == 3
    inference, feedback, explicit = records
    assert feedback.kind == "feedback" and feedback.record_id == rid and feedback.label == 5
    np.testing.assert_array_equal(feedback.embedding, inference.embedding)
    assert explicit.kind == "feedback" and explicit.label == "cat"
    text = client.get("/metrics").text
    assert 'repwatch_serving_records_dropped_total{reason="unjoined_feedback"} 1.0' in text
    assert len(msgs) == 3


def test_feedback_errors(client: TestClient) -> None:
    r = client.post("/v1/feedback", json={"model": "tiny", "feedback": [{"id": "x"}]})
    assert r.status_code == 400 and "label must be a number or a string" in r.json()["error"]
    r = client.post("/v1/feedback", json={"model": "tiny", "feedback": [{"label": 1}]})
    assert r.status_code == 400 and "id must be the record id" in r.json()["error"]


# ---- queue and stream mechanics ------------------------------------------------------------
def test_queue_drops_oldest_and_counts() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    q = RecordQueue(5, metrics)
    for i in range(8):
        q.put(i)
    q.put("pair", 2)
    assert len(q) == 5
    assert q.take(100, 0) == [5, 6, 7, "pair"]
    assert metrics.records_dropped.labels("queue_full")._value.get() == 5
    assert metrics.queue_depth._value.get() == 0


class SlowProducer:
    """Acknowledges only when released: a broker that is slow to answer."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.sent = 0

    def __call__(self) -> SlowProducer:
        return self

    def send(self, topic: str, key: bytes, value: bytes) -> Any:
        outer = self

        class F:
            def add_callback(self, fn: Any, *args: Any) -> None:
                outer.pending.append((fn, args))

            def add_errback(self, fn: Any, *args: Any) -> None:
                pass

        self.sent += 1
        return F()

    def release(self) -> None:
        for fn, args in self.pending:
            fn(*args, None)
        self.pending.clear()

    def flush(self, timeout: float | None = None) -> None:
        self.release()

    def close(self, timeout: float | None = None) -> None:
        pass


def test_stalled_broker_keeps_records_in_the_queue_then_recovers() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    q = RecordQueue(100, metrics)
    producer = SlowProducer()
    stream = RecordStream(
        q, lambda items: [("m", b"x") for _ in items], producer, "t", metrics, stall_seconds=0.1
    )
    stream.start()
    try:
        for i in range(10):
            q.put(i)
        time.sleep(0.4)  # all 10 in flight, none acknowledged: the stream is stalled
        for i in range(300):
            q.put(i)
        time.sleep(0.2)
        assert producer.sent == 10 and len(q) == 100
        assert metrics.records_dropped.labels("queue_full")._value.get() == 200
        producer.release()  # the broker answers again
        deadline = time.monotonic() + 5
        while (producer.sent < 110 or producer.pending) and time.monotonic() < deadline:
            producer.release()
            time.sleep(0.02)
        assert producer.sent == 110 and len(q) == 0
    finally:
        stream.close(1.0)
    assert metrics.records_sent.labels("m")._value.get() == 110


def test_shutdown_flushes_within_the_deadline() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    q = RecordQueue(1000, metrics)
    producer = SlowProducer()
    stream = RecordStream(q, lambda items: [("m", b"x") for _ in items], producer, "t", metrics)
    stream.start()
    for i in range(50):
        q.put(i)
    t0 = time.monotonic()
    stream.close(2.0)
    assert time.monotonic() - t0 < 3.0
    assert producer.sent == 50
    assert metrics.records_sent.labels("m")._value.get() == 50
    assert metrics.records_dropped.labels("shutdown")._value.get() == 0


def test_fast_packing_is_byte_equal_to_the_record_codec(
    tiny_models: dict[str, Path], capture: Any
) -> None:
    """The builder's vectorised msgpack path must produce exactly ``monitor.records.encode``."""
    from monitor.records import encode

    config = Config.model_validate(
        {"models": [{"name": "tiny", "path": str(tiny_models["model"])}]}
    )
    with TestClient(create_app(config, producer_factory=capture)) as c:
        x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
        req = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}
            ]
        }
        c.post("/v2/models/tiny/infer", json=req, headers={"X-Client-Id": "dave"})
        msgs = capture.wait(3)
    assert len(msgs) == 3
    for _, _, value in msgs:
        assert encode(decode(value)) == value
