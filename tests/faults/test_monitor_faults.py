"""Fault injection against the monitor worker on the real Tansu broker (issue 17, monitor items
2, 3, 4, 5, 8, 9): records and checkpoints an attacker or a careless client can send, and a
batch that raises. Each test failed on the main branch before the hardening; each asserts that
the worker keeps running, that no valid record is lost and that the bad input is accounted for.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import records as R
from monitor.checkpoint import CheckpointStore

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location(
    "_monitor_helpers", Path(__file__).resolve().parents[1] / "monitor" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


@pytest.fixture
def mon(tmp_path: Path, kafka_broker: Any, consumer_timeouts: dict[str, int]) -> Iterator[Any]:
    yield _helpers.MonitorHelper(tmp_path, kafka_broker.address, consumer_timeouts)


def _produce_raw(mon: Any, values: list[bytes], max_request_size: int = 1 << 20) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=mon.broker, linger_ms=5, max_request_size=max_request_size)
    for v in values:
        p.send(mon.records_topic, key=b"digits", value=v)
    p.flush(30)
    p.close()


def _seq(worker: Any, version: str = "1") -> int:
    for models in worker.state.values():
        ms = models.get("digits")
        if ms is not None and version in ms.pipelines:
            return int(ms.pipelines[version].seq)
    return 0


def _raw(rec: R.Record, **override: Any) -> bytes:
    m = msgpack.unpackb(R.encode(rec))
    m.update(override)
    return msgpack.packb(m, use_bin_type=True)


def _dlq(mon: Any, n: int) -> list[Any]:
    got = mon.read(mon.dlq_topic, n, timeout=20)
    assert len(got) >= n, f"{len(got)} of {n} dead letters arrived"
    return got


def _header(msg: Any, name: str) -> bytes | None:
    return dict(msg.headers).get(name)


def test_a_record_too_large_for_the_dlq_becomes_a_tombstone_and_the_worker_goes_on(mon) -> None:
    """Item 2: dead-lettering a 2 MB record raised MessageSizeTooLargeError out of the loop."""
    good = mon.make("digits", 100)
    values = [R.encode(r) for r in good[:50]] + [b"\xc1" * (2 << 20)]
    values += [R.encode(r) for r in good[50:]]
    _produce_raw(mon, values, max_request_size=8 << 20)
    worker = mon.worker(mon.config())
    try:
        mon.run_until(worker, lambda: _seq(worker) == 100 and worker.positions)
        worker.checkpoint_and_commit()
    finally:
        worker.close()
    (msg,) = _dlq(mon, 1)
    assert _header(msg, "repwatch-tombstone") == b"1"
    body = json.loads(msg.value)
    assert (body["offset"], body["reason"], body["key"]) == (50, "decode", "digits")
    assert body["value_bytes"] == 2 << 20 and len(msg.value) < 2000
    assert worker.metrics.dlq_tombstones._value.get() == 1


def test_timestamps_outside_int64_or_implausible_are_dead_lettered_and_nothing_is_skipped(
    mon, tmp_path
) -> None:
    """Item 3 (and 7's 10**30): np.fromiter overflowed, and close() committed the unprocessed."""
    recs = mon.make("digits", 120)
    values = [R.encode(r) for r in recs[:40]]
    values += [_raw(recs[40], ts=2**63), _raw(recs[41], ts=2**64 - 1), _raw(recs[42], ts=-5)]
    values += [R.encode(r) for r in recs[43:]]
    _produce_raw(mon, values)
    config = mon.config()
    worker = mon.worker(config)
    try:
        mon.run_until(worker, lambda: _seq(worker) == 117)
    finally:
        worker.close()
    reasons = [
        (_header(m, "repwatch-error-reason"), b"ts" in (_header(m, "repwatch-error") or b""))
        for m in _dlq(mon, 3)
    ]
    assert reasons == [(b"decode", True)] * 3
    store = CheckpointStore(config.monitor.checkpoint_dir)
    ckpt = next(c for p in range(4) if (c := store.load(mon.records_topic, p, "digits")))
    assert ckpt.offset == 120 and int(ckpt.versions[0][1]["seq"]) == 117
    # The encoder refuses such a timestamp for this record only.
    with pytest.raises(R.RecordError, match="ts"):
        R.encode(
            R.Record(
                model="m", record_id="r", timestamp_ms=10**30, embedding=np.zeros(2, np.float32)
            )
        )


def test_long_ids_are_refused_and_checkpoints_store_ids_by_their_own_length(mon) -> None:
    """Item 4: one 100 KB id made every buffered id 100 KB wide in the checkpoint (306 MB)."""
    recs = mon.make("digits", 250)
    long_ok = "x" * R.MAX_STR
    values = [_raw(recs[0], id="y" * 100_000), _raw(recs[1], id=long_ok)]
    values += [R.encode(r) for r in recs[2:]]
    _produce_raw(mon, values)
    config = mon.config()
    worker = mon.worker(config)
    try:
        mon.run_until(worker, lambda: _seq(worker) == 249)
        worker.checkpoint_and_commit()
    finally:
        worker.close()
    (msg,) = _dlq(mon, 1)
    assert b"'id'" in (_header(msg, "repwatch-error") or b"")
    size = worker.metrics.checkpoint_bytes.labels("digits")._value.get()
    # 249 buffered records x 16 float32 + ids of ~10 bytes + one of 1024: well under 64 KB;
    # fixed-width ids would take 249 x 1024 x 4 = 1 MB.
    assert 0 < size < 64_000
    files = list(Path(config.monitor.checkpoint_dir).rglob("digits.npz"))
    assert len(files) == 1 and files[0].stat().st_size == size


def test_bogus_model_versions_do_not_evict_a_filling_window(mon) -> None:
    """Item 5: three records with bogus versions discarded a real 601-record drift window."""
    config = mon.config(
        [
            {
                "name": "drift.mmd",
                "params": {"n_permutations": 50, "seed": 0},
                "window": {"kind": "count", "size": 1000, "min_records": 50},
            }
        ]
    )
    recs = mon.make("digits", 601)
    bogus = [mon.make("digits", 1, start=700 + i, version=f"bogus-{i}")[0] for i in range(3)]
    wrong_dim = mon.make("digits", 2, start=800, version="bogus-dim", dim=3)
    mon.produce(recs + wrong_dim + bogus)
    worker = mon.worker(config)
    try:
        mon.run_until(worker, lambda: worker.processed >= 606)
        ms = next(m["digits"] for m in worker.state.values() if "digits" in m)
        assert "1" in ms.pipelines and ms.pipelines["1"].buffered() == 601
        assert "bogus-dim" not in ms.pipelines  # no pipeline without a valid record
        assert len(ms.pipelines) == config.monitor.model_versions_kept
        assert worker.metrics.versions_created.labels("digits")._value.get() == 4
        assert worker.metrics.versions_evicted.labels("digits")._value.get() == 1
    finally:
        worker.close()


def _checkpoint_after(mon: Any, n: int) -> tuple[Any, Path]:
    config = mon.config()
    mon.produce(mon.make("digits", n))
    worker = mon.worker(config)
    try:
        mon.run_until(worker, lambda: _seq(worker) == n)
        worker.checkpoint_and_commit()
    finally:
        worker.close()
    (path,) = Path(config.monitor.checkpoint_dir).rglob("digits.npz")
    return config, path


def _rewrite(path: Path, edit: Any) -> None:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    edit(arrays, meta)
    meta_arr = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as fh:
        np.savez(fh, __meta__=meta_arr, **arrays)


def _object_array(arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    arrays["v0/drift.mmd/X"] = np.array([{"evil": 1}], dtype=object)


def _unexpected_key(arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    meta["versions"][0]["stages"]["drift.mmd"]["surprise"] = 1


def _forged_offset(arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    meta["offset"] = 10**9


@pytest.mark.parametrize(
    "tamper",
    [_object_array, _unexpected_key, _forged_offset],
    ids=["object-array", "unexpected-key", "forged-offset"],
)
def test_a_tampered_checkpoint_is_set_aside_and_the_worker_replays_from_the_commit(
    mon, tamper
) -> None:
    """Item 8: these crashed start-up, or (forged offset) silently skipped every record."""
    config, path = _checkpoint_after(mon, 100)
    _rewrite(path, tamper)
    mon.produce(mon.make("digits", 50, start=100))
    worker = mon.worker(config)
    try:
        # Committed offset 100: the model restarts fresh there and takes the 50 new records.
        mon.run_until(worker, lambda: _seq(worker) == 50)
        time.sleep(0.3)
        worker.step(0.1)
        assert _seq(worker) == 50
        assert worker.metrics.checkpoints_rejected._value.get() == 1
        assert worker.metrics.skipped_replay._value.get() == 0
    finally:
        worker.close()
    assert list(path.parent.glob("digits.npz.rejected-*"))


def test_a_batch_that_raises_is_retried_from_the_checkpoint_then_dead_lettered(
    mon, monkeypatch
) -> None:
    """An unexpected error fails the batch: offsets stay, state rolls back, bounded retries."""
    from monitor.pipeline import Pipeline

    real = Pipeline.process
    calls = {"poison": 0}

    def flaky(self: Pipeline, batch: Any) -> Any:
        if "digits-130" in batch.ids:
            calls["poison"] += 1
            raise RuntimeError("detector bug triggered by one record")
        return real(self, batch)

    monkeypatch.setattr(Pipeline, "process", flaky)
    config = mon.config(max_batch_retries=2, max_poll_records=50)
    mon.produce(mon.make("digits", 100))
    worker = mon.worker(config)
    try:
        mon.run_until(worker, lambda: _seq(worker) == 100)
        worker.checkpoint_and_commit()
        mon.produce(mon.make("digits", 100, start=100))
        mon.run_until(
            worker, lambda: worker.positions.get(next(iter(worker.positions))) == 200, timeout=60
        )
        worker.checkpoint_and_commit()
        dead = [m for m in _dlq(mon, 1)]
        failed = worker.metrics.batch_failures
        assert failed.labels("retried")._value.get() == 2
        assert failed.labels("dead_lettered")._value.get() == 1
        assert calls["poison"] == 3
        # Every record outside the dead-lettered batch entered the state exactly once.
        assert _seq(worker) == 200 - len(dead)
        assert all(_header(m, "repwatch-error-reason") == b"batch_failed" for m in dead)
        assert 0 < len(dead) <= 50
        assert any(b"digits-130" in m.value for m in dead)
    finally:
        worker.close()


def test_alerts_resent_after_a_crash_repeat_their_id_and_travel_in_structured_mode(mon) -> None:
    """Item 9: a re-sent alert is the same event (consumers de-duplicate by source + id), and
    the Kafka message has no ce_id header (CloudEvents SDKs read that as binary mode)."""
    from monitor.sinks import AlertLedger

    config = mon.config()
    mon.produce(mon.make("digits", 300) + mon.make("digits", 300, shift=2.0, start=300))
    worker = mon.worker(config)
    try:
        mon.run_until(
            worker, lambda: worker.metrics.alerts.labels("digits", "drift")._value.get() == 1
        )
        worker.checkpoint_and_commit()
    finally:
        worker.close()
    # A crash between the send and its acknowledgement: the ledger still lists kafka.
    ledger = AlertLedger(config.monitor.checkpoint_dir / "alerts")
    (entry,) = list(ledger.dir.glob("*.json"))
    data = json.loads(entry.read_bytes())
    entry.write_text(json.dumps({**data, "pending": ["kafka"]}))
    again = mon.worker(config)
    again.start()
    again.close()
    msgs = mon.read(mon.alerts_topic, 2)
    assert len(msgs) == 2
    events = [json.loads(m.value) for m in msgs]
    assert len({(e["source"], e["id"]) for e in events}) == 1  # what a consumer de-duplicates
    assert msgs[0].value == msgs[1].value
    assert events[0]["source"] == "repwatch/test"
    assert all(dict(m.headers) == {"content-type": b"application/cloudevents+json"} for m in msgs)


# --- the record decoder under fuzzing: a record is decoded or refused, nothing else ----------
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=80)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = [
    "v",
    "model",
    "model_version",
    "id",
    "ts",
    "kind",
    "embedding",
    "prediction",
    "scores",
    "label",
    "client_id",
    "input_digest",
    "features",
]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    rec = R.Record(
        model="digits",
        record_id="r1",
        timestamp_ms=5,
        embedding=np.arange(4, dtype=np.float32),
        scores=np.ones(3, np.float32),
    )
    m = msgpack.unpackb(R.encode(rec))
    for key in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        if draw(st.booleans()):
            m.pop(key, None)
        else:
            m[key] = draw(_values)
    if draw(st.booleans()) and isinstance(m.get("embedding"), dict):
        m["embedding"][draw(st.sampled_from(["dtype", "dim", "data"]))] = draw(_values)
    try:
        return msgpack.packb(m, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return msgpack.packb({"v": 1}, use_bin_type=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_mutated(), st.binary(max_size=200)))
def test_fuzzed_records_are_decoded_or_refused_never_raised(data: bytes) -> None:
    try:
        rec = R.decode(data)
    except R.RecordError as exc:
        assert exc.field and len(str(exc)) < 2000
        batch = R.decode_many([data])
        assert batch.records == [] and [i for i, _ in batch.errors] == [0]
        return
    assert 0 <= rec.timestamp_ms <= R.MAX_TS_MS and len(rec.record_id) <= R.MAX_STR
    assert np.isfinite(rec.embedding).all()
    assert R.decode(R.encode(rec)) == rec  # what decodes also re-encodes, identically
    assert R.decode_many([data]).records == [rec]
