"""Typed, columnar record batches and the pure ``route()`` that builds them.

A :class:`RecordBatch` holds the records of one model *version* from one poll, column by column,
in stream order: embeddings, Kafka offsets, ids, event times, kinds, client pseudonyms, labels,
predictions, logits/scores and named feature vectors. It is built once by :func:`route` and
handed whole to every stage of the version's pipeline; a stage takes the rows and the input it
declared (:meth:`RecordBatch.of_kind`, :meth:`RecordBatch.input`), nothing is flattened away.

``route`` is a plain function of decoded records (no Kafka, no state): it drops records whose
embedding does not have the model's dimension (returned as rejects with the reason, for the
DLQ) and groups the rest by model version, keeping their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from monitor.records import Record

RecordKind = Literal["inference", "feedback"]
KIND_CODES: dict[str, int] = {"inference": 0, "feedback": 1, "reference": 2}
BUILTIN_INPUTS = ("embedding", "logits", "prediction", "label")


@dataclass(frozen=True)
class Reject:
    """A record ``route`` refused: its index in the input, the DLQ reason and the message."""

    index: int
    reason: str
    message: str


@dataclass(frozen=True)
class RecordBatch:
    """Records of one model version, columnar, in stream order (see the module docstring)."""

    model: str
    version: str
    X: NDArray[np.float32]  # (n, dim) embeddings
    offsets: NDArray[np.int64]  # Kafka offsets (for keyed state that checkpoints on its own)
    ids: list[str]
    ts: NDArray[np.int64]  # event time, ms
    kinds: NDArray[np.uint8]  # KIND_CODES
    records: list[Record] = field(repr=False)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def clients(self) -> list[str | None]:
        return self._column("clients", lambda r: r.client_id)

    @property
    def labels(self) -> list[Any]:
        return self._column("labels", lambda r: r.label)

    @property
    def predictions(self) -> list[Any]:
        return self._column("predictions", lambda r: r.prediction)

    def _column(self, name: str, get: Any) -> list[Any]:
        col = self._cache.get(name)
        if col is None:
            col = self._cache[name] = [get(r) for r in self.records]
        return col

    def take(self, rows: NDArray[np.intp] | slice) -> RecordBatch:
        """The sub-batch of ``rows`` (in order)."""
        if isinstance(rows, slice):
            recs, ids = self.records[rows], self.ids[rows]
        else:
            recs = [self.records[i] for i in rows]
            ids = [self.ids[i] for i in rows]
        return RecordBatch(self.model, self.version, self.X[rows], self.offsets[rows], ids,
                           self.ts[rows], self.kinds[rows], recs)

    def of_kind(self, kind: str) -> RecordBatch:
        """Only the records of one kind (cached: every stage of that kind shares it)."""
        key = ("kind", kind)
        hit = self._cache.get(key)
        if hit is None:
            code = KIND_CODES[kind]
            if not len(self) or (self.kinds == code).all():
                hit = self
            else:
                hit = self.take(np.flatnonzero(self.kinds == code))
            self._cache[key] = hit
        return hit

    def input(self, name: str) -> tuple[NDArray[Any], NDArray[np.intp] | None]:
        """The values of one input and the rows that carry it (``None`` = every row).

        ``embedding`` is always there; ``logits`` are the records' ``scores`` (rows with another
        width than the first record's are left out); ``prediction`` and ``label`` are class ids
        or values; any other name is a named feature vector.
        """
        hit = self._cache.get(("input", name))
        if hit is not None:
            return hit
        if name == "embedding":
            out: tuple[NDArray[Any], NDArray[np.intp] | None] = (self.X, None)
        elif name in ("prediction", "label"):
            col = self.predictions if name == "prediction" else self.labels
            rows = np.flatnonzero([v is not None and not isinstance(v, list) for v in col])
            out = (np.asarray([col[i] for i in rows]), _all_or(rows, len(self)))
        else:
            get = (lambda r: r.scores) if name == "logits" else (
                lambda r: None if r.features is None else r.features.get(name))
            arrays = [get(r) for r in self.records]
            width = next((a.shape[0] for a in arrays if a is not None), None)
            rows = np.flatnonzero([a is not None and a.shape[0] == width for a in arrays])
            present: list[NDArray[Any]] = [arrays[i] for i in rows]  # type: ignore[misc]
            values = (np.stack(present).astype(np.float32, copy=False)
                      if rows.size else np.empty((0, width or 0), np.float32))
            out = (values, _all_or(rows, len(self)))
        self._cache[("input", name)] = out
        return out


def _all_or(rows: NDArray[np.intp], n: int) -> NDArray[np.intp] | None:
    return None if rows.size == n else rows


def route(
    model: str, items: list[tuple[int, Record]], offsets: list[int], dim: int
) -> tuple[dict[str, RecordBatch], list[Reject]]:
    """Group one model's decoded records by version (stream order kept), refusing wrong dims.

    ``items`` are ``(index in the poll, record)``; ``offsets`` the Kafka offset of each poll
    index. Reference records are not monitored and are left out.
    """
    rejects: list[Reject] = []
    groups: dict[str, list[tuple[int, Record]]] = {}
    for i, r in items:
        if r.embedding.shape[0] != dim:
            rejects.append(Reject(i, "dimension", f"embedding has {r.embedding.shape[0]} dims, "
                                  f"model {model!r} version {r.model_version[:64]!r} expects "
                                  f"{dim}"))
            continue
        if r.kind == "reference":
            continue
        groups.setdefault(r.model_version, []).append((i, r))
    out = {}
    for version, its in groups.items():
        recs = [r for _, r in its]
        n = len(recs)
        out[version] = RecordBatch(
            model=model,
            version=version,
            X=np.stack([r.embedding for r in recs]).astype(np.float32, copy=False),
            offsets=np.fromiter((offsets[i] for i, _ in its), dtype=np.int64, count=n),
            ids=[r.record_id for r in recs],
            ts=np.fromiter((r.timestamp_ms for r in recs), dtype=np.int64, count=n),
            kinds=np.fromiter((KIND_CODES[r.kind] for r in recs), dtype=np.uint8, count=n),
            records=recs,
        )
    return out, rejects
