"""The worker's routing logic on hand-made poll batches (no broker): model versions, bad input,
replay after a restore, and alert de-duplication."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor import records as R
from monitor.config import Config
from monitor.kafka_io import Batch
from monitor.runtime import Worker

TOPIC = "repwatch.records"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict[str, bytes]]] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, on_success: Any = None) -> None:
        self.sent.append((topic, value, key, dict(headers or [])))
        if on_success is not None:
            on_success()

    def flush(self, timeout_s: float = 10.0) -> None:
        pass


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []
        self.seeks: list[tuple[tuple[str, int], int]] = []

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, tp: tuple[str, int], offset: int) -> None:
        self.seeks.append((tp, offset))


@pytest.fixture
def make_worker(tmp_path: Path):
    ref = tmp_path / "ref.npy"
    np.save(ref, np.random.default_rng(0).normal(size=(500, 4)))
    cfg = Config.model_validate({
        "models": [{"name": "digits", "reference": str(ref), "detectors": [
            {"name": "drift.mmd", "params": {"n_permutations": 100},
             "window": {"kind": "count", "size": 100, "min_records": 50}}]}],
        "monitor": {"checkpoint_dir": str(tmp_path / "state"), "unknown_models": "dlq"},
    })

    def make() -> Worker:
        w = Worker(cfg)
        w.producer, w.consumer = FakeProducer(), FakeConsumer()  # type: ignore[assignment]
        w.alerter.producer = w.producer
        return w

    return make


def _batch(recs: list[R.Record | bytes], first_offset: int = 0, partition: int = 0) -> Batch:
    b = Batch()
    for i, r in enumerate(recs):
        b.topics.append(TOPIC)
        b.partitions.append(partition)
        b.offsets.append(first_offset + i)
        b.keys.append(b"digits")
        b.values.append(r if isinstance(r, bytes) else R.encode(r))
        b.timestamps.append(0)
    return b


def _recs(n: int, start: int = 0, version: str = "1", shift: float = 0.0, dim: int = 4,
          model: str = "digits") -> list[R.Record]:
    X = np.random.default_rng(start).normal(shift, 1.0, (n, dim)).astype(np.float32)
    return [R.Record(model=model, record_id=f"r{start + i}", timestamp_ms=start + i,
                     embedding=X[i], model_version=version) for i in range(n)]


def test_a_new_model_version_starts_fresh_instead_of_alarming(make_worker) -> None:
    w = make_worker()
    w.process(_batch(_recs(150)))
    pipes = w.state[(TOPIC, 0)]["digits"].pipelines
    assert list(pipes) == ["1"] and pipes["1"].seq == 150
    w.process(_batch(_recs(80, 150, version="2"), 150))
    assert list(pipes) == ["1", "2"] and pipes["2"].seq == 80 and pipes["1"].seq == 150
    assert w.metrics.records.labels("digits", "2", "inference")._value.get() == 80


def test_bad_input_is_dead_lettered_or_counted(make_worker) -> None:
    w = make_worker()
    w.process(_batch([b"garbage", *_recs(2, dim=5), *_recs(3, model="other"), *_recs(4)]))
    reasons = [h["repwatch-error-reason"] for _, _, _, h in w.producer.sent]
    assert reasons == [b"decode", b"dimension", b"dimension", *[b"unknown_model"] * 3]
    assert all(t == "repwatch.records.dlq" for t, *_ in w.producer.sent)
    assert w.metrics.unknown._value.get() == 3
    assert w.state[(TOPIC, 0)]["digits"].pipelines["1"].seq == 4
    assert w.positions[(TOPIC, 0)] == 10


def test_restore_skips_what_the_checkpoint_holds_and_alerts_once(make_worker) -> None:
    first = make_worker()
    clean, shifted = _recs(100), _recs(100, 100, shift=2.0)
    first.process(_batch(clean[:60]))
    first.checkpoint_and_commit()
    assert first.consumer.commits == [{(TOPIC, 0): 60}]
    first.process(_batch(clean[60:] + shifted, 60))  # alert on window [100, 200)
    alerts = [s for s in first.producer.sent if s[0] == "repwatch.alerts"]
    assert len(alerts) == 1
    # Crash: nothing after offset 60 was checkpointed. A new worker replays from offset 0.
    second = make_worker()
    second._on_assign([(TOPIC, 0)])
    second.process(_batch(clean + shifted, 0))
    assert second.state[(TOPIC, 0)]["digits"].pipelines["1"].seq == 200  # not 260
    assert second.metrics.skipped_replay._value.get() == 60
    assert [s for s in second.producer.sent if s[0] == "repwatch.alerts"] == []
    assert second.metrics.alerts_duplicate.labels("digits", "drift")._value.get() == 1
