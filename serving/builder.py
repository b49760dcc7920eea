"""Turn queued items into v1 records, on the record stream's thread (never the request path).

The request path enqueues only references (the input and output arrays onnxruntime already
made, or the raw request/response bytes in tap mode). Here, in batches: the SSL encoder runs once
per model over all rows that need it, each row becomes a :class:`monitor.records.Record`, and
records are msgpack-encoded.

Feedback joins by record id: the builder remembers the embedding of the last
``cache_size`` inference records, and a feedback record (kind ``feedback``) carries the same id,
its label and that embedding. Since the queue is FIFO, feedback for a record enqueued earlier
always finds it unless it has aged out (counted as ``unjoined_feedback``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from monitor.records import MAX_HASHES, Label, Record, RecordError, encode, pack_fields
from serving.metrics import ServingMetrics
from serving.models import Inference, ServedModel
from serving.oip import OIPError, Tensor, parse_request, parse_response_outputs
from serving.stream import Message

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InferenceItem:
    """What a record needs from one infer call: only references, no copies. Other outputs are
    not kept, so a full queue holds ~1 KB a record for a small model."""

    model: ServedModel
    record_id: str
    ts: int
    inputs: NDArray[Any]
    embeddings: NDArray[Any] | None
    logits: NDArray[Any] | None
    client_id: str | None
    penultimate: NDArray[Any] | None = None

    @classmethod
    def of(
        cls, model: ServedModel, record_id: str, ts: int, inf: Inference, client: str | None
    ) -> InferenceItem:
        return cls(model, record_id, ts, inf.inputs, inf.embeddings, inf.logits, client,
                   inf.penultimate)


@dataclass(slots=True)
class TapItem:
    model: ServedModel
    record_id: str
    ts: int
    request_body: bytes
    request_header_length: str | None
    response_body: bytes
    response_header_length: str | None
    client_id: str | None


@dataclass(slots=True)
class RecordsItem:
    records: list[Record]


@dataclass(slots=True)
class FeedbackItem:
    model: str
    record_id: str
    label: Label
    ts: int
    embedding: NDArray[Any] | None
    client_id: str | None


@dataclass(slots=True)
class _Row:
    model: ServedModel
    record_id: str
    ts: int
    inputs: NDArray[Any] | None
    embedding: NDArray[Any] | None
    logits: NDArray[Any] | None
    client_id: str | None
    penultimate: NDArray[Any] | None = None


def row_ids(record_id: str, n: int) -> list[str]:
    """Record ids of a request's rows: the request's id at batch 1, ``id:i`` otherwise."""
    return [record_id] if n == 1 else [f"{record_id}:{i}" for i in range(n)]


class RecordBuilder:
    def __init__(
        self, metrics: ServingMetrics, cache_size: int = 10000, max_rows: int | None = None
    ) -> None:
        self.metrics = metrics
        self.cache_size = cache_size
        # Tapped requests were never parsed on the request path (the upstream judged them):
        # their rows are bounded here, as served requests' rows are at intake.
        self.max_rows = max_rows
        self._too_many_rows = metrics.records_dropped.labels("rows")
        self._cache: OrderedDict[tuple[str, str], tuple[NDArray[Any], str]] = OrderedDict()
        self._invalid = metrics.records_dropped.labels("invalid_record")
        self._unjoined = metrics.records_dropped.labels("unjoined_feedback")
        self._packer = msgpack.Packer(use_bin_type=True)

    def __call__(self, items: list[Any]) -> list[Message]:
        rows: list[_Row] = []
        others: list[FeedbackItem | Record] = []
        for item in items:
            if isinstance(item, InferenceItem):
                self._expand(item, rows)
            elif isinstance(item, TapItem):
                try:
                    self._expand_tap(item, rows)
                except Exception as exc:  # whatever a tapped body holds, it loses only itself
                    self._invalid.inc()
                    log.debug("tap record %s dropped: %s", item.record_id, exc)
            elif isinstance(item, RecordsItem):
                others.extend(item.records)
            else:
                others.append(item)
        self._embed(rows)
        out = self._pack_rows(rows)
        # Feedback after the inference rows of the same batch: they may join with them.
        for other in others:
            record = other if isinstance(other, Record) else self._feedback(other)
            if record is None:
                continue
            try:
                out.append((record.model, encode(record)))
            except RecordError as exc:
                self._invalid.inc()
                log.debug("record %s dropped: %s", record.record_id, exc)
        return out

    # ---- expanding items into rows -------------------------------------------------------
    def _expand(self, item: InferenceItem, rows: list[Any]) -> None:
        inf = item
        n = inf.inputs.shape[0] if inf.inputs.ndim else 1
        ids = row_ids(item.record_id, n)
        for i, rid in enumerate(ids):
            rows.append(
                _Row(
                    item.model,
                    rid,
                    item.ts,
                    inf.inputs[i] if inf.inputs.ndim else inf.inputs,
                    None if inf.embeddings is None else inf.embeddings[i],
                    None if inf.logits is None else inf.logits[i],
                    item.client_id,
                    None if inf.penultimate is None else inf.penultimate[i],
                )
            )

    def _expand_tap(self, item: TapItem, rows: list[Any]) -> None:
        model = item.model
        try:
            request = parse_request(item.request_body, item.request_header_length)
            tensor = _pick(request.inputs, model.input_name)
        except OIPError as exc:
            self._invalid.inc()
            log.debug("tap record %s dropped: %s", item.record_id, exc)
            return
        arr = tensor.array
        n = arr.shape[0] if arr.ndim else 1
        if self.max_rows is not None and n > self.max_rows:
            self._too_many_rows.inc(n)
            log.debug("tap record %s dropped: %d rows, limit %d", item.record_id, n, self.max_rows)
            return
        logits = None
        try:
            outs = parse_response_outputs(item.response_body, item.response_header_length)
            for t in outs:
                if t.name == model.logits_name:
                    logits = t.array
        except (OIPError, ValueError):
            pass  # the prediction is optional; the embedding is what the record is for
        if logits is not None and (logits.ndim == 0 or logits.shape[0] != n):
            logits = None
        for i, rid in enumerate(row_ids(item.record_id, n)):
            row_logits = None if logits is None else logits[i]
            rows.append(_Row(model, rid, item.ts, arr[i], None, row_logits, item.client_id))

    # ---- the SSL encoder, batched per model ----------------------------------------------
    def _embed(self, rows: list[Any]) -> None:
        pending: dict[int, list[_Row]] = {}
        models: dict[int, ServedModel] = {}
        for row in rows:
            if isinstance(row, _Row) and row.embedding is None and row.model.encoder is not None:
                pending.setdefault(id(row.model), []).append(row)
                models[id(row.model)] = row.model
        for key, group in pending.items():
            model = models[key]
            encoder = model.encoder
            assert encoder is not None
            spec = encoder.inputs[0]
            try:
                batch = np.stack([r.inputs for r in group])  # type: ignore[misc]
                feeds = encoder.feeds([Tensor(spec.name, spec.datatype, list(batch.shape), batch)])
                out = encoder.run(feeds, [model.config.embedding_output])[0]
            except Exception as exc:  # wrong shapes from a tap client, encoder failures
                log.warning(
                    "SSL encoder of model %r failed on %d rows: %s", model.name, len(group), exc
                )
                for r in group:
                    r.model = model
                    r.inputs = None
                continue
            for r, emb in zip(group, out, strict=True):
                r.embedding = emb

    # ---- rows into records ---------------------------------------------------------------
    def _pack_rows(self, rows: list[_Row]) -> list[Message]:
        """Encode inference rows, vectorised per model, with the format's one encoder
        (:func:`monitor.records.pack_fields`): each row is validated on its own, so one bad
        value (a timestamp out of range…) drops that record, not the batch."""
        groups: dict[int, list[_Row]] = {}
        for row in rows:
            if row.embedding is None:
                self._invalid.inc()  # the encoder failed on it
            else:
                groups.setdefault(id(row.model), []).append(row)
        out: list[Message] = []
        for group in groups.values():
            try:
                emb = np.stack([r.embedding for r in group]).astype(np.float32, copy=False)  # type: ignore[misc]
            except ValueError:  # ragged embeddings: encode one by one
                for r in group:
                    self._pack_group([r], out, np.asarray(r.embedding, np.float32).reshape(1, -1))
                continue
            self._pack_group(group, out, emb.reshape(len(group), -1))
        return out

    def _pack_group(self, group: list[_Row], out: list[Message], emb: NDArray[Any]) -> None:
        model = group[0].model
        name, version = model.name, model.version
        n, d = emb.shape
        ok = np.isfinite(emb).all(axis=1)
        emb_bytes = emb.tobytes()
        step = d * 4
        preds: list[Any] = [None] * n
        scores_bytes = b""
        width = 0
        if all(r.logits is not None for r in group):
            logits = np.stack([r.logits for r in group]).astype(np.float32, copy=False)  # type: ignore[misc]
            logits = logits.reshape(n, -1)
            width = logits.shape[1]
            if width == 1:
                preds = logits[:, 0].astype(float).tolist()
                width = 0  # a single value is the prediction, not scores
            else:
                preds = np.argmax(logits, axis=1).tolist()
                ok &= np.isfinite(logits).all(axis=1)
                scores_bytes = logits.tobytes()
        pen_bytes, pen_width = b"", 0
        if model.penultimate_index is not None and all(r.penultimate is not None for r in group):
            pen = np.stack([r.penultimate for r in group]).astype(np.float32, copy=False)  # type: ignore[misc]
            pen = pen.reshape(n, -1)
            pen_width = pen.shape[1]
            ok &= np.isfinite(pen).all(axis=1)
            pen_bytes = pen.tobytes()
        hashes = input_hashes(model, group)
        packer = self._packer
        for i, r in enumerate(group):
            if not ok[i]:
                self._invalid.inc()
                continue
            try:
                body = pack_fields(
                    model=name, model_version=version, record_id=r.record_id, ts=r.ts,
                    kind="inference", embedding=("f4", d, emb_bytes[i * step : (i + 1) * step]),
                    prediction=preds[i],
                    scores=("f4", width, scores_bytes[i * width * 4 : (i + 1) * width * 4])
                    if width else None,
                    client_id=r.client_id,
                    input_digest=None if r.inputs is None
                    else blake2b(r.inputs.tobytes(), digest_size=16).digest(),
                    features={"penultimate": (
                        "f4", pen_width,
                        pen_bytes[i * pen_width * 4 : (i + 1) * pen_width * 4])}
                    if pen_width else None,
                    input_hashes=None if hashes is None else hashes[i],
                    packer=packer,
                )
            except RecordError as exc:  # this record only: the rest of the batch goes on
                self._invalid.inc()
                log.debug("record %s dropped: %s", r.record_id, exc)
                continue
            out.append((name, body))
            self._remember(name, r.record_id, emb[i], version)

    def _remember(self, model: str, rid: str, emb: NDArray[Any], version: str) -> None:
        if self.cache_size <= 0:
            return
        cache = self._cache
        cache[(model, rid)] = (emb, version)
        if len(cache) > self.cache_size:
            cache.popitem(last=False)

    def _feedback(self, fb: FeedbackItem) -> Record | None:
        emb = fb.embedding
        version = ""
        if emb is None:
            hit = self._cache.get((fb.model, fb.record_id))
            if hit is None:
                self._unjoined.inc()
                log.info("feedback for %s/%s: record not in the join cache", fb.model, fb.record_id)
                return None
            emb, version = hit
        return Record(
            model=fb.model,
            record_id=fb.record_id,
            timestamp_ms=fb.ts,
            embedding=emb,
            kind="feedback",
            model_version=version,
            label=fb.label,
            client_id=fb.client_id,
        )


def input_hashes(model: ServedModel, group: list[_Row]) -> list[bytes | None] | None:
    """Window hashes of each row's raw input (``input_hashes`` of the model's config), or
    ``None``; vectorised over the group, a row whose input cannot be hashed gets ``None``.

    The hashes are computed here, on the record stream's thread, never on the request path;
    only they travel (the monitor never sees raw inputs)."""
    spec = model.config.input_hashes
    if spec is None or model.text is not None:
        return None
    from detectors.adversarial.hashing import window_hashes

    params = spec.model_dump()
    params["value_range"] = tuple(params["value_range"])
    out: list[bytes | None] = [None] * len(group)
    by_size: dict[int, list[int]] = {}
    for i, r in enumerate(group):
        if r.inputs is not None and r.inputs.dtype.kind in "biuf" and r.inputs.size:
            by_size.setdefault(int(r.inputs.size), []).append(i)
    for size, rows in by_size.items():
        if size < spec.window or (size - spec.window) // spec.stride + 1 > MAX_HASHES:
            continue  # nothing to hash, or more windows than a record may carry
        try:
            H = window_hashes(np.stack([group[i].inputs.reshape(-1) for i in rows]),  # type: ignore[union-attr]
                              **params)
        except ValueError as exc:  # non-finite inputs (serving.nan_policy: pass)
            log.debug("input hashes of model %r skipped: %s", model.name, exc)
            continue
        raw = H.astype("<u8", copy=False).tobytes()
        step = H.shape[1] * 8
        for k, i in enumerate(rows):
            out[i] = raw[k * step : (k + 1) * step]
    return out


def _pick(tensors: list[Tensor], name: str) -> Tensor:
    for t in tensors:
        if t.name == name:
            return t
    if len(tensors) == 1:
        return tensors[0]
    raise OIPError(f"the request has no input {name!r} for the SSL encoder")
