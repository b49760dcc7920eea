"""Security stages on the bundled digits model: adversarial, attack (per client), poisoning.

The attacks are real ART attacks, shipped small in ``tests/data/security_attacks.npz``
(``tests/data/make_security_attacks.py`` regenerates it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor import records as R
from monitor.batch import RecordBatch, route
from monitor.config import Config, ModelConfig
from monitor.pipeline import Pipeline, check_inputs
from monitor.reference import ReferenceSet, load_reference
from serving.encoders.models import DIGITS_CLASSIFIER, digits_data
from serving.reference import build_reference, reference_arrays

DATA = Path(__file__).resolve().parents[1] / "data" / "security_attacks.npz"
DETECTORS: list[dict[str, Any]] = [
    {"name": "adversarial.combined", "params": {"fpr": 0.01},
     "window": {"size": 100, "min_records": 20}, "min_flagged_fraction": 0.1},
    {"name": "adversarial.query", "key": "client",
     "params": {"max_clients": 200, "index_size": 1 << 14}},
    {"name": "poisoning.feedback", "records": "feedback", "params": {"window_size": 250}},
]


def digits_config(reference: Path | str, detectors: list[dict[str, Any]] | None = None,
                  **extra: Any) -> dict[str, Any]:
    return {"models": [{
        "name": "digits", "path": str(DIGITS_CLASSIFIER), "embedding_output": "embedding",
        "logits_output": "logits", "penultimate_output": "penultimate",
        "input_hashes": {"value_range": [0, 16]}, "reference": str(reference),
        "detectors": DETECTORS if detectors is None else detectors}], **extra}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    X, y, split = digits_data()
    ref_rows = np.concatenate([split["train"], split["val"]])
    cfg = Config.model_validate(digits_config(tmp_path_factory.mktemp("sec") / "ref.npz"))
    m = cfg.models[0]
    assert m.reference is not None
    build_reference(m, X[ref_rows], y[ref_rows], m.reference)
    return {"X": X, "y": y, "test": np.asarray(split["test"]), "model": m,
            "ref": load_reference(m, m.reference), "attacks": dict(np.load(DATA))}


def records(m: ModelConfig, X: np.ndarray, *, kind: str = "inference", labels: Any = None,
            clients: list[str] | None = None, start: int = 0) -> list[R.Record]:
    """Records as the sidecar streams them for raw inputs ``X`` (through the real graph)."""
    a = reference_arrays(m, X)
    return [R.Record(
        model="digits", record_id=f"r{start + i}", timestamp_ms=1_700_000_000_000 + start + i,
        embedding=a["X"][i], kind=kind, model_version="1",  # type: ignore[arg-type]
        prediction=int(a["predictions"][i]), scores=a["logits"][i],
        label=None if labels is None else int(labels[i]),
        client_id=None if clients is None else clients[i],
        input_digest=hashlib.blake2b(X[i].astype(np.float32).tobytes(), digest_size=16).digest(),
        features={"penultimate": a["penultimate"][i]}, input_hashes=a["input_hashes"][i])
        for i in range(len(X))]


def batch(recs: list[R.Record], dim: int) -> RecordBatch:
    out, rejects = route("digits", list(enumerate(recs)), list(range(len(recs))), dim)
    assert not rejects
    return out["1"]


def pipeline(digits: dict[str, Any]) -> tuple[Pipeline, ReferenceSet]:
    ref = digits["ref"]
    return Pipeline(digits["model"], "1", ref), ref


def test_each_family_gets_its_stage_and_alerts_on_its_attack(digits: dict[str, Any]) -> None:
    pipe, ref = pipeline(digits)
    assert [s.kind for s in pipe.stages] == ["adversarial", "attack", "poisoning"]
    m, X, y, te = digits["model"], digits["X"], digits["y"], digits["test"]
    # clean traffic from 5 benign clients (two adversarial windows): no finding of any kind
    clean = te[:200]
    clients = [f"benign-{i % 5}" for i in range(len(clean))]
    rep = pipe.process(batch(records(m, X[clean], clients=clients), ref.dim))
    assert rep.findings == [] and rep.missing_input == {}
    adv_obs = next(o for o in rep.observations if o.stage == "adversarial")
    assert adv_obs.records == len(clean) and adv_obs.flagged <= 0.05 * len(clean)
    # PGD eps=0.2 (ART, white box, only those that flip the prediction): one adversarial alert
    pgd = digits["attacks"]["pgd_0.2"] * 16
    rep = pipe.process(batch(records(m, pgd, start=10_000), ref.dim))
    adv = [f for f in rep.findings if f.kind == "adversarial"]
    assert len(adv) == 1 and adv[0].details["flagged"] >= 0.6 * 100
    ev = adv[0].details["evidence_records"]
    assert ev and ev[0]["id"] == adv[0].evidence[0]
    assert set(ev[0]["signal_tails"]) == {"disagreement", "mahalanobis", "lid", "knn"}
    assert adv[0].details["flagged_ssl_disagrees"] > 0
    assert any(e["ssl_class"] is not None and e["ssl_class"] != e["prediction"] for e in ev)
    # one HopSkipJump run (ART, label-only) from one client: exactly one attack finding for it
    hsj = digits["attacks"]["hsj_queries"] * 16
    rep = pipe.process(batch(records(m, hsj, clients=["mallory"] * len(hsj), start=20_000),
                             ref.dim))
    attack = [f for f in rep.findings if f.kind == "attack"]
    assert [f.key for f in attack] == ["mallory"]
    assert attack[0].details["flagged_queries"] >= attack[0].details["k"]
    assert attack[0].evidence and all(e.startswith("r2") for e in attack[0].evidence)
    # poisoned feedback: 10 % of a window's labels flipped -> one poisoning finding
    fb = te[:250]
    lab = y[fb].copy()
    lab[::10] = (lab[::10] + 3) % 8
    rep = pipe.process(batch(records(m, X[fb], kind="feedback", labels=lab, start=30_000),
                             ref.dim))
    poison = [f for f in rep.findings if f.kind == "poisoning"]
    assert len(poison) == 1 and poison[0].p_value is not None and poison[0].p_value < 1e-3
    flipped = {f"r{30_000 + i}" for i in range(0, 250, 10)}
    assert len(set(poison[0].evidence) & flipped) >= 0.8 * len(poison[0].evidence)
    rec = poison[0].details["evidence_records"][0]
    assert rec["neighbour_class"] != rec["label"] and rec["signals"]


def test_malformed_or_missing_inputs_are_counted_and_never_stop_the_stream(
        digits: dict[str, Any]) -> None:
    pipe, ref = pipeline(digits)
    m, X, te = digits["model"], digits["X"], digits["test"]
    good = records(m, X[te[:8]], clients=["c"] * 8)
    bad = [
        R.Record(**{**vars(good[0]), "record_id": "no-pen", "features": None}),
        R.Record(**{**vars(good[1]), "record_id": "short-pen",
                    "features": {"penultimate": np.ones(3, np.float32)}}),
        R.Record(**{**vars(good[2]), "record_id": "str-pred", "prediction": "seven"}),
        R.Record(**{**vars(good[3]), "record_id": "no-client", "client_id": None}),
        R.Record(**{**vars(good[4]), "record_id": "short-hash",
                    "input_hashes": np.zeros(5, np.uint64)}),
        R.Record(**{**vars(good[5]), "record_id": "class-99", "prediction": 99}),
    ]
    fb = records(m, X[te[:4]], kind="feedback", labels=[0, 1, 2, 3])
    fb_bad = [R.Record(**{**vars(fb[0]), "record_id": "label-99", "label": 99}),
              R.Record(**{**vars(fb[1]), "record_id": "label-str", "label": "cat"})]
    rep = pipe.process(batch(good[6:] + bad + fb + fb_bad, ref.dim))
    # adversarial: no/short penultimate, string prediction, unknown class; attack: no client,
    # short hashes; poisoning: out-of-range and string labels
    assert rep.missing_input == {"adversarial.combined": 4, "adversarial.query": 2,
                                 "poisoning.feedback": 2}
    seen = {o.stage: o.records for o in rep.observations}
    assert seen == {"adversarial": 4, "attack": 6}  # the feedback window is not closed yet


def test_attack_state_round_trips_and_resumes_identically(digits: dict[str, Any]) -> None:
    m, X, te = digits["model"], digits["X"], digits["test"]
    hsj = digits["attacks"]["hsj_queries"] * 16
    a, ref = pipeline(digits)
    first = records(m, np.vstack([X[te[:40]], hsj[:6]]),
                    clients=["b"] * 40 + ["mallory"] * 6)
    rest = records(m, hsj[6:], clients=["mallory"] * (len(hsj) - 6), start=100)
    a.process(batch(first, ref.dim))
    b = Pipeline(m, "1", ref)
    b.set_state(*a.get_state())
    fa, fb = a.process(batch(rest, ref.dim)), b.process(batch(rest, ref.dim))
    assert [(f.kind, f.key, f.window) for f in fa.findings] == [
        (f.kind, f.key, f.window) for f in fb.findings]
    assert any(f.kind == "attack" for f in fa.findings)


def test_config_check_rejects_wrong_inputs_with_the_config_path(tmp_path: Path) -> None:
    cases = {
        ("adversarial.combined", "input", "logits"): "input names that feature",
        ("adversarial.combined", "records", "feedback"): "set records: inference",
        ("adversarial.query", "key", "none"): "set key: client",
        ("adversarial.query", "input", "penultimate"): "set input: embedding",
        ("poisoning.feedback", "records", "inference"): "set records: feedback",
        ("poisoning.feedback", "input", "logits"): "set input: embedding",
        ("adversarial.disagreement", "key", "client"): "remove key",
    }
    base = {d["name"]: d for d in DETECTORS}
    base["adversarial.disagreement"] = {"name": "adversarial.disagreement"}
    for (name, field, value), fix in cases.items():
        dets = [{"name": "drift.mmd"}, {**base[name], field: value}]
        errors = check_inputs(Config.model_validate(digits_config(tmp_path / "r.npz", dets)))
        assert len(errors) == 1 and errors[0].startswith("models[0].detectors[1] (digits): ")
        assert fix in errors[0], errors
    assert check_inputs(Config.model_validate(digits_config(tmp_path / "r.npz"))) == []


def test_reference_without_what_a_detector_needs_names_the_missing_array(
        tmp_path: Path, digits: dict[str, Any]) -> None:
    m = digits["model"]
    full = dict(np.load(m.reference))
    for drop, det in (("labels", "adversarial.combined"), ("penultimate", "adversarial.combined"),
                      ("input_hashes", "adversarial.query"), ("labels", "poisoning.feedback")):
        path = tmp_path / f"no-{drop}.npz"
        np.savez(path, **{k: v for k, v in full.items() if k != drop})
        only = Config.model_validate(digits_config(
            path, [d for d in DETECTORS if d["name"] == det])).models[0]
        with pytest.raises(ValueError, match=f"{det}.*add an? '{drop}' array"):
            load_reference(only, path)
    # raw inputs instead of hashes: hashed with the model's input_hashes, as the sidecar does
    path = tmp_path / "raw.npz"
    X, _, split = digits_data()
    np.savez(path, **{k: v for k, v in full.items() if k != "input_hashes"},
             inputs=X[np.concatenate([split["train"], split["val"]])])
    only = Config.model_validate(digits_config(path, [DETECTORS[1]])).models[0]
    det = load_reference(only, path).detectors["adversarial.query"]
    assert det.tau_ == digits["ref"].detectors["adversarial.query"].tau_


def test_attack_memory_stays_bounded_under_many_distinct_clients(
        digits: dict[str, Any]) -> None:
    """5k distinct pseudonyms through a stage bounded at 200 clients: memory is fixed (the
    100k-client run is the slow variant below)."""
    _bounded(digits, 5_000)


@pytest.mark.slow
def test_attack_memory_stays_bounded_under_100k_distinct_clients(
        digits: dict[str, Any]) -> None:
    _bounded(digits, 100_000)


def _bounded(digits: dict[str, Any], n: int) -> None:
    from monitor.security import AttackStage

    pipe, ref = pipeline(digits)
    stage = next(s for s in pipe.stages if isinstance(s, AttackStage))
    base = stage.det.memory_bytes()
    state0 = sum(a.nbytes for a in stage.get_state()[0].values())
    m, X, te = digits["model"], digits["X"], digits["test"]
    rows = np.resize(te, 1000)
    proto = records(m, X[rows])
    evicted = 0
    for lo in range(0, n, 1000):
        recs = [R.Record(**{**vars(r), "record_id": f"q{lo + i}",
                            "client_id": hashlib.sha256(b"%d" % (lo + i)).hexdigest()})
                for i, r in enumerate(proto)]
        rep = pipe.process(batch(recs, ref.dim))
        evicted += sum(o.clients_evicted for o in rep.observations if o.stage == "attack")
    assert stage.det.n_clients == 200 and evicted == n - 200
    assert stage.det.memory_bytes() == base
    arrays, _ = stage.get_state()
    assert sum(a.nbytes for a in arrays.values()) == state0  # the checkpoint too
