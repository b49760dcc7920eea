"""Record format v1: the contract between the serving sidecar and the monitor.

One Kafka message on ``repwatch.records`` (key = model name) holds one record, encoded as a
**MessagePack map** whose fields are documented in ``monitor/schema/record-v1.yaml``.

Why MessagePack rather than Avro: a record is a small map whose bulk is one embedding; msgpack
carries it as a native ``bin`` value (raw little-endian bytes, no float-by-float encoding), needs
no schema registry for a consumer in another language to decode it (every mainstream language
has a msgpack library), tolerates unknown fields without a writer/reader schema resolution step,
and its C extension decodes a d=384 record in a few microseconds. Avro would add a schema
registry (or a schema embedded per message) for no gain in size: the embedding bytes dominate.

Decoding validates everything and raises :class:`RecordError` naming the field: a record is
either exactly what the producer meant or rejected (the monitor sends it to the dead-letter
topic with the error as the reason). Every field is bounded (:data:`LIMITS`): strings by length,
tensors by ``MAX_DIM``, the timestamp to a plausible range inside int64, so one record can
neither crash a worker nor blow up the state it is buffered in.

One encoder serves both sides: :func:`pack_fields` builds and packs the map from plain values
(the sidecar calls it per row with bytes it already holds), :func:`encode` wraps it for a
:class:`Record`. A value it cannot encode raises :class:`RecordError` for that record only.

This module imports only numpy and msgpack, so it works without Kafka installed.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import numpy as np
from numpy.typing import NDArray

SCHEMA_VERSION = 1
KINDS = ("inference", "feedback", "reference")
Kind = Literal["inference", "feedback", "reference"]
# Wire dtype codes: little-endian float32 / float16.
_DTYPES: dict[str, np.dtype[Any]] = {"f4": np.dtype("<f4"), "f2": np.dtype("<f2")}
_DTYPE_CODES = {np.dtype("float32"): "f4", np.dtype("float16"): "f2"}
MAX_DIM = 65536
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: inside int64, and plausible
MAX_STR = 1024  # characters of id, model_version, client_id and string labels/predictions
MAX_MODEL = 255  # characters of the model name (a Kafka key and a metric label)
MAX_FEATURES = 16  # named feature vectors per record
MAX_HASHES = 4096  # input_hashes per record (window hashes of the raw input, uint64 each)
LIMITS = {"ts": (0, MAX_TS_MS), "str": MAX_STR, "model": MAX_MODEL, "dim": MAX_DIM,
          "features": MAX_FEATURES, "hashes": MAX_HASHES}
WireTensor = tuple[str, int, bytes]  # (dtype code, dim, raw little-endian bytes)

Prediction = int | float | str | list[int] | list[float] | None
Label = int | float | str | None


class RecordError(ValueError):
    """A record failed to encode or decode; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"record field {field!r}: {problem}")


@dataclass(frozen=True, eq=False)
class Record:
    """One prediction (or labelled feedback, or reference sample) and its embedding."""

    model: str
    record_id: str
    timestamp_ms: int
    embedding: NDArray[np.floating[Any]]
    kind: Kind = "inference"
    model_version: str = ""
    prediction: Prediction = None
    scores: NDArray[np.floating[Any]] | None = None
    label: Label = None
    client_id: str | None = None
    input_digest: bytes | None = None
    schema_version: int = SCHEMA_VERSION
    features: dict[str, NDArray[np.floating[Any]]] | None = None  # e.g. {"penultimate": ...}
    input_hashes: NDArray[np.uint64] | None = None  # window hashes of the raw input (uint64)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, dict) and isinstance(b, dict):
                if a.keys() != b.keys() or not all(
                    x.dtype == b[k].dtype and np.array_equal(x, b[k]) for k, x in a.items()
                ):
                    return False
            elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or a.dtype != b.dtype or not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]


_new_record = object.__new__
# The fast finiteness check (a dot product) overflows on |values| > ~1e19, harmlessly: the exact
# check then decides. Silence that one warning, for this module only.
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, __name__)


