"""``POST /v1/records`` and ``POST /v1/feedback``: records from services that embed themselves.

Body (JSON, or msgpack with ``Content-Type: application/msgpack``, where an embedding may also
be raw little-endian float32 bytes)::

    {"model": "digits", "records": [
        {"embedding": [0.1, ...], "id": "optional", "timestamp_ms": 1700000000000,
         "prediction": 3, "scores": [...], "client_id": "raw id, pseudonymised here"}]}

    {"model": "digits", "feedback": [{"id": "<record id>", "label": 3}]}

A feedback entry joins the inference record with the same id (its embedding is looked up by
the record stream); it may carry its own ``embedding`` when the record is too old to remember.
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

from monitor.records import Record
from serving.builder import FeedbackItem
from serving.oip import OIPError

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")


@dataclass(frozen=True)
class Target:
    """What ingest needs to know of a configured model."""

    name: str
    version: str
    embedding_dim: int | None


def load_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    ctype = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        if ctype in MSGPACK_TYPES:
            doc = msgpack.unpackb(body, raw=False)
        else:
            doc = json.loads(body)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        kind = "msgpack" if ctype in MSGPACK_TYPES else "JSON"
        raise OIPError(f"malformed {kind} body: {exc}") from None
    if not isinstance(doc, dict):
        raise OIPError("the body must be an object with 'model' and a list")
    return doc


def model_name(doc: dict[str, Any]) -> str:
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise OIPError("the body needs a string 'model'")
    return name


def _vector(value: Any, what: str, dim: int | None, check_finite: bool) -> NDArray[np.float32]:
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
    if dim is not None and arr.size != dim:
        raise OIPError(f"{what} has {arr.size} dims, the model expects {dim}")
    if check_finite and not np.isfinite(arr).all():
        raise OIPError(f"{what} contains NaN or inf")
    return arr


def _entries(doc: dict[str, Any], key: str) -> list[Any]:
    entries = doc.get(key)
    if not isinstance(entries, list) or not entries:
        raise OIPError(f"the body needs a non-empty '{key}' list")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise OIPError(f"{key}[{i}] must be an object")
    return entries


def parse_records(
    doc: dict[str, Any],
    target: Target,
    new_id: Callable[[], str],
    pseudonym: Callable[[str | None], str | None],
    header_client: str | None,
) -> list[Record]:
    now = time.time_ns() // 1_000_000
    version = doc.get("model_version", target.version)
    records = []
    for i, e in enumerate(_entries(doc, "records")):
        where = f"records[{i}]"
        emb = _vector(e.get("embedding"), f"{where}.embedding", target.embedding_dim, True)
        scores = e.get("scores")
        rid = e.get("id")
        ts = e.get("timestamp_ms", now)
        if type(ts) is not int:
            raise OIPError(f"{where}.timestamp_ms must be an integer (milliseconds)")
        pred = e.get("prediction")
        if pred is not None and not isinstance(pred, int | float | str | list):
            raise OIPError(f"{where}.prediction must be a number, string or list")
        raw_client = e.get("client_id", header_client)
        records.append(
            Record(
                model=target.name,
                record_id=new_id() if rid is None else str(rid),
                timestamp_ms=ts,
                embedding=emb,
                model_version=str(version),
                prediction=pred,
                scores=None if scores is None else _vector(scores, f"{where}.scores", None, True),
                client_id=pseudonym(None if raw_client is None else str(raw_client)),
            )
        )
    return records


def parse_feedback(
    doc: dict[str, Any],
    target: Target,
    pseudonym: Callable[[str | None], str | None],
    header_client: str | None,
) -> list[FeedbackItem]:
    now = time.time_ns() // 1_000_000
    items = []
    for i, e in enumerate(_entries(doc, "feedback")):
        where = f"feedback[{i}]"
        rid = e.get("id")
        if not isinstance(rid, str | int) or isinstance(rid, bool) or rid == "":
            raise OIPError(f"{where}.id must be the record id the prediction returned")
        label = e.get("label")
        if label is None or not isinstance(label, int | float | str) or isinstance(label, bool):
            raise OIPError(f"{where}.label must be a number or a string")
        emb = e.get("embedding")
        ts = e.get("timestamp_ms", now)
        if type(ts) is not int:
            raise OIPError(f"{where}.timestamp_ms must be an integer (milliseconds)")
        items.append(
            FeedbackItem(
                model=target.name,
                record_id=str(rid),
                label=label,
                ts=ts,
                embedding=None
                if emb is None
                else _vector(emb, f"{where}.embedding", target.embedding_dim, True),
                client_id=pseudonym(header_client),
            )
        )
    return items
