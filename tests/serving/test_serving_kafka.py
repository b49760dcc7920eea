"""The record stream on the real broker: records decode to what onnxruntime computed; with the
broker stopped inference goes on and drops are counted; after a restart records flow again.

Each behaviour is checked with both producer clients (``serving.kafka_client``): confluent-kafka
(librdkafka) and kafka-python."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from monitor import localstack
from monitor.config import Config
from monitor.records import Record
from serving.app import create_app
from tests.conftest import read_topic

pytestmark = pytest.mark.integration

TOPIC = "repwatch.records"


CLIENTS = [
    "confluent",
    "kafka-python",
]


@pytest.fixture(params=CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The producer client the sidecar's child process runs."""
    return str(request.param)


@pytest.fixture
def broker() -> Iterator[localstack.Service]:
    """A broker of this module's own: the tests stop and restart it."""
    svc = localstack.start_tansu()
    yield svc
    svc.stop()


def consume(address: str, want: int, timeout: float) -> list[Record]:
    """Read every record on the topic from the start, without a consumer group (no join)."""
    return read_topic(address, TOPIC, want, timeout)


def ids_on(address: str, timeout: float) -> set[str]:
    """Record ids on the topic so far; empty while the topic does not exist yet."""
    return {r.record_id for r in consume(address, 10**6, timeout)}


def digits_or_skip() -> Path:
    path = Path(__file__).resolve().parents[2] / "serving/encoders/models/digits_classifier.onnx"
    if not path.is_file():
        pytest.fail(
            "bundled digits model missing: build it with python -m serving.encoders.build_digits"
        )
    return path


def make_client(
    model: Path, broker: localstack.Service, client: str, queue_size: int = 10000
) -> TestClient:
    config = Config.model_validate(
        {
            "kafka": {"bootstrap_servers": [broker.address]},
            "models": [{"name": "digits", "path": str(model)}],
            "serving": {"queue_size": queue_size, "intra_op_threads": 1, "kafka_client": client},
        }
    )
    # The default transport: the client in a child process, with test-sized timeouts.
    options = {"delivery_timeout_ms": 4000, "request_timeout_ms": 1500, "max_block_ms": 2000}
    return TestClient(create_app(config, producer_options=options))


def infer(client: TestClient, x: np.ndarray) -> Any:
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
    return client.post("/v2/models/digits/infer", json=req)