def _tensor(name: str, arr: NDArray[Any]) -> WireTensor:
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise RecordError(name, f"must be 1-D, got shape {arr.shape}")
    code = _DTYPE_CODES.get(arr.dtype)
    if code is None:
        raise RecordError(name, f"dtype must be float32 or float16, got {arr.dtype}")
    if not 0 < arr.shape[0] <= MAX_DIM:
        raise RecordError(name, f"must have 1..{MAX_DIM} values, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise RecordError(name, "contains NaN or inf")
    return code, int(arr.shape[0]), arr.astype(_DTYPES[code]).tobytes()


def _wire(t: WireTensor) -> dict[str, Any]:
    return {"dtype": t[0], "dim": t[1], "data": t[2]}


def _check_str(name: str, value: Any, limit: int = MAX_STR, *, empty: bool = True) -> None:
    if type(value) is not str:
        raise RecordError(name, f"must be str, got {type(value).__name__}")
    if len(value) > limit:
        raise RecordError(name, f"has {len(value)} characters, the limit is {limit}")
    if not empty and not value:
        raise RecordError(name, "must be a non-empty string")


def check_timestamp(ts: Any, name: str = "ts") -> int:
    """An event time in ms since the epoch, inside int64 and the plausible range."""
    if type(ts) is not int:
        raise RecordError(name, f"must be int, got {type(ts).__name__}")
    if not 0 <= ts <= MAX_TS_MS:
        raise RecordError(name, f"{ts} ms is outside 0..{MAX_TS_MS} (1970 to 9999)")
    return ts


_PACKER = msgpack.Packer(use_bin_type=True)


def pack_fields(
    *,
    model: str,
    model_version: str,
    record_id: str,
    ts: int,
    kind: str,
    embedding: WireTensor,
    prediction: Prediction = None,
    scores: WireTensor | None = None,
    label: Label = None,
    client_id: str | None = None,
    input_digest: bytes | None = None,
    features: dict[str, WireTensor] | None = None,
    input_hashes: bytes | None = None,
    packer: msgpack.Packer | None = None,
) -> bytes:
    """Validate plain field values and pack one v1 record (the single encoder of the format)."""
    if kind not in KINDS:
        raise RecordError("kind", f"must be one of {KINDS}, got {kind!r}")
    if label is not None and kind != "feedback":
        raise RecordError("label", f"only feedback records carry a label, this is {kind!r}")
    # Lengths are bounded by the sidecar's intake (serving.limits) and by the decoder: a record
    # over the format's limits is sent and dead-lettered by the monitor with its reason.
    _check_str("model", model, 1 << 62, empty=False)
    _check_str("model_version", model_version, 1 << 62)
    _check_str("id", record_id, 1 << 62)
    if isinstance(ts, np.integer):
        ts = int(ts)
    check_timestamp(ts)
    m: dict[str, Any] = {
        "v": SCHEMA_VERSION, "model": model, "model_version": model_version, "id": record_id,
        "ts": ts, "kind": kind, "embedding": _wire(embedding),
    }
    if prediction is not None:
        if isinstance(prediction, str):
            _check_str("prediction", prediction)
        elif isinstance(prediction, list) and len(prediction) > MAX_DIM:
            raise RecordError("prediction", f"has {len(prediction)} values, limit {MAX_DIM}")
        m["prediction"] = prediction
    if scores is not None:
        m["scores"] = _wire(scores)
    if label is not None:
        if isinstance(label, str):
            _check_str("label", label)
        m["label"] = label
    if client_id is not None:
        _check_str("client_id", client_id)
        m["client_id"] = client_id
    if input_digest is not None:
        if len(input_digest) > 64:
            raise RecordError("input_digest", f"has {len(input_digest)} bytes, the limit is 64")
        m["input_digest"] = bytes(input_digest)
    if features:
        if len(features) > MAX_FEATURES:
            raise RecordError("features", f"has {len(features)} entries, limit {MAX_FEATURES}")
        for k in features:
            _check_str("features", k, 64, empty=False)
        m["features"] = {k: _wire(t) for k, t in features.items()}
    if input_hashes is not None:
        _check_hashes(input_hashes)
        m["input_hashes"] = bytes(input_hashes)
    try:
        return (packer or _PACKER).pack(m)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordError("prediction", f"cannot be encoded: {exc}") from None


def _check_hashes(data: Any) -> None:
    if not isinstance(data, bytes):
        raise RecordError("input_hashes", f"must be bytes, got {type(data).__name__}")
    if len(data) % 8 or not 0 < len(data) <= 8 * MAX_HASHES:
        raise RecordError("input_hashes", f"has {len(data)} bytes; it holds 1..{MAX_HASHES} "
                          "little-endian uint64 values (a multiple of 8 bytes)")


def _hashes(data: bytes | None) -> NDArray[np.uint64] | None:
    return None if data is None else np.frombuffer(data, dtype="<u8").astype(np.uint64)


def encode(record: Record) -> bytes:
    """Encode a record to bytes (msgpack map). Validates what the producer controls."""
    return pack_fields(
        model=record.model,
        model_version=record.model_version,
        record_id=record.record_id,
        ts=record.timestamp_ms if type(record.timestamp_ms) is int else int(record.timestamp_ms),
        kind=record.kind,
        embedding=_tensor("embedding", record.embedding),
        prediction=record.prediction,
        scores=None if record.scores is None else _tensor("scores", record.scores),
        label=record.label,
        client_id=record.client_id,
        input_digest=record.input_digest,
        features=None if not record.features else {
            k: _tensor(f"features.{k}", v) for k, v in record.features.items()
        },
        input_hashes=None if record.input_hashes is None
        else np.ascontiguousarray(record.input_hashes, dtype="<u8").tobytes(),
    )


def _require(m: dict[str, Any], key: str, types: type | tuple[type, ...]) -> Any:
    try:
        value = m[key]
    except KeyError:
        raise RecordError(key, "is missing") from None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise RecordError(key, f"must be {_type_names(types)}, got {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


def _decode_tensor(name: str, t: Any, check_finite: bool = True) -> NDArray[Any]:
    if not isinstance(t, dict):
        raise RecordError(name, f"must be a map with dtype/dim/data, got {type(t).__name__}")
    code = _require(t, "dtype", str) if "dtype" in t else None
    if code is None:
        raise RecordError(f"{name}.dtype", "is missing")
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise RecordError(f"{name}.dtype", f"must be one of {sorted(_DTYPES)}, got {code!r}")
    dim = t.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= MAX_DIM:
        raise RecordError(f"{name}.dim", f"must be an integer in 1..{MAX_DIM}, got {dim!r}")
    data = t.get("data")
    if not isinstance(data, bytes):
        raise RecordError(f"{name}.data", f"must be bytes, got {type(data).__name__}")
    if len(data) != dim * dtype.itemsize:
        raise RecordError(
            f"{name}.data",
            f"has {len(data)} bytes, dim {dim} of {code} needs {dim * dtype.itemsize}",
        )
    arr = np.frombuffer(data, dtype=dtype)
    if check_finite and not np.isfinite(arr).all():
        raise RecordError(name, "contains NaN or inf")
    return arr


def _decode_map(m: Any, *, check_finite: bool = True) -> Record:
    """Fast path for well-formed records; anything unusual goes to the precise validator."""
    try:
        emb = m["embedding"]
        data = emb["data"]
        dtype = _DTYPES[emb["dtype"]]
        dim = emb["dim"]
        model, version, rid, ts, kind = m["model"], m["model_version"], m["id"], m["ts"], m["kind"]
        sc = m.get("scores")
        ok = (
            m["v"] == SCHEMA_VERSION
            and type(model) is str
            and 0 < len(model) <= MAX_MODEL
            and type(version) is str
            and len(version) <= MAX_STR
            and type(rid) is str
            and len(rid) <= MAX_STR
            and type(ts) is int
            and 0 <= ts <= MAX_TS_MS
            and kind == "inference"  # other kinds carry labels/rules: precise path
            and type(dim) is int
            and 0 < dim <= MAX_DIM
            and type(data) is bytes
            and len(data) == dim * dtype.itemsize
            and "label" not in m
            and "features" not in m
            and type(m.get("client_id", "")) is str
            and len(m.get("client_id", "")) <= MAX_STR
            and type(m.get("input_digest", b"")) is bytes
            and len(m.get("input_digest", b"")) <= 64
            and type(m.get("prediction", 0)) in (int, float, list)
        )
        hashes = m.get("input_hashes")
        if ok and hashes is not None:
            ok = type(hashes) is bytes and 0 < len(hashes) <= 8 * MAX_HASHES and not len(
                hashes) % 8
        if ok and sc is not None:
            sdtype = _DTYPES[sc["dtype"]]
            sdim, sdata = sc["dim"], sc["data"]
            ok = (type(sdim) is int and 0 < sdim <= MAX_DIM and type(sdata) is bytes
                  and len(sdata) == sdim * sdtype.itemsize)
        pred = m.get("prediction")
        if ok and type(pred) is list:
            ok = len(pred) <= MAX_DIM
    except (KeyError, TypeError):
        ok = False
    if not ok:
        return _decode_map_checked(m, check_finite=check_finite)
    arr = np.frombuffer(data, dtype=dtype)
    scores = None if sc is None else np.frombuffer(sdata, dtype=sdtype)
    # A dot product is ~4x cheaper than isfinite().all() and is non-finite whenever an element
    # is; only then (or on float overflow of huge values) is the exact check needed.
    if check_finite:
        for name, a in (("embedding", arr), ("scores", scores)):
            if a is not None and not math.isfinite(a.dot(a)) and not np.isfinite(a).all():
                raise RecordError(name, "contains NaN or inf")
    # Frozen-dataclass __init__ costs a setattr per field; a decoded record is fully validated,
    # so fill its __dict__ directly (the hot path of the monitor: ~1 us saved per record).
    rec = _new_record(Record)
    rec.__dict__.update(
        model=model,
        record_id=rid,
        timestamp_ms=ts,
        embedding=arr,
        kind="inference",
        model_version=version,
        prediction=pred,
        scores=scores,
        label=None,
        client_id=m.get("client_id"),
        input_digest=m.get("input_digest"),
        schema_version=SCHEMA_VERSION,
        features=None,
        input_hashes=_hashes(hashes),
    )
    return rec


def _opt_str(m: dict[str, Any], key: str) -> str | None:
    value = m.get(key)
    if value is not None:
        _check_str(key, value)
    return value


def _decode_features(f: Any, check_finite: bool) -> dict[str, NDArray[Any]] | None:
    if f is None or f == {}:
        return None
    if not isinstance(f, dict):
        raise RecordError("features", f"must be a map of name to tensor, got {type(f).__name__}")
    if len(f) > MAX_FEATURES:
        raise RecordError("features", f"has {len(f)} entries, the limit is {MAX_FEATURES}")
    out = {}
    for k, t in f.items():
        _check_str("features", k, 64, empty=False)
        out[k] = _decode_tensor(f"features.{k}", t, check_finite)
    return out


def _decode_map_checked(m: Any, *, check_finite: bool = True) -> Record:
    if not isinstance(m, dict):
        raise RecordError("<record>", f"must be a msgpack map, got {type(m).__name__}")
    version = _require(m, "v", int)
    if version != SCHEMA_VERSION:
        raise RecordError("v", f"schema version {version} is not supported (this reads 1)")
    kind = _require(m, "kind", str)
    if kind not in KINDS:
        raise RecordError("kind", f"must be one of {KINDS}, got {kind[:64]!r}")
    label = m.get("label")
    if label is not None and not isinstance(label, int | float | str):
        raise RecordError("label", f"must be int, float or str, got {type(label).__name__}")
    if isinstance(label, str):
        _check_str("label", label)
    if kind == "feedback" and label is None:
        raise RecordError("label", "is missing (feedback records carry a label)")
    if label is not None and kind != "feedback":
        raise RecordError("label", f"only feedback records carry a label, this is {kind!r}")
    client_id = _opt_str(m, "client_id")
    digest = m.get("input_digest")
    if digest is not None and not isinstance(digest, bytes):
        raise RecordError("input_digest", f"must be bytes, got {type(digest).__name__}")
    if digest is not None and len(digest) > 64:
        raise RecordError("input_digest", f"has {len(digest)} bytes, the limit is 64")
    pred = m.get("prediction")
    if pred is not None and not isinstance(pred, int | float | str | list):
        raise RecordError("prediction", f"has unsupported type {type(pred).__name__}")
    if isinstance(pred, str):
        _check_str("prediction", pred)
    if isinstance(pred, list) and len(pred) > MAX_DIM:
        raise RecordError("prediction", f"has {len(pred)} values, the limit is {MAX_DIM}")
    scores = m.get("scores")
    hashes = m.get("input_hashes")
    if hashes is not None:
        _check_hashes(hashes)
    model = _require(m, "model", str)
    _check_str("model", model, MAX_MODEL, empty=False)
    model_version = _require(m, "model_version", str)
    _check_str("model_version", model_version)
    record_id = _require(m, "id", str)
    _check_str("id", record_id)
    return Record(
        model=model,
        model_version=model_version,
        record_id=record_id,
        timestamp_ms=check_timestamp(_require(m, "ts", int)),
        kind=kind,
        embedding=_decode_tensor("embedding", _require(m, "embedding", dict), check_finite),
        prediction=pred,
        scores=None if scores is None else _decode_tensor("scores", scores, check_finite),
        label=label,
        client_id=client_id,
        input_digest=digest,
        schema_version=version,
        features=_decode_features(m.get("features"), check_finite),
        input_hashes=_hashes(hashes),
    )


def _unpack(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RecordError("<record>", f"must be bytes, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RecordError("<record>", f"is not valid msgpack: {exc}") from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise RecordError("<record>", f"is not valid msgpack: {exc}") from None


def decode(data: bytes) -> Record:
    """Decode and validate one record; raises :class:`RecordError` naming the bad field."""
    return _decode_map(_unpack(data))


@dataclass(frozen=True)
class DecodedBatch:
    """Records decoded together, with their embeddings stacked per (model, dim)."""

    records: list[Record]
    errors: list[tuple[int, RecordError]]  # (index in the input, error)


def decode_many(messages: Sequence[bytes]) -> DecodedBatch:
    """Decode a batch; bad records are reported with their index instead of raising.

    Each record is decoded as :func:`decode` does (its finiteness checked with one dot product,
    the exact check only when that is not finite). A vectorised check over the whole batch
    (concatenating every embedding, then ``isfinite``) was tried and measured slower: the
    concatenation costs more than the per-record dot products it replaces
    (``benchmarks/results/codec.md``).
    """
    records: list[Record] = []
    errors: list[tuple[int, RecordError]] = []
    append = records.append
    for i, msg in enumerate(messages):
        try:
            append(_decode_map(_unpack(msg)))
        except RecordError as exc:
            errors.append((i, exc))
    return DecodedBatch(records, errors)


def stack_embeddings(records: Iterable[Record]) -> NDArray[np.float32]:
    """Stack embeddings of same-dimension records into a float32 ``(n, d)`` array."""
    arrays = [r.embedding for r in records]
    if not arrays:
        return np.empty((0, 0), dtype=np.float32)
    dims = {a.shape[0] for a in arrays}
    if len(dims) != 1:
        raise ValueError(f"records have mixed embedding dimensions {sorted(dims)}")
    return np.stack(arrays).astype(np.float32, copy=False)
