"""``POST /v1/records`` and ``POST /v1/feedback``: records from services that embed themselves.

Body (JSON, or msgpack with ``Content-Type: application/msgpack``, where an embedding may also
be raw little-endian float32 bytes)::

    {"model": "digits", "records": [
        {"embedding": [0.1, ...], "id": "optional", "timestamp_ms": 1700000000000,
         "prediction": 3, "scores": [...], "client_id": "raw id, pseudonymised here"}]}

    {"model": "digits", "feedback": [{"id": "<record id>", "label": 3}]}

A feedback entry joins the inference record with the same id (its embedding is looked up by
the record stream); it may carry its own ``embedding`` when the record is too old to remember.

Every field is bounded by ``serving.limits`` (:mod:`serving.limits`): rows per request, id,
version, client id, prediction and label sizes, timestamps within ``[min_timestamp_ms, now +
max_future_ms]``, and each record's encoded size below ``max_record_bytes`` (the Kafka
producer's maximum request size), so that nothing accepted here can fail to be sent. Unknown
keys in an entry are ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from monitor.records import MAX_DIM, Record, RecordError, encode
from serving.builder import FeedbackItem
from serving.limits import Limits
from serving.oip import OIPError

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


@dataclass(frozen=True)
class Target:
    """What ingest needs to know of a configured model."""

    name: str
    version: str
    embedding_dim: int | None


def load_body(body: bytes, content_type: str | None, limits: Limits) -> dict[str, Any]:
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    kind = "msgpack" if ctype in MSGPACK_TYPES else "JSON"
    try:
        if ctype in MSGPACK_TYPES:
            doc = msgpack.unpackb(body, raw=False)
        else:
            limits.json_depth(body)
            doc = json.loads(body)
    except (
        ValueError,
        TypeError,  # msgpack: an unhashable map key
        OverflowError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise OIPError(f"malformed {kind} body: {exc}") from None
    except RecursionError:
        raise OIPError(f"malformed {kind} body: nested too deep") from None
    if not isinstance(doc, dict):
        raise OIPError("the body must be an object with 'model' and a list")
    return doc


def model_name(doc: dict[str, Any]) -> str:
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise OIPError("the body needs a string 'model'")
    return name


def _vector(value: Any, what: str, dim: int | None, check_finite: bool) -> NDArray[np.float32]:
    if isinstance(value, list) and len(value) > (dim or MAX_DIM):
        raise OIPError(f"{what} has {len(value)} values, over {dim or MAX_DIM}")
    try:
        if isinstance(value, bytes):
            if len(value) % 4:
                raise ValueError(f"{len(value)} bytes is not a whole number of float32 values")
            arr = np.frombuffer(value, dtype="<f4")
        else:
            arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise OIPError(f"{what} is not a list of numbers: {exc}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise OIPError(f"{what} must be a non-empty flat list, got shape {list(arr.shape)}")
    if arr.size > MAX_DIM:
        raise OIPError(f"{what} has {arr.size} values, over the record format's {MAX_DIM}")
    if dim is not None and arr.size != dim:
        raise OIPError(f"{what} has {arr.size} dims, the model expects {dim}")
    if check_finite and not np.isfinite(arr).all():
        raise OIPError(f"{what} contains NaN or inf")
    return arr


def _entries(doc: dict[str, Any], key: str, limits: Limits) -> list[Any]:
    entries = doc.get(key)
    if not isinstance(entries, list) or not entries:
        raise OIPError(f"the body needs a non-empty '{key}' list")
    limits.rows(len(entries), f"'{key}'")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise OIPError(f"{key}[{i}] must be an object")
    return entries


def _text(value: Any, what: str, limits: Limits, limit_name: str) -> str:
    """A string (or integer) field, bounded in UTF-8 bytes."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise OIPError(f"{what} must be a string or an integer")
    if isinstance(value, int):
        value = str(value)
    elif not value:
        raise OIPError(f"{what} must not be empty")
    return limits.text(value, what, limit_name)


def _prediction(value: Any, what: str, limits: Limits) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str | list):
        raise OIPError(f"{what} must be a number, a string or a list of numbers")
    if isinstance(value, list) and not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise OIPError(f"{what} must be a flat list of numbers")
    limits.packed(value, what, "max_prediction_bytes")
    return value


def _client(
    value: Any, what: str, limits: Limits, pseudonym: Callable[[str | None], str | None]
) -> str | None:
    if value is None:
        return None
    return pseudonym(_text(value, what, limits, "max_client_id_bytes"))


def parse_records(
    doc: dict[str, Any],
    target: Target,
    new_id: Callable[[], str],
    pseudonym: Callable[[str | None], str | None],
    header_client: str | None,
    limits: Limits,
) -> list[Record]:
    now = time.time_ns() // 1_000_000
    version = _text(
        doc.get("model_version", target.version), "model_version", limits, "max_version_bytes"
    )
    header = _client(header_client, "the client id header", limits, pseudonym)
    records = []
    for i, e in enumerate(_entries(doc, "records", limits)):
        where = f"records[{i}]"
        emb = _vector(e.get("embedding"), f"{where}.embedding", target.embedding_dim, True)
        scores = e.get("scores")
        rid = e.get("id")
        ts = limits.timestamp(e.get("timestamp_ms", now), f"{where}.timestamp_ms", now)
        raw_client = e.get("client_id")
        record = Record(
            model=target.name,
            record_id=new_id()
            if rid is None
            else _text(rid, f"{where}.id", limits, "max_id_bytes"),
            timestamp_ms=ts,
            embedding=emb,
            model_version=version,
            prediction=_prediction(e.get("prediction"), f"{where}.prediction", limits),
            scores=None if scores is None else _vector(scores, f"{where}.scores", None, True),
            client_id=header
            if raw_client is None
            else _client(raw_client, f"{where}.client_id", limits, pseudonym),
        )
        try:
            size = len(encode(record))
        except RecordError as exc:
            raise OIPError(f"{where}: {exc}") from None
        limits.record_size(size, where)
        records.append(record)
    return records


def parse_feedback(
    doc: dict[str, Any],
    target: Target,
    pseudonym: Callable[[str | None], str | None],
    header_client: str | None,
    limits: Limits,
) -> list[FeedbackItem]:
    now = time.time_ns() // 1_000_000
    client = _client(header_client, "the client id header", limits, pseudonym)
    items = []
    for i, e in enumerate(_entries(doc, "feedback", limits)):
        where = f"feedback[{i}]"
        rid = e.get("id")
        if not isinstance(rid, str | int) or isinstance(rid, bool) or rid == "":
            raise OIPError(f"{where}.id must be the record id the prediction returned")
        rid = _text(rid, f"{where}.id", limits, "max_id_bytes")
        label = e.get("label")
        if label is None or not isinstance(label, int | float | str) or isinstance(label, bool):
            raise OIPError(f"{where}.label must be a number or a string")
        if isinstance(label, str):
            limits.text(label, f"{where}.label", "max_label_bytes")
        elif isinstance(label, int) and not -(2**63) <= label < 2**64:
            raise OIPError(f"{where}.label {label} does not fit in 64 bits")
        emb = e.get("embedding")
        ts = limits.timestamp(e.get("timestamp_ms", now), f"{where}.timestamp_ms", now)
        items.append(
            FeedbackItem(
                model=target.name,
                record_id=rid,
                label=label,
                ts=ts,
                embedding=None
                if emb is None
                else _vector(emb, f"{where}.embedding", target.embedding_dim, True),
                client_id=client,
            )
        )
    return items
