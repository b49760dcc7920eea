from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from monitor import records as R

SCHEMA = Path(R.__file__).parent / "schema" / "record-v1.yaml"

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
text = st.text(min_size=1, max_size=20)


@st.composite
def record_strategy(draw: st.DrawFn) -> R.Record:
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    elements = st.floats(
        allow_nan=False, allow_infinity=False, width=16 if dtype is np.float16 else 32
    )
    dim = draw(st.integers(1, 64))
    kind = draw(st.sampled_from(R.KINDS))
    scores = draw(st.none() | hnp.arrays(np.float32, st.integers(1, 10), elements=finite))
    return R.Record(
        model=draw(text),
        model_version=draw(st.text(max_size=5)),
        record_id=draw(st.text(max_size=36)),
        timestamp_ms=draw(st.integers(0, R.MAX_TS_MS)),
        kind=kind,
        embedding=draw(hnp.arrays(dtype, dim, elements=elements)),
        prediction=draw(st.none() | st.integers(-(2**31), 2**31) | st.lists(finite, max_size=4)),
        scores=scores,
        label=draw(st.integers(0, 9) | text) if kind == "feedback" else None,
        client_id=draw(st.none() | st.text(max_size=16)),
        input_digest=draw(st.none() | st.binary(max_size=16)),
    )


@settings(max_examples=300, deadline=None)
@given(record_strategy())
def test_round_trip(record: R.Record) -> None:
    decoded = R.decode(R.encode(record))
    assert decoded == record
    assert decoded.embedding.dtype == record.embedding.dtype
    batch = R.decode_many([R.encode(record)])
    assert batch.errors == [] and batch.records == [record]


def _valid_map() -> dict:
    emb = np.arange(4, dtype="<f4")
    return {
        "v": 1,
        "model": "digits",
        "model_version": "1",
        "id": "r1",
        "ts": 5,
        "kind": "inference",
        "embedding": {"dtype": "f4", "dim": 4, "data": emb.tobytes()},
    }


def _pack(m: dict) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


def test_embedding_bytes_are_raw_little_endian() -> None:
    rec = R.decode(_pack(_valid_map()))
    np.testing.assert_array_equal(rec.embedding, [0, 1, 2, 3])
    assert rec.embedding.dtype == np.dtype("<f4")


def test_unknown_fields_are_ignored() -> None:
    m = _valid_map() | {"future_field": [1, 2, 3]}
    assert R.decode(_pack(m)).record_id == "r1"


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda m: m.update(v=2), "v", "schema version 2"),
        (lambda m: m.pop("model"), "model", "missing"),
        (lambda m: m.pop("ts"), "ts", "missing"),
        (lambda m: m.update(ts="yesterday"), "ts", "must be int"),
        (lambda m: m.update(ts=True), "ts", "must be int"),
        (lambda m: m.update(kind="training"), "kind", "must be one of"),
        (lambda m: m["embedding"].update(dim=5), "embedding.data", "dim 5 of f4 needs 20"),
        (lambda m: m["embedding"].update(dtype="f8"), "embedding.dtype", "must be one of"),
        (lambda m: m["embedding"].update(dim=0), "embedding.dim", "1..65536"),
        (lambda m: m["embedding"].pop("data"), "embedding.data", "must be bytes"),
        (lambda m: m.update(embedding=[1.0, 2.0]), "embedding", "must be dict"),
        (lambda m: m.update(kind="feedback"), "label", "feedback records carry a label"),
        (lambda m: m.update(client_id=7), "client_id", "must be str"),
        (
            lambda m: m["embedding"].update(data=np.array([0, np.nan, 1, 2], "<f4").tobytes()),
            "embedding",
            "NaN or inf",
        ),
        (
            lambda m: m.update(
                scores={"dtype": "f4", "dim": 1, "data": np.array([np.inf], "<f4").tobytes()}
            ),
            "scores",
            "NaN or inf",
        ),
    ],
)
def test_malformed_records_name_the_field(mutate, field: str, words: str) -> None:
    m = _valid_map()
    mutate(m)
    with pytest.raises(R.RecordError) as info:
        R.decode(_pack(m))
    assert info.value.field == field
    assert words in str(info.value)
    batch = R.decode_many([_pack(_valid_map()), _pack(m)])
    assert [i for i, _ in batch.errors] == [1] and len(batch.records) == 1
    assert batch.errors[0][1].field == field


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x93\x01\x02", json.dumps({"v": 1}).encode(), b"\x81"]
)
def test_garbage_bytes_are_a_record_error(data: bytes) -> None:
    with pytest.raises(R.RecordError) as info:
        R.decode(data)
    assert info.value.field in {"<record>", "v"}


