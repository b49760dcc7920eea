"""Pipeline v2 without Kafka: typed record batches, feedback stages with labels, client-keyed
stages (order, memory bound, evictions), logits read from the records, idle time windows."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.base import KeyedDetector, KeyedScores
from monitor import records as R
from monitor.batch import route
from monitor.config import Config, ModelConfig
from monitor.kafka_io import Batch
from monitor.pipeline import Pipeline
from monitor.reference import ReferenceSet, fit_reference
from monitor.runtime import Worker

D = 8
TOPIC = "repwatch.records"


def _rec(i: int, x: Any, *, kind: str = "inference", label: Any = None, client: str | None = None,
         scores: Any = None, version: str = "1") -> R.Record:
    return R.Record(model="digits", record_id=f"r{i}", timestamp_ms=1_000 * i,
                    embedding=np.asarray(x, np.float32), kind=kind,  # type: ignore[arg-type]
                    label=label, client_id=client, model_version=version,
                    scores=None if scores is None else np.asarray(scores, np.float32))


def _batches(recs: list[R.Record], dim: int = D) -> dict[str, Any]:
    items = list(enumerate(recs))
    batches, rejects = route("digits", items, list(range(len(recs))), dim)
    assert rejects == []
    return batches


def test_route_builds_one_columnar_batch_per_version_and_keeps_every_column() -> None:
    rng = np.random.default_rng(0)
    recs = [_rec(0, rng.normal(size=D), client="c1", scores=[1.0, 2.0]),
            _rec(1, rng.normal(size=D), kind="feedback", label=3, client="c2"),
            _rec(2, rng.normal(size=D), version="2"),
            _rec(3, rng.normal(size=5))]
    batches, rejects = route("digits", list(enumerate(recs)), [10, 11, 12, 13], D)
    assert [(r.index, r.reason) for r in rejects] == [(3, "dimension")]
    b = batches["1"]
    assert b.ids == ["r0", "r1"] and b.offsets.tolist() == [10, 11]
    assert b.clients == ["c1", "c2"] and b.labels == [None, 3]
    assert b.of_kind("feedback").labels == [3] and b.of_kind("inference").ids == ["r0"]
    logits, rows = b.input("logits")
    assert logits.tolist() == [[1.0, 2.0]] and rows.tolist() == [0]
    assert batches["2"].ids == ["r2"]


def _batch_of(recs: list[R.Record], first: int = 0) -> Batch:
    b = Batch()
    for i, r in enumerate(recs):
        b.topics.append(TOPIC)
        b.partitions.append(0)
        b.offsets.append(first + i)
        b.keys.append(b"digits")
        b.values.append(R.encode(r))
        b.timestamps.append(0)
    return b


class _Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic: str, value: bytes, key: Any = None, headers: Any = None,
             on_success: Any = None) -> None:
        self.sent.append((topic, value))
        if on_success is not None:
            on_success()

    def flush(self, timeout_s: float = 10.0) -> None:
        pass


def test_feedback_records_reach_a_feedback_stage_with_their_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    np.savez(ref, X=rng.normal(size=(600, D)), labels=rng.choice(4, 600, p=[.4, .3, .2, .1]))
    cfg = Config.model_validate({
        "models": [{"name": "digits", "reference": str(ref), "detectors": [
            {"name": "drift.chi2", "records": "feedback",
             "window": {"kind": "count", "size": 200, "min_records": 50}}]}],
        "monitor": {"checkpoint_dir": str(tmp_path / "state")},
    })
    w = Worker(cfg)
    w.producer = w.alerter.producer = _Sink()  # type: ignore[assignment]
    same = rng.choice(4, 200, p=[.4, .3, .2, .1])
    skewed = rng.choice(4, 200, p=[.1, .1, .1, .7])
    recs = [_rec(i, rng.normal(size=D)) for i in range(300)]  # inference: not this stage's
    recs += [_rec(300 + i, rng.normal(size=D), kind="feedback", label=int(y))
             for i, y in enumerate([*same, *skewed])]
    w.process(_batch_of(recs))
    pipe = w.state[(TOPIC, 0)]["digits"].pipelines["1"]
    assert (pipe.seq, pipe.seq_feedback) == (300, 400)
    alerts = [v for t, v in w.producer.sent if t == cfg.topics.alerts]  # type: ignore[union-attr]
    assert len(alerts) == 1  # the skewed labels, not the matching ones
    import json

    data = json.loads(alerts[0])["data"]
    assert data["window"]["start"] == 200 and data["details"]["records"] == "feedback"
    assert data["details"]["input"] == "label"
    assert w.metrics.records.labels("digits", "1", "feedback")._value.get() == 400


class _OrderProbe(KeyedDetector):
    """Test-only keyed detector: X[:, 0] is each client's own record counter; it counts records
    that arrive out of that order (and flags every record of client 'bad')."""

    name = "test.order_probe"

    def fit(self, X: Any) -> _OrderProbe:
        self.fitted_ = True
        return self

    def key_fields(self) -> dict[str, Any]:
        return {"expect": "int64", "disorder": "int64"}

    def update_key(self, state: Any, X: Any, ts: Any) -> KeyedScores:
        got = X[:, 0].astype(np.int64)
        want = int(state["expect"]) + np.arange(len(got))
        state["disorder"] = int(state["disorder"]) + int((got != want).sum())
        state["expect"] = int(got[-1]) + 1
        return KeyedScores(np.zeros(len(got)), np.full(len(got), X[0, 1] > 0))


def _keyed_pipe(tmp_path: Path | None, detector: dict[str, Any], det: Any = None) -> Pipeline:
    cfg = ModelConfig.model_validate({"name": "digits", "detectors": [detector]})
    if det is None:
        ref = fit_reference(cfg, np.random.default_rng(0).normal(size=(600, D)), "test")
    else:
        ref = ReferenceSet("digits", {detector["name"]: det}, np.zeros(D), np.ones(D), "t", 0)
    return Pipeline(cfg, "1", ref, 0, None if tmp_path is None else tmp_path / "keyed")


def _client_stream(rng: Any, clients: list[str], n: int) -> tuple[list[R.Record], dict[str, int]]:
    """``n`` records from clients drawn at random: x[0] is the client's own record counter,
    x[1] is 1 for client 'bad' (which :class:`_OrderProbe` flags)."""
    counters = dict.fromkeys(clients, 0)
    stream = []
    for i in range(n):
        c = clients[int(rng.integers(len(clients)))]
        x = np.zeros(D)
        x[0], x[1] = counters[c], 1.0 if c == "bad" else 0.0
        counters[c] += 1
        stream.append(_rec(i, x, client=c))
    return stream, counters


def test_a_client_keyed_stage_sees_each_clients_records_in_order(tmp_path: Path) -> None:
    clients = [f"c{k}" for k in range(50)] + ["bad"]
    stream, counters = _client_stream(np.random.default_rng(3), clients, 5000)
    pipe = _keyed_pipe(tmp_path, {"name": "test.order_probe", "key": "client",
                                  "window": {"size": 20, "min_records": 10}},
                       _OrderProbe().fit(None))
    findings = []
    for a in range(0, len(stream), 333):  # batches cut across clients
        findings += pipe.process(_batches(stream[a:a + 333])["1"]).findings
    store = pipe.keyed[0].store
    for c in clients:
        st = store.peek(c)
        assert st is not None and int(st["d_expect"]) == counters[c] and st["d_disorder"] == 0
        assert int(st["n"]) == counters[c]
    assert [f.key for f in findings] == ["bad"]  # one alert, for that client, at its onset
    assert 10 <= findings[0].window["records"] <= 20  # at its onset (min_records 10)


def test_a_keyed_episode_starts_at_the_same_client_record_however_the_stream_is_batched(
) -> None:
    """A restarted worker re-reads records in other batches: the alert window (hence its id)
    must not depend on where the batches were cut."""
    stream, _ = _client_stream(np.random.default_rng(5), ["a", "b", "bad"], 1500)
    windows = set()
    for size in (7, 333, 1500):
        pipe = _keyed_pipe(None, {"name": "test.order_probe", "key": "client",
                                  "window": {"size": 20, "min_records": 10},
                                  "min_flagged_fraction": 0.5}, _OrderProbe().fit(None))
        found = []
        for a in range(0, len(stream), size):
            found += pipe.process(_batches(stream[a:a + size])["1"]).findings
        assert [f.key for f in found] == ["bad"], (size, [(f.key, f.window) for f in found])
        windows.add((found[0].window["start"], found[0].window["end"]))
    assert len(windows) == 1, windows


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_100k_distinct_clients_stay_under_the_memory_bound_and_evictions_are_counted() -> None:
    bound = 8 << 20
    pipe = _keyed_pipe(None, {"name": "ood.mahalanobis", "key": "client",
                              "max_key_memory_bytes": bound, "key_idle_seconds": None})
    store = pipe.keyed[0].store
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, D)).astype(np.float32)
    before = _rss()
    peak = before
    for start in range(0, 100_000, 2000):
        recs = [_rec(start + i, X[i], client=f"client-{start + i:06d}") for i in range(2000)]
        pipe.process(_batches(recs)["1"])
        peak = max(peak, _rss())
    assert store.memory_bound_bytes <= bound
    assert len(store) == store.capacity < 100_000
    assert store.evictions["capacity"] == 100_000 - store.capacity
    assert pipe.keyed[0].evictions_since() == {"capacity": 100_000 - store.capacity}
    # RSS growth: the store's bound plus what one batch of 2,000 records takes in flight.
    assert peak - before < bound + (24 << 20), (peak - before, bound)


def test_logit_detectors_are_fitted_and_scored_on_logits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    logits = rng.normal(size=(600, 4)) + np.eye(4)[rng.integers(0, 4, 600)] * 6
    np.savez(ref, X=rng.normal(size=(600, D)), logits=logits)
    cfg = ModelConfig.model_validate({"name": "digits", "reference": str(ref), "detectors": [
        {"name": "ood.msp", "params": {"fpr": 0.05}, "window": {"size": 100}}]})
    from monitor.reference import load_reference

    pipe = Pipeline(cfg, "1", load_reference(cfg, ref))
    assert pipe.stages[0].det.n_features_in_ == 4  # fitted on logits, not on the 8-dim X
    confident = [_rec(i, rng.normal(size=D), scores=np.eye(4)[i % 4] * 8) for i in range(100)]
    unsure = [_rec(100 + i, rng.normal(size=D), scores=np.zeros(4)) for i in range(100)]
    no_logits = [_rec(200 + i, rng.normal(size=D)) for i in range(10)]
    report = pipe.process(_batches(confident + unsure + no_logits)["1"])
    assert [f.window["start"] for f in report.findings] == [100]
    assert report.missing_input == {"ood.msp": 10}


def test_an_idle_time_window_closes_on_the_timer() -> None:
    pipe = _keyed_pipe(None, {"name": "drift.mmd", "params": {"n_permutations": 50},
                              "window": {"kind": "time", "size": 60, "min_records": 10,
                                         "idle_close_seconds": 0.5}})
    rng = np.random.default_rng(0)
    recs = [_rec(i, rng.normal(size=D)) for i in range(30)]  # 30 s of a 60 s window
    assert pipe.process(_batches(recs)["1"]).observations == []
    import time

    now = time.monotonic()
    assert pipe.tick(now + 0.2).observations == []
    (test,) = pipe.tick(now + 0.6).observations
    assert test.records == 30
    assert pipe.tick(now + 5).observations == []  # closed once
    assert len(pipe.stages[0].state) == 0


@pytest.mark.parametrize("size", [10, 10**6])
def test_window_record_caps(size: int) -> None:
    from monitor.config import WindowConfig
    from monitor.windows import Window

    if size > 100_000:
        with pytest.raises(ValueError, match="max_records"):
            WindowConfig(kind="count", size=size)
        return
    w = Window("time", 60, max_records=size)
    st = w.initialize(2)
    w.agg(st, np.zeros((25, 2)), [f"r{i}" for i in range(25)], np.arange(25) * 100)
    assert len(st) == 10 and st.dropped == 15
