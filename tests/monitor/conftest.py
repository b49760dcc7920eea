"""Helpers for the monitor runtime tests: configs, reference arrays, producing and reading topics.

Exposed as the ``mon`` fixture (the test suite imports in importlib mode, so tests cannot import
this module by name).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor import records as R
from monitor.config import Config


class MonitorHelper:
    def __init__(self, tmp_path: Path, broker: str, timeouts: dict[str, int]) -> None:
        self.tmp, self.broker, self.timeouts = tmp_path, broker, timeouts
        self.dim = 16
        self.uid = uuid.uuid4().hex[:8]
        self.records_topic = f"repwatch.records.{self.uid}"
        self.alerts_topic = f"repwatch.alerts.{self.uid}"
        self.dlq_topic = f"repwatch.records.dlq.{self.uid}"

    def reference(self, n: int = 1000, seed: int = 0) -> Path:
        path = self.tmp / "reference.npy"
        if not path.exists():
            np.save(path, np.random.default_rng(seed).normal(size=(n, self.dim)))
        return path

    def config(
        self,
        detectors: list[dict[str, Any]] | None = None,
        models: tuple[str, ...] = ("digits",),
        webhooks: list[dict[str, Any]] | None = None,
        **monitor: Any,
    ) -> Config:
        detectors = detectors if detectors is not None else [
            {"name": "drift.mmd", "params": {"n_permutations": 100, "seed": 0},
             "window": {"kind": "count", "size": 300, "min_records": 50}},
        ]
        return Config.model_validate({
            "kafka": {"bootstrap_servers": [self.broker]},
            "topics": {"records": self.records_topic, "alerts": self.alerts_topic,
                       "dlq": self.dlq_topic},
            "models": [{"name": m, "reference": str(self.reference()), "detectors": detectors}
                       for m in models],
            "alerts": {"webhooks": webhooks or [], "source": "repwatch/test"},
            "monitor": {"group_id": f"g-{self.uid}", "checkpoint_dir": str(self.tmp / "state"),
                        "checkpoint_interval_seconds": 0.5, **monitor},
        })

    def make(self, model: str, n: int, *, shift: float = 0.0, start: int = 0, seed: int = 1,
             version: str = "1", dim: int | None = None) -> list[R.Record]:
        rng = np.random.default_rng(seed + start)
        X = rng.normal(shift, 1.0, size=(n, dim or self.dim)).astype(np.float32)
        return [
            R.Record(model=model, record_id=f"{model}-{start + i}",
                     timestamp_ms=1_700_000_000_000 + (start + i) * 10, embedding=X[i],
                     model_version=version)
            for i in range(n)
        ]

    def produce(self, recs: list[R.Record] | list[tuple[bytes, bytes]],
                topic: str | None = None) -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=self.broker, linger_ms=5)
        for r in recs:
            if isinstance(r, tuple):
                p.send(topic or self.records_topic, key=r[0], value=r[1])
            else:
                p.send(topic or self.records_topic, key=r.model.encode(), value=R.encode(r))
        p.flush(15)
        p.close()

    def read(self, topic: str, n: int, timeout: float = 20.0) -> list[Any]:
        """The first ``n`` messages of a topic (all partitions, no group)."""
        from kafka import KafkaConsumer

        c = KafkaConsumer(topic, bootstrap_servers=self.broker, auto_offset_reset="earliest",
                          enable_auto_commit=False, consumer_timeout_ms=1000)
        out: list[Any] = []
        end = time.monotonic() + timeout
        try:
            while len(out) < n and time.monotonic() < end:
                for msgs in c.poll(timeout_ms=300).values():
                    out.extend(msgs)
        finally:
            c.close()
        return out

    def worker(self, config: Config, **kw: Any) -> Any:
        from monitor.runtime import Worker

        return Worker(config, consumer_settings=dict(self.timeouts), **kw)

    def run_until(self, worker: Any, predicate: Any, timeout: float = 60.0) -> None:
        """Step a worker on this thread until ``predicate()`` holds."""
        if worker.consumer is None:
            worker.start()
        end = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < end, "condition not reached before the timeout"
            worker.step(0.1)

    def in_thread(self, worker: Any) -> threading.Thread:
        t = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
        t.start()
        return t


@pytest.fixture
def mon(tmp_path: Path, kafka_broker: Any, consumer_timeouts: dict[str, int]) -> Iterator[
        MonitorHelper]:
    yield MonitorHelper(tmp_path, kafka_broker.address, consumer_timeouts)
