"""Intake bounds (``serving.limits``): every violation a 4xx naming the field and the limit,
counted by reason; compressed bodies; unknown OIP parameters; the stream never wedges on one
record; readiness detail of a degraded stream."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from monitor.config import Config, ServingLimits
from monitor.records import decode
from serving.app import create_app
from serving.limits import LimitError, check_json_depth, decode_body, json_depth
from serving.metrics import ServingMetrics
from serving.stream import RecordQueue, RecordStream

X = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)


def make(paths: dict[str, Path], capture: Any, **serving: Any) -> TestClient:
    config = Config.model_validate(
        {
            "models": [
                {"name": "tiny", "path": str(paths["model"])},
                {"name": "external", "embedding_dim": 3},
            ],
            "serving": {"intra_op_threads": 1, **serving},
        }
    )
    return TestClient(create_app(config, producer_factory=capture))


@pytest.fixture
def client(tiny_models: dict[str, Path], capture: Any) -> Iterator[TestClient]:
    with make(tiny_models, capture) as c:
        yield c


def infer_doc(x: np.ndarray = X, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        **extra,
    }


def rejected(client: TestClient, reason: str, prom_value: Any) -> float:
    text = client.get("/metrics").text
    return float(prom_value(text, "repwatch_serving_rejected_total", reason=reason))


def error_of(r: Any, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return str(r.json()["error"])


# ---- pure helpers --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, [2, [3]]]}', 4),
        (b'{"s": "[[[[[[[[", "t": [1]}', 2),  # brackets inside strings do not count
        (b'{"s": "a\\"[[[[", "t": [[1]]}', 3),  # nor after an escaped quote
        (b'{"s": "a\\\\", "t": [[[1]]]}', 4),  # an escaped backslash ends before the quote
        (b"1", 0),
    ],
)
def test_json_depth_matches_the_parsed_structure(text: bytes, depth: int) -> None:
    def parsed_depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((parsed_depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((parsed_depth(x) for x in v), default=0)
        return 0

    assert parsed_depth(json.loads(text)) == depth
    assert json_depth(text) == depth


def test_json_depth_limit_names_the_limit() -> None:
    deep = b"[" * 40 + b"]" * 40
    with pytest.raises(LimitError, match=r"nested 40 levels deep, over serving\.limits"):
        check_json_depth(deep, 32)
    check_json_depth(b"[" * 32 + b"]" * 32, 32)


def test_decode_body_gzip_deflate_and_bounds() -> None:
    raw = b'{"x": ' + b"1" * 1000 + b"}"
    assert decode_body(gzip.compress(raw), "gzip", 2000) == raw
    assert decode_body(zlib.compress(raw), "deflate", 2000) == raw
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_body(raw_deflate.compress(raw) + raw_deflate.flush(), "deflate", 2000) == raw
    assert decode_body(raw, "identity", 2000) == raw
    bomb = gzip.compress(b"0" * 10_000_000)  # ~10 KB that inflates to 10 MB
    with pytest.raises(LimitError, match=r"decompresses to over serving\.max_body_bytes") as e:
        decode_body(bomb, "gzip", 1_000_000)
    assert e.value.status == 413
    with pytest.raises(LimitError, match="cannot be decompressed"):
        decode_body(b"not gzip", "gzip", 2000)
    with pytest.raises(LimitError, match="truncated"):
        decode_body(gzip.compress(raw)[:-12], "gzip", 2000)
    with pytest.raises(LimitError, match="'br' is not supported") as e:
        decode_body(raw, "br", 2000)
    assert e.value.status == 415


# ---- infer -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "fragment", "reason"),
    [
        ([0, 10**30], "over serving.limits.max_elements", "elements"),
        ([0, 2**62], "over serving.limits.max_elements", "elements"),
        ([1] * 65, "65 dimensions, over serving.limits.max_rank (8)", "shape"),
        ([4096, 4096], "over serving.limits.max_elements", "elements"),
        ([-1, 4], "non-negative integers", None),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_declared_shapes_are_checked_before_allocating(
    client: TestClient,
    prom_value: Any,
    shape: list[int],
    fragment: str,
    reason: str | None,
    binary: bool,
) -> None:
    spec: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": shape}
    if binary:
        header = json.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": 0}}]})
        r = client.post(
            "/v2/models/tiny/infer",
            content=header.encode(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    else:
        r = client.post("/v2/models/tiny/infer", json={"inputs": [{**spec, "data": []}]})
    assert r.status_code in (400, 413), r.text
    assert fragment in r.json()["error"]
    if reason is not None:
        assert rejected(client, reason, prom_value) == 1
    assert client.post("/v2/models/tiny/infer", json=infer_doc()).status_code == 200


def test_deep_json_is_a_400_naming_the_limit(client: TestClient, prom_value: Any) -> None:
    for depth in (40, 10_000, 100_000):
        body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
        r = client.post("/v2/models/tiny/infer", content=body)
        assert "over serving.limits.max_json_depth (32)" in error_of(r, 400)
        r = client.post("/v1/records", content=body)
        assert "over serving.limits.max_json_depth (32)" in error_of(r, 400)
    assert rejected(client, "json_depth", prom_value) == 6


def test_rows_over_the_limit_are_refused(tiny_models: dict[str, Path], capture: Any) -> None:
    with make(tiny_models, capture, queue_size=50) as c:
        x = np.ones((51, 4), np.float32)
        r = c.post("/v2/models/tiny/infer", json=infer_doc(x))
        assert "51 rows, over the limit of 50 per request" in error_of(r, 413)
        recs = [{"embedding": [1.0, 2.0, 3.0]}] * 51
        r = c.post("/v1/records", json={"model": "external", "records": recs})
        assert "51 rows, over the limit of 50" in error_of(r, 413)
        r = c.post(
            "/v1/feedback", json={"model": "tiny", "feedback": [{"id": "a", "label": 1}] * 51}
        )
        assert "51 rows" in error_of(r, 413)
        # At the limit: accepted, and nothing already queued was evicted for it.
        assert (
            c.post(
                "/v2/models/tiny/infer", json=infer_doc(np.ones((50, 4), np.float32))
            ).status_code
            == 200
        )
        assert len(capture.wait(50)) == 50
        text = c.get("/metrics").text
        assert 'repwatch_serving_records_dropped_total{reason="queue_full"} 0.0' in text


def test_gzip_and_deflate_infer_bodies(client: TestClient, tiny_expected: Any) -> None:
    body = json.dumps(infer_doc()).encode()
    for coding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        r = client.post(
            "/v2/models/tiny/infer", content=packed, headers={"Content-Encoding": coding}
        )
        assert r.status_code == 200, r.text
        logits = np.array(r.json()["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(logits, tiny_expected[0](X)[0].ravel(), rtol=1e-5)
    bomb = gzip.compress(b" " * (17 * 1024 * 1024))
    r = client.post("/v2/models/tiny/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert "decompresses to over serving.max_body_bytes" in error_of(r, 413)
    r = client.post("/v1/records", content=bomb, headers={"Content-Encoding": "gzip"})
    assert "decompresses to over serving.max_body_bytes" in error_of(r, 413)


def test_unknown_parameters_are_refused(client: TestClient) -> None:
    r = client.post("/v2/models/tiny/infer", json=infer_doc(parameters={"class_count": 3}))
    assert "parameters ['class_count'] are not implemented" in error_of(r, 400)
    doc = infer_doc(outputs=[{"name": "logits", "parameters": {"classification": 2}}])
    r = client.post("/v2/models/tiny/infer", json=doc)
    assert "outputs[0] parameters ['classification'] are not implemented" in error_of(r, 400)
    doc = infer_doc()
    doc["inputs"][0]["parameters"] = {"shared_memory_region": "x"}
    r = client.post("/v2/models/tiny/infer", json=doc)
    assert "['shared_memory_region'] are not implemented" in error_of(r, 400)
    ok = infer_doc(parameters={"binary_data_output": False, "timeout": 5_000_000})
    assert client.post("/v2/models/tiny/infer", json=ok).status_code == 200
    r = client.post("/v2/models/tiny/infer", json=infer_doc(parameters={"timeout": -1}))
    assert "parameters.timeout must be a positive number" in error_of(r, 400)


def test_body_read_timeout_is_a_408(tiny_models: dict[str, Path], capture: Any) -> None:
    """A body that stops arriving (slow loris) is answered 408 after body_timeout_seconds."""
    import asyncio

    with make(tiny_models, capture, body_timeout_seconds=0.3) as c:
        app = c.app

        async def call(path: str) -> tuple[int, float]:
            sent: list[dict[str, Any]] = []
            first = True

            async def receive() -> dict[str, Any]:
                nonlocal first
                if first:
                    first = False
                    return {"type": "http.request", "body": b'{"inp', "more_body": True}
                await asyncio.sleep(30)  # the rest never comes
                raise AssertionError("unreachable")

            async def send(msg: dict[str, Any]) -> None:
                sent.append(msg)

            scope = {
                "type": "http",
                "method": "POST",
                "path": path,
                "headers": [],
                "query_string": b"",
                "root_path": "",
                "scheme": "http",
                "server": None,
                "client": None,
                "http_version": "1.1",
            }
            t0 = time.perf_counter()
            await app(scope, receive, send)
            return sent[0]["status"], time.perf_counter() - t0

        for path in ("/v2/models/tiny/infer", "/v1/records"):
            status, took = c.portal.call(call, path)  # type: ignore[union-attr]
            assert status == 408 and took < 2.0, (path, status, took)


# ---- /v1/records and /v1/feedback fields --------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "fragment", "status"),
    [
        ({"id": "x" * 300}, "records[0].id is over 256 bytes (serving.limits.max_id_bytes)", 413),
        ({"id": {"a": 1}}, "records[0].id must be a string or an integer", 400),
        ({"prediction": "p" * 20000}, "over 16384 (serving.limits.max_prediction_bytes)", 413),
        ({"prediction": [[1, 2]]}, "must be a flat list of numbers", 400),
        ({"prediction": 2**70}, "cannot be encoded", 400),
        ({"client_id": "c" * 2000}, "max_client_id_bytes", 413),
        ({"timestamp_ms": 2**63}, "records[0].timestamp_ms 9223372036854775808 is outside", 400),
        ({"timestamp_ms": 10**30}, "is outside [0, ", 400),
        ({"timestamp_ms": -5}, "is outside [0, ", 400),
        ({"timestamp_ms": 1.5}, "must be an integer (milliseconds)", 400),
        ({"embedding": [0.0] * 70000}, "has 70000 values, over 3", 400),
    ],
)
def test_record_fields_are_bounded(
    client: TestClient, capture: Any, entry: dict[str, Any], fragment: str, status: int
) -> None:
    rec = {"embedding": [0.1, 0.2, 0.3], **entry}
    r = client.post("/v1/records", json={"model": "external", "records": [rec]})
    assert fragment in error_of(r, status)
    ok = client.post(
        "/v1/records", json={"model": "external", "records": [{"embedding": [1, 2, 3]}]}
    )
    assert ok.status_code == 202
    assert len(capture.wait(1)) == 1


def test_model_version_and_feedback_bounds(client: TestClient) -> None:
    r = client.post(
        "/v1/records",
        json={
            "model": "external",
            "model_version": "v" * 200,
            "records": [{"embedding": [1, 2, 3]}],
        },
    )
    assert "max_version_bytes" in error_of(r, 413)
    fb = {"model": "tiny", "feedback": [{"id": "a", "label": "l" * 2000}]}
    assert "max_label_bytes" in error_of(client.post("/v1/feedback", json=fb), 413)
    fb = {"model": "tiny", "feedback": [{"id": "a" * 300, "label": 1}]}
    assert "max_id_bytes" in error_of(client.post("/v1/feedback", json=fb), 413)
    fb = {"model": "tiny", "feedback": [{"id": "a", "label": 1, "timestamp_ms": 2**64}]}
    assert "is outside" in error_of(client.post("/v1/feedback", json=fb), 400)


def test_encoded_record_size_is_bounded(tiny_models: dict[str, Path], capture: Any) -> None:
    with make(tiny_models, capture, limits={"max_record_bytes": 400}) as c:
        big = {"embedding": [0.5] * 3, "scores": [0.25] * 200}
        r = c.post("/v1/records", json={"model": "external", "records": [big]})
        assert "encodes to" in error_of(r, 413) and "max_record_bytes (400" in r.json()["error"]


def test_v1_unexpected_error_is_json_500(
    tiny_models: dict[str, Path], capture: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving import ingest

    def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(ingest, "parse_records", boom)
    with make(tiny_models, capture) as c:
        c2 = TestClient(c.app, raise_server_exceptions=False)
        r = c2.post(
            "/v1/records", json={"model": "external", "records": [{"embedding": [1, 2, 3]}]}
        )
        assert "internal error on /v1/records: RuntimeError: injected fault" in error_of(r, 500)


def test_ready_reports_the_stream_state(client: TestClient) -> None:
    r = client.get("/v2/health/ready")
    assert r.status_code == 200
    doc = r.json()
    assert doc["ready"] is True and doc["stream"]["state"] == "ok"
    assert doc["stream"]["degraded_after_seconds"] == 30.0


# ---- the stream never wedges on one record --------------------------------------------------
class PickyProducer:
    """Refuses some records outright, as kafka-python does for one over max_request_size."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def __call__(self) -> PickyProducer:
        return self

    def send(self, topic: str, key: bytes, value: bytes) -> Any:
        if value.startswith(b"big"):
            from kafka.errors import MessageSizeTooLargeError

            raise MessageSizeTooLargeError("the message is too large")
        if value.startswith(b"odd"):
            raise TypeError("cannot serialise")
        self.sent.append(value)

        class F:
            def add_callback(self, fn: Any, *args: Any) -> None:
                fn(*args, None)

            def add_errback(self, fn: Any, *args: Any) -> None:
                pass

        return F()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_refused_and_unbuildable_records_are_dropped_alone() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    q = RecordQueue(1000, metrics)
    producer = PickyProducer()

    def build(items: list[Any]) -> list[tuple[str, bytes]]:
        if any(i == "bad" for i in items):
            raise OverflowError("int too big to convert")  # e.g. a 10**30 timestamp
        return [("m", str(i).encode() if not isinstance(i, bytes) else i) for i in items]

    stream = RecordStream(q, build, producer, "t", metrics, max_record_bytes=100)
    stream.start()
    try:
        q.put(b"big one")
        q.put(b"odd one")
        q.put(b"x" * 101)  # over max_record_bytes: dropped before the client sees it
        q.put("bad", 7)  # an item of 7 records that cannot be built
        for i in range(200):
            q.put(i)
        deadline = time.monotonic() + 5
        while len(producer.sent) < 200 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stream.close(1.0)
    assert len(producer.sent) == 200
    dropped = metrics.records_dropped
    assert dropped.labels("too_large")._value.get() == 2
    assert dropped.labels("send_error")._value.get() == 1
    assert dropped.labels("invalid_record")._value.get() == 7  # records, not queue items
    assert metrics.records_sent.labels("m")._value.get() == 200