def test_record_through_broker_is_what_onnxruntime_computed(
    broker: localstack.Service, kafka_client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort
    from kafka.record import default_records
    from sklearn.datasets import load_digits

    lz4_batches = []  # the stream is lz4-compressed, and kafka-python (the monitor's) reads it
    real = default_records.lz4_decode
    monkeypatch.setattr(default_records, "lz4_decode",
                        lambda data: lz4_batches.append(len(data)) or real(data))

    model = digits_or_skip()
    x = load_digits().data[:3].astype(np.float32)
    with make_client(model, broker, kafka_client) as client:
        assert client.app.state.sidecar.stream.transport.client == kafka_client  # type: ignore[attr-defined]
        ids = [infer(client, x[i : i + 1]).headers["x-repwatch-record-id"] for i in range(3)]
    records = {r.record_id: r for r in consume(broker.address, 3, 20)}
    assert lz4_batches
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits, emb = sess.run(["logits", "embedding"], {"input": x})
    assert sorted(records) == sorted(ids)
    for i, rid in enumerate(ids):
        rec = records[rid]
        assert rec.model == "digits" and rec.kind == "inference"
        assert rec.embedding.dtype == np.float32 and rec.embedding.shape == (32,)
        np.testing.assert_array_equal(rec.embedding, emb[i])
        np.testing.assert_array_equal(rec.scores, logits[i])
        assert rec.prediction == int(np.argmax(logits[i]))


def test_broker_down_then_restarted(
    broker: localstack.Service, prom_value: Any, kafka_client: str
) -> None:
    model = digits_or_skip()
    x = np.arange(64, dtype=np.float32).reshape(1, 64) % 17
    with make_client(model, broker, kafka_client, queue_size=50) as client:
        assert infer(client, x).status_code == 200
        assert len(consume(broker.address, 1, 20)) == 1

        broker.stop()
        slowest, n = 0.0, 0
        end = time.monotonic() + 3
        while time.monotonic() < end or n < 300:
            t0 = time.perf_counter()
            assert infer(client, x).status_code == 200
            slowest = max(slowest, time.perf_counter() - t0)
            n += 1
        time.sleep(6)  # past the delivery timeout: in-flight records fail and are counted
        for _ in range(20):
            assert infer(client, x).status_code == 200
        # Every record is accounted for: sent, dropped (by reason), queued, or still in flight.
        deadline = time.monotonic() + 5
        while True:
            text = client.get("/metrics").text
            m = {
                k: prom_value(text, f"repwatch_serving_{k}")
                for k in ("record_queue_depth", "records_in_flight")
            }
            enqueued = prom_value(text, "repwatch_serving_records_enqueued_total", model="digits")
            sent = prom_value(text, "repwatch_serving_records_sent_total", model="digits")
            dropped = prom_value(
                text, "repwatch_serving_records_dropped_total", reason="queue_full"
            )
            failed = prom_value(
                text, "repwatch_serving_records_dropped_total", reason="delivery_failed"
            )
            accounted = sent + dropped + failed + sum(m.values())
            if accounted == enqueued or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert enqueued == n + 21 and accounted == enqueued, text
        assert dropped > 0, text  # the queue filled and dropped its oldest records
        assert m["record_queue_depth"] <= 50
        assert slowest < 1.5  # nothing on the request path waits for the broker

        restarted = localstack.start_tansu(port=broker.port, workdir=broker.workdir)
        broker.proc = restarted.proc  # the fixture stops whichever process runs now
        deadline = time.monotonic() + 40
        ids: list[str] = []
        got: set[str] = set()
        while time.monotonic() < deadline:
            ids.append(infer(client, x).headers["x-repwatch-record-id"])
            if len(ids) % 4 == 0:
                got = ids_on(broker.address, 2)
                if got & set(ids):
                    break
            time.sleep(0.25)
        assert got & set(ids), "no record made after the restart reached the new broker"
        text = client.get("/metrics").text
        assert prom_value(text, "repwatch_serving_records_sent_total", model="digits") > sent


def test_producer_process_killed_is_restarted(
    broker: localstack.Service, kafka_client: str
) -> None:
    model = digits_or_skip()
    x = np.ones((1, 64), dtype=np.float32)
    with make_client(model, broker, kafka_client) as client:
        infer(client, x)
        assert len(consume(broker.address, 1, 20)) == 1
        transport = client.app.state.sidecar.stream.transport  # type: ignore[attr-defined]
        old = transport.proc
        old.kill()
        old.join(5)
        deadline = time.monotonic() + 20
        while transport.proc is old and time.monotonic() < deadline:
            infer(client, x)
            time.sleep(0.1)
        assert transport.proc is not old and transport.proc.is_alive()
        rid = infer(client, x).headers["x-repwatch-record-id"]
        got: set[str] = set()
        while rid not in got and time.monotonic() < deadline:
            got = ids_on(broker.address, 1)
        assert rid in got


def test_broker_absent_at_start_then_up(prom_value: Any, kafka_client: str) -> None:
    """The sidecar starts and serves with no broker; records flow once one appears."""
    model = digits_or_skip()
    port = localstack.free_port()
    absent = localstack.Service("tansu", port, None, Path("."))  # type: ignore[arg-type]
    x = np.full((1, 64), 3.0, dtype=np.float32)
    broker = None
    try:
        with make_client(model, absent, kafka_client) as client:
            for _ in range(5):
                assert infer(client, x).status_code == 200
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                text = client.get("/metrics").text
                if prom_value(text, "repwatch_serving_producer_errors_total", kind="connect"):
                    break
                time.sleep(0.2)
            assert prom_value(text, "repwatch_serving_producer_errors_total", kind="connect") >= 1
            broker = localstack.start_tansu(port=port)
            deadline = time.monotonic() + 30
            got: set[str] = set()
            ids: list[str] = []
            while time.monotonic() < deadline and not got & set(ids):
                ids.append(infer(client, x).headers["x-repwatch-record-id"])
                got = ids_on(broker.address, 1)
            assert got & set(ids), "no record reached the broker that came up late"
    finally:
        if broker is not None:
            broker.stop()


def test_security_settings_map_to_librdkafka_names(tmp_path: Path) -> None:
    """SASL/SSL from ``kafka:`` reach librdkafka under its own names; unknown options fail."""
    from serving.core import producer_options_for
    from serving.kafka_clients import librdkafka_config

    secret = tmp_path / "password"
    secret.write_text("s3cret")
    config = Config.model_validate(
        {
            "kafka": {
                "bootstrap_servers": "a:9093,b:9093",
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "svc",
                "sasl_password": {"file": str(secret)},
                "ssl_cafile": "/etc/ca.pem",
            },
            "models": [{"name": "digits", "upstream_url": "http://127.0.0.1:9"}],
        }
    )
    conf = librdkafka_config(producer_options_for(config, delivery_timeout_ms=4000))
    assert conf["bootstrap.servers"] == "a:9093,b:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc", "s3cret")
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert conf["enable.idempotence"] == "true" and conf["acks"] == "all"
    assert conf["message.timeout.ms"] == 4000
    assert conf["partitioner"] == "murmur2_random"  # same key -> partition as kafka-python
    with pytest.raises(ValueError, match="'buffer_memory' has no librdkafka equivalent"):
        librdkafka_config(producer_options_for(config, buffer_memory=1))
