"""Pipelines, references, checkpoints and alert events without Kafka (real registered detectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monitor.alerts import Finding, dedupe_key, encode_event, sign, to_cloudevent, verify
from monitor.checkpoint import CheckpointStore, ModelCheckpoint
from monitor.config import ModelConfig
from monitor.pipeline import Pipeline
from monitor.reference import fit_reference, load_reference, save_reference

D = 8
DETECTORS = [
    {"name": "drift.mmd", "params": {"n_permutations": 100, "alpha": 0.01, "seed": 0},
     "window": {"kind": "count", "size": 200, "min_records": 50}},
    {"name": "drift.mmd_online",
     "params": {"ert": 20000, "window_size": 20, "n_bootstraps": 20000}},
    {"name": "ood.knn", "params": {"k": 10, "fpr": 0.01, "normalize": False},
     "window": {"kind": "count", "size": 200}, "min_flagged_fraction": 0.2},
]


@pytest.fixture(scope="module")
def setup() -> tuple[ModelConfig, object]:
    cfg = ModelConfig.model_validate({"name": "digits", "detectors": DETECTORS})
    ref = fit_reference(cfg, np.random.default_rng(0).normal(size=(600, D)), "test")
    return cfg, ref


def _batch(n: int, start: int, shift: float = 0.0, seed: int = 1):
    X = np.random.default_rng(seed + start).normal(shift, 1.0, (n, D)).astype(np.float32)
    ids = [f"r{start + i}" for i in range(n)]
    ts = 1_000 * np.arange(start, start + n, dtype=np.int64)
    return X, ids, ts


def _feed(pipe: Pipeline, phases: list[tuple[int, float]], batch: int = 70) -> list[Finding]:
    findings, pos = [], pipe.seq
    for n, shift in phases:
        for a in range(0, n, batch):
            m = min(batch, n - a)
            findings += pipe.process_arrays(*_batch(m, pos, shift)).findings
            pos += m
    return findings


def test_stationary_stream_raises_nothing(setup) -> None:
    cfg, ref = setup
    pipe = Pipeline(cfg, "1", ref)
    assert _feed(pipe, [(1200, 0.0)]) == []
    assert pipe.seq == 1200


def test_a_shift_raises_one_alert_per_detector_at_its_onset(setup) -> None:
    cfg, ref = setup
    pipe = Pipeline(cfg, "1", ref)
    findings = _feed(pipe, [(400, 0.0), (800, 1.5)])
    by = {f.detector: f for f in findings}
    assert sorted(f.detector for f in findings) == ["drift.mmd", "drift.mmd_online", "ood.knn"]
    mmd = by["drift.mmd"]
    assert (mmd.window["start"], mmd.window["end"]) == (400, 600)  # first drifted window
    assert mmd.p_value is not None and mmd.p_value <= 0.01
    assert all(400 <= int(i[1:]) < 600 for i in mmd.evidence) and len(mmd.evidence) == 10
    online = by["drift.mmd_online"]
    assert 400 < online.window["end"] <= 460  # detected within a few dozen records
    assert online.statistic > online.threshold  # the values at the detecting record
    ood = by["ood.knn"]
    assert ood.kind == "ood" and ood.statistic >= 0.2 and ood.p_value < 1e-6
    # Back to normal ends the episode; a new shift alerts again.
    again = _feed(pipe, [(800, 0.0), (400, 1.5)])
    assert {f.detector for f in again} >= {"drift.mmd"}
    assert all(f.window["start"] >= 1600 for f in again)


def test_state_round_trip_mid_window_changes_nothing(setup, tmp_path: Path) -> None:
    cfg, ref = setup
    phases = [(330, 0.0), (500, 1.5)]
    straight = _feed(Pipeline(cfg, "1", ref), phases)
    first = Pipeline(cfg, "1", ref)
    _feed(first, [(330, 0.0)])
    store = CheckpointStore(tmp_path)
    store.save(ModelCheckpoint("digits", "t", 0, 330, [first.get_state()]))
    ckpt = store.load("t", 0, "digits")
    assert ckpt is not None and ckpt.offset == 330
    assert [p.name for p in (tmp_path / "t" / "p0").iterdir()] == ["digits.npz"]  # no temp
    resumed = Pipeline(cfg, "1", ref)
    resumed.set_state(*ckpt.versions[0])
    assert resumed.seq == 330
    assert _feed(resumed, [(500, 1.5)]) == straight


def test_checkpoint_of_another_configuration_is_refused(setup) -> None:
    cfg, ref = setup
    arrays, meta = Pipeline(cfg, "1", ref).get_state()
    meta["stages"]["drift.ks"] = {}
    with pytest.raises(ValueError, match="has detectors"):
        Pipeline(cfg, "1", ref).set_state(arrays, meta)


def test_dimension_change_is_rejected_with_the_fix(setup) -> None:
    cfg, ref = setup
    with pytest.raises(ValueError, match="embedding has 4 dims, model 'digits' version '1' "
                                         "expects 8"):
        Pipeline(cfg, "1", ref).process_arrays(np.zeros((3, 4), np.float32), ["a", "b", "c"],
                                        np.zeros(3, np.int64))


def test_reference_directory_round_trip(setup, tmp_path: Path) -> None:
    cfg, ref = setup
    out = save_reference(ref, tmp_path / "ref")
    manifest = json.loads((out / "manifest.json").read_text())
    assert [d["id"] for d in manifest["detectors"]] == ["drift.mmd", "drift.mmd_online", "ood.knn"]
    loaded = load_reference(cfg, out)
    X = _batch(50, 0, 1.0)[0]
    assert np.array_equal(loaded.detectors["ood.knn"].score(X), ref.detectors["ood.knn"].score(X))
    other = ModelConfig.model_validate({"name": "digits", "detectors": [{"name": "drift.ks"}]})
    with pytest.raises(ValueError, match="repwatch reference fit"):
        load_reference(other, out)


def _finding(**kw) -> Finding:
    base = dict(kind="drift", model="digits", model_version="3", detector="drift.mmd",
                statistic=0.2, threshold=0.01, p_value=0.009,
                window={"kind": "count", "start": 400, "end": 600, "first_ts_ms": 1,
                        "last_ts_ms": 1_700_000_000_123, "records": 200},
                evidence=["r1", "r2"], details={"effect_size": float("nan")})
    base.update(kw)
    return Finding(**base)  # type: ignore[arg-type]


def test_cloudevent_fields_and_deterministic_id() -> None:
    f = _finding()
    ev = to_cloudevent(f, "repwatch/monitor")
    assert ev["specversion"] == "1.0" and ev["type"] == "io.repwatch.alert.drift"
    assert ev["subject"] == "digits" and ev["time"] == "2023-11-14T22:13:20.123Z"
    assert ev["data"]["evidence"] == {"record_ids": ["r1", "r2"]}
    assert ev["data"]["details"]["effect_size"] is None  # NaN is not JSON
    json.loads(encode_event(ev))  # strict JSON
    # Same model/version/detector/window ⇒ same id, whatever the statistic; else different.
    assert ev["id"] == dedupe_key(_finding(statistic=0.5, evidence=[]), "repwatch/monitor")
    others = [_finding(model_version="4"), _finding(detector="drift.ks"),
              _finding(window={**f.window, "start": 401}), _finding(kind="ood"),
              _finding(key="client-a"), _finding(key="client-b")]
    ids = {dedupe_key(o, "repwatch/monitor") for o in others}
    assert len(ids | {ev["id"]}) == 7
    assert encode_event(ev) == encode_event(to_cloudevent(f, "repwatch/monitor"))
    # Another deployment (source URI or instance id) never emits the same id.
    assert to_cloudevent(f, "repwatch://monitor/other")["id"] != ev["id"]
    assert to_cloudevent(f, "repwatch/monitor", "run-2")["id"] != ev["id"]


def test_kafka_alert_messages_are_structured_mode_without_ce_headers() -> None:
    from monitor.alerts import kafka_headers

    headers = dict(kafka_headers(to_cloudevent(_finding(), "repwatch://monitor/g")))
    assert headers == {"content-type": b"application/cloudevents+json"}


def test_deprecated_signature_is_hmac_sha256_of_the_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    assert sign(body, b"k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    with pytest.deprecated_call():
        assert verify(body, b"k", sign(body, b"k"))
    with pytest.deprecated_call():
        assert not verify(body + b" ", b"k", sign(body, b"k"))