def test_degraded_after_no_delivery() -> None:
    from tests.serving.test_serving_ingest import SlowProducer

    metrics = ServingMetrics(CollectorRegistry())
    q = RecordQueue(100, metrics)
    producer = SlowProducer()
    stream = RecordStream(
        q,
        lambda items: [("m", b"x") for _ in items],
        producer,
        "t",
        metrics,
        stall_seconds=0.1,
        degraded_after=0.3,
    )
    def gauge() -> float | None:
        return metrics.registry.get_sample_value("repwatch_serving_record_stream_degraded")

    stream.start()
    try:
        assert not stream.degraded and gauge() == 0.0
        q.put(1)
        time.sleep(0.6)
        assert stream.degraded and gauge() == 1.0
        producer.release()
        time.sleep(0.1)
        assert not stream.degraded and gauge() == 0.0
    finally:
        stream.close(1.0)


def test_limits_defaults_are_sane() -> None:
    lim = ServingLimits()
    assert lim.max_record_bytes < 1_000_000  # below both clients' default max request size
    assert lim.max_rows <= Config().serving.queue_size
    with pytest.raises(ValueError):
        Config.model_validate({"serving": {"limits": {"max_rows": 0}}})


def test_records_decode_after_bounds(client: TestClient, capture: Any) -> None:
    r = client.post(
        "/v1/records",
        json={
            "model": "external",
            "records": [
                {
                    "embedding": [0.1, 0.2, 0.3],
                    "id": 17,
                    "prediction": [0.5, 1],
                    "timestamp_ms": 1234,
                }
            ],
        },
    )
    assert r.status_code == 202, r.text
    rec = decode(capture.wait(1)[0][2])
    assert rec.record_id == "17" and rec.prediction == [0.5, 1] and rec.timestamp_ms == 1234