def test_encode_rejects_what_decode_would_reject() -> None:
    base = dict(model="m", record_id="r", timestamp_ms=1, embedding=np.zeros(3, np.float32))
    with pytest.raises(R.RecordError, match="float32 or float16"):
        R.encode(R.Record(**base | {"embedding": np.zeros(3)}))
    with pytest.raises(R.RecordError, match="NaN"):
        R.encode(R.Record(**base | {"embedding": np.array([np.nan], np.float32)}))
    with pytest.raises(R.RecordError, match="only feedback"):
        R.encode(R.Record(**base | {"label": 3}))
    with pytest.raises(R.RecordError, match="1-D"):
        R.encode(R.Record(**base | {"embedding": np.zeros((2, 2), np.float32)}))


@pytest.mark.parametrize("data", [b"", b"1234567", b"\0" * (8 * R.MAX_HASHES + 8), "text"])
def test_input_hashes_out_of_bounds_are_refused_naming_the_field(data: object) -> None:
    m = msgpack.unpackb(R.encode(R.Record("m", "r", 1, np.zeros(2, np.float32))))
    m["input_hashes"] = data
    with pytest.raises(R.RecordError, match="input_hashes"):
        R.decode(_pack(m))
    fine = {**m, "input_hashes": np.array([1, 2**64 - 1], "<u8").tobytes()}
    hashes = R.decode(_pack(fine)).input_hashes
    assert hashes is not None and hashes.tolist() == [1, 2**64 - 1]


def test_schema_file_documents_exactly_the_encoded_fields() -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["version"] == R.SCHEMA_VERSION
    full = R.Record(
        model="m",
        record_id="r",
        timestamp_ms=1,
        embedding=np.zeros(2, np.float32),
        kind="feedback",
        prediction=1,
        scores=np.zeros(2, np.float32),
        label=1,
        client_id="c",
        input_digest=b"d",
        features={"penultimate": np.ones(3, np.float32)},
        input_hashes=np.arange(3, dtype=np.uint64),
    )
    encoded = msgpack.unpackb(R.encode(full))
    assert R.decode(R.encode(full)) == full
    assert set(encoded) == set(schema["fields"])
    required = {k for k, v in schema["fields"].items() if v["required"]}
    for key in required:
        m = dict(encoded)
        m.pop(key)
        with pytest.raises(R.RecordError):
            R.decode(_pack(m))


def test_stack_embeddings() -> None:
    recs = [R.decode(_pack(_valid_map())) for _ in range(3)]
    assert R.stack_embeddings(recs).shape == (3, 4)
    other = _valid_map()
    other["embedding"] = {"dtype": "f4", "dim": 2, "data": np.zeros(2, "<f4").tobytes()}
    with pytest.raises(ValueError, match="mixed embedding dimensions"):
        R.stack_embeddings([*recs, R.decode(_pack(other))])


def test_huge_finite_values_are_not_mistaken_for_inf() -> None:
    # The fast finiteness check overflows on these; the exact check must then accept them.
    emb = np.full(8, 3e38, dtype=np.float32)
    rec = R.Record(model="m", record_id="r", timestamp_ms=1, embedding=emb)
    np.testing.assert_array_equal(R.decode(R.encode(rec)).embedding, emb)


def test_decode_many_rejects_each_non_finite_record_alone() -> None:
    good = R.Record(model="m", record_id="a", timestamp_ms=1, embedding=np.ones(4, np.float32))
    nan_emb = dataclasses.replace(good, record_id="b",
                                  embedding=np.array([1, np.nan, 0, 0], np.float32))
    inf_scores = dataclasses.replace(good, record_id="c",
                                     scores=np.array([np.inf, 0], np.float32))
    nan_feature = dataclasses.replace(good, record_id="d", kind="feedback", label=1,
                                      features={"penultimate": np.array([np.nan], np.float32)})
    msgs = [R.encode(good), _unsafe_encode(nan_emb), _unsafe_encode(inf_scores),
            _unsafe_encode(nan_feature), R.encode(good)]
    batch = R.decode_many(msgs)
    assert [r.record_id for r in batch.records] == ["a", "a"]
    assert [(i, e.field) for i, e in batch.errors] == [
        (1, "embedding"), (2, "scores"), (3, "features.penultimate")]


def _unsafe_encode(rec: R.Record) -> bytes:
    """What a buggy producer could send: the record packed without the encoder's checks."""
    m = {"v": 1, "model": rec.model, "model_version": rec.model_version, "id": rec.record_id,
         "ts": rec.timestamp_ms, "kind": rec.kind,
         "embedding": {"dtype": "f4", "dim": rec.embedding.size,
                       "data": rec.embedding.tobytes()}}
    if rec.scores is not None:
        m["scores"] = {"dtype": "f4", "dim": rec.scores.size, "data": rec.scores.tobytes()}
    if rec.label is not None:
        m["label"] = rec.label
    for k, v in (rec.features or {}).items():
        m.setdefault("features", {})[k] = {"dtype": "f4", "dim": v.size, "data": v.tobytes()}
    return msgpack.packb(m, use_bin_type=True)
