"""Windows over a model's record stream, as values: a spec plus a state the runtime checkpoints.

A :class:`Window` is an immutable spec (built from :class:`monitor.config.WindowConfig`) with
``initialize() -> WindowState``, ``agg(state, X, ids, ts_ms) -> list[ClosedWindow]`` and the
state round-trip ``state.get_state()`` / ``WindowState.from_state()`` (arrays + JSON).
``agg`` is a plain function of its inputs: the same records in the same order close the same
windows with the same bounds, which is what makes alert de-duplication after a replay work.

Kinds
-----
* **count** windows are numbered by the record sequence of the model version: a window covers
  records ``[start, end)`` of that sequence. Tumbling (``step = size``) or sliding (``step <
  size``: the latest ``size`` records every ``step`` records), or with ``every_seconds`` the
  latest ``size`` records each time event time crosses a multiple of ``every_seconds``.
* **time** windows use event time (the record timestamp, ms): windows ``[k*step, k*step+size)``
  close when a record at or past their end arrives (the watermark is the largest timestamp seen;
  records older than an already closed window are counted as late and dropped), or — when no
  record comes — on an idle timer: :meth:`Window.flush` closes every window holding records (the
  stage calls it after ``idle_close_seconds`` of wall-clock silence).

A window holds at most ``max_records`` records: count windows larger than that are refused by
the configuration; a time window drops records past it and counts them (``state.dropped``).

Windows with fewer than ``min_records`` records are not emitted (counted in ``state.skipped``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from monitor.config import WindowConfig

IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class ClosedWindow:
    """One window ready to be tested. ``start``/``end`` are sequence numbers (count) or ms."""

    kind: Literal["count", "time"]
    start: int
    end: int
    X: NDArray[Any] = field(repr=False)
    ids: list[str] = field(repr=False)
    ts_ms: IntArray = field(repr=False)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def bounds(self) -> dict[str, Any]:
        """JSON-able window bounds (for alerts): the key range and the event-time span."""
        first = int(self.ts_ms.min()) if self.n else None
        last = int(self.ts_ms.max()) if self.n else None
        return {
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "first_ts_ms": first,
            "last_ts_ms": last,
            "records": self.n,
        }


@dataclass
class WindowState:
    """Buffered records and the position of the next window; mutated by :meth:`Window.agg`."""

    X: NDArray[Any]
    ts: IntArray
    ids: list[str]
    seq0: int = 0  # sequence number of the first buffered record
    seen: int = 0  # records aggregated so far (count windows number records with this)
    next_due: int | None = None  # count + every_seconds: next event time (ms) to test at
    next_start: int | None = None  # time windows: start (ms) of the next window to close
    watermark: int | None = None
    late: int = 0
    skipped: int = 0
    dropped: int = 0  # time windows: records past max_records

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        data, offsets = pack_ids(self.ids)
        arrays = {"X": self.X, "ts": self.ts, "ids_data": data, "ids_offsets": offsets}
        meta = {
            k: getattr(self, k)
            for k in ("seq0", "seen", "next_due", "next_start", "watermark", "late", "skipped",
                      "dropped")
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> WindowState:
        if set(arrays) == {"X", "ts", "ids"}:  # checkpoints before variable-length ids
            ids = [str(i) for i in arrays["ids"].tolist()]
        elif set(arrays) == {"X", "ts", "ids_data", "ids_offsets"}:
            ids = unpack_ids(arrays["ids_data"], arrays["ids_offsets"])
        else:
            raise ValueError(f"window state has arrays {sorted(arrays)}")
        X, ts = arrays["X"], arrays["ts"].astype(np.int64)
        if X.ndim != 2 or ts.shape != (X.shape[0],) or len(ids) != X.shape[0]:
            raise ValueError(f"window state shapes disagree: X {X.shape}, ts {ts.shape}, "
                             f"{len(ids)} ids")
        return cls(X=X, ts=ts, ids=ids, **meta)

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class Window:
    """A window spec (see the module docstring). Sizes are records or seconds."""

    kind: Literal["count", "time"] = "count"
    size: int = 1000
    step: int | None = None
    min_records: int = 1
    every_seconds: float | None = None
    max_records: int = 100_000

    def __post_init__(self) -> None:
        step = self.step_
        if self.size <= 0 or step <= 0:
            raise ValueError(f"window size and step must be > 0, got {self.size}, {step}")
        if step > self.size:
            raise ValueError(f"window step {step} is larger than size {self.size} (gaps)")
        if self.every_seconds is not None and self.kind != "count":
            raise ValueError("every_seconds applies to count windows; time windows use step")

    @classmethod
    def from_config(cls, cfg: WindowConfig) -> Window:
        return cls(cfg.kind, cfg.size, cfg.step, cfg.min_records, cfg.every_seconds,
                   cfg.max_records)

    @property
    def step_(self) -> int:
        return self.size if self.step is None else self.step

    def describe(self) -> str:
        unit = "records" if self.kind == "count" else "s"
        if self.every_seconds is not None:
            return f"latest {self.size} records every {self.every_seconds:g} s"
        shape = "tumbling" if self.step_ == self.size else f"sliding by {self.step_}"
        return f"{self.kind} {self.size} {unit} {shape}"

    # --- the value interface ----------------------------------------------------------------
    def initialize(self, dim: int, dtype: Any = np.float32) -> WindowState:
        return WindowState(
            X=np.empty((0, dim), dtype=dtype), ts=np.empty(0, dtype=np.int64), ids=[]
        )

    def agg(
        self, state: WindowState, X: NDArray[Any], ids: list[str], ts_ms: IntArray
    ) -> list[ClosedWindow]:
        """Add records (in stream order) and return the windows they close, oldest first."""
        if X.shape[0] == 0:
            return []
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        if self.kind == "time":
            return self._agg_time(state, X, ids, ts_ms)
        first_new = state.seen
        _append(state, X, ids, ts_ms)
        state.seen += X.shape[0]
        if self.every_seconds is not None:
            ends = self._due_ends(state, ts_ms, first_new)
        else:
            ends = self._count_ends(first_new, state.seen)
        out = [self._count_window(state, end) for end in ends]
        keep_from = state.seen - self.size + 1
        if self.every_seconds is None and self.step_ == self.size:
            keep_from = state.seen - (state.seen % self.size)  # tumbling: the open window only
        _drop_before(state, keep_from)
        return [w for w in out if self._keep(state, w)]

    # --- count windows ----------------------------------------------------------------------
    def _count_ends(self, old_seen: int, new_seen: int) -> list[int]:
        """Window ends e in (old_seen, new_seen] with e >= size and (e - size) % step == 0."""
        step = self.step_
        lo = max(old_seen + 1, self.size)
        first = self.size + -(-(lo - self.size) // step) * step
        return list(range(first, new_seen + 1, step))

    def _due_ends(self, state: WindowState, ts_ms: IntArray, first_new: int) -> list[int]:
        every = round(self.every_seconds * 1000)  # type: ignore[operator]
        if state.next_due is None:
            state.next_due = (int(ts_ms[0]) // every + 1) * every
        ends: list[int] = []
        i = 0
        while i < ts_ms.size:
            hits = np.flatnonzero(ts_ms[i:] >= state.next_due)
            if hits.size == 0:
                break
            j = i + int(hits[0])
            ends.append(first_new + j + 1)  # the window ends with (includes) record j
            state.next_due = (int(ts_ms[j]) // every + 1) * every
            i = j + 1
        return ends

    def _count_window(self, state: WindowState, end: int) -> ClosedWindow:
        start = max(end - self.size, state.seq0)
        a, b = start - state.seq0, end - state.seq0
        return ClosedWindow(
            "count", start, end, state.X[a:b].copy(), state.ids[a:b], state.ts[a:b].copy()
        )

    # --- time windows -----------------------------------------------------------------------
    def _agg_time(
        self, state: WindowState, X: NDArray[Any], ids: list[str], ts_ms: IntArray
    ) -> list[ClosedWindow]:
        size, step = self.size * 1000, self.step_ * 1000
        if state.next_start is None:
            t0 = int(ts_ms.min())
            state.next_start = ((t0 - size) // step + 1) * step  # first window that holds t0
        on_time = ts_ms >= state.next_start
        if not on_time.all():
            state.late += int((~on_time).sum())
            keep = np.flatnonzero(on_time)
            X, ts_ms, ids = X[keep], ts_ms[keep], [ids[i] for i in keep]
        room = self.max_records - len(state)
        if X.shape[0] > room:
            keep_n = max(room, 0)
            state.dropped += X.shape[0] - keep_n
            X, ts_ms, ids = X[:keep_n], ts_ms[:keep_n], ids[:keep_n]
        _append(state, X, ids, ts_ms)
        state.seen += X.shape[0]
        if ts_ms.size:
            top = int(ts_ms.max())
            state.watermark = top if state.watermark is None else max(state.watermark, top)
        return self._close_time(state)

    def flush(self, state: WindowState) -> list[ClosedWindow]:
        """Close every time window that holds records, as if event time had passed their ends
        (the idle timer: no record arrived for a while). Count windows do not flush."""
        if self.kind != "time" or not len(state):
            return []
        size, step = self.size * 1000, self.step_ * 1000
        last_start = (int(state.ts.max()) // step) * step  # the latest window holding a record
        end = last_start + size
        state.watermark = end if state.watermark is None else max(state.watermark, end)
        return self._close_time(state)

    def _close_time(self, state: WindowState) -> list[ClosedWindow]:
        size, step = self.size * 1000, self.step_ * 1000
        out: list[ClosedWindow] = []
        assert state.next_start is not None
        while state.watermark is not None and state.next_start + size <= state.watermark:
            s = state.next_start
            mask = (state.ts >= s) & (state.ts < s + size)
            idx = np.flatnonzero(mask)
            window = ClosedWindow(
                "time", s, s + size, state.X[idx], [state.ids[i] for i in idx], state.ts[idx]
            )
            if self._keep(state, window):
                out.append(window)
            state.next_start = s + step
            later = state.ts[state.ts >= state.next_start]
            if later.size:  # jump over empty windows instead of closing them one by one
                first_full = ((int(later.min()) - size) // step + 1) * step
                state.next_start = max(state.next_start, first_full)
            keep = np.flatnonzero(state.ts >= state.next_start)
            if keep.size < len(state):
                state.X, state.ts = state.X[keep], state.ts[keep]
                state.ids = [state.ids[i] for i in keep]
        return out

    def _keep(self, state: WindowState, window: ClosedWindow) -> bool:
        if window.n < self.min_records:
            state.skipped += 1
            return False
        return True


def pack_ids(ids: list[str]) -> tuple[NDArray[np.uint8], IntArray]:
    """Variable-length ids as arrays: UTF-8 bytes end to end, and ``n + 1`` offsets into them.

    A fixed-width ``np.str_`` array costs ``n * 4 * longest`` bytes: one long id would make every
    buffered id that long in the checkpoint.
    """
    encoded = [i.encode("utf-8", "surrogatepass") for i in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def unpack_ids(data: NDArray[Any], offsets: NDArray[Any]) -> list[str]:
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    off = np.asarray(offsets, dtype=np.int64)
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != len(raw) or (
            np.diff(off) < 0).any():
        raise ValueError("window ids: offsets do not index the id bytes")
    bounds = off.tolist()
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in itertools.pairwise(bounds)]


def _append(state: WindowState, X: NDArray[Any], ids: list[str], ts: IntArray) -> None:
    if X.shape[1] != state.X.shape[1]:
        raise ValueError(f"window holds {state.X.shape[1]}-dim records, got {X.shape[1]}")
    state.X = np.concatenate([state.X, X.astype(state.X.dtype, copy=False)])
    state.ts = np.concatenate([state.ts, ts])
    state.ids = state.ids + list(ids)


def _drop_before(state: WindowState, seq: int) -> None:
    k = seq - state.seq0
    if k > 0:
        state.X, state.ts, state.ids = state.X[k:], state.ts[k:], state.ids[k:]
        state.seq0 = seq
