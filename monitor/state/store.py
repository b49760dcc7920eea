"""The keyed state store: one fixed-size numpy record per key, bounded, checkpointed in deltas."""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.state import checkpointing as C
from monitor.state import segments as S
from monitor.state.checkpointing import CheckpointInfo
from monitor.state.schema import StateKeyError, StateSchema, StoreLimits

_NEVER = np.iinfo(np.int64).max  # last_seen of a free slot: never idle
_UNSEEN = np.iinfo(np.int64).min
# Memory accounting, measured on CPython 3.11 with tracemalloc and RSS (tests/monitor/
# test_state_store.py): per live key beyond its record, the OrderedDict entry and node (~141 B),
# the slot int, the slot->key list, last_seen/tick/persisted arrays with growth slack and a
# dirty-set entry; the key str itself; remembered tombstones; and what a checkpoint that writes
# every key holds for a moment (key list, UTF-8 copies, slot arrays).
PER_KEY_OVERHEAD = 380
_STR_HEADER = 49  # sys.getsizeof("") for an ASCII str
_SET_ENTRY = 60
_CHECKPOINT_PER_KEY = 160  # + 2 x the key's bytes
_TOMBSTONE_SHARE = 0.5  # evicted keys remembered between checkpoints: at most capacity * this

EvictCallback = Callable[[str, np.void, str], None]


@dataclass(frozen=True)
class StoreStats:
    """Plain counters and gauges; the runtime exports them (no Prometheus here)."""

    keys: int
    capacity: int
    dirty_keys: int
    tombstones: int
    created_total: int
    evicted_capacity_total: int
    evicted_idle_total: int
    deleted_total: int
    checkpoints_total: int
    compactions_total: int
    checkpoint_bytes_total: int
    memory_bytes: int
    memory_bound_bytes: int
    seq: int
    offset: int | None
    watermark_ms: int | None


class KeyedStateStore:
    """Bounded per-key state for a client-keyed stage; see :mod:`monitor.state` for the rules.

    Parameters
    ----------
    schema : StateSchema
        Layout and defaults of one key's record.
    limits : StoreLimits
        Key capacity, memory bound, idle timeout, key length, compaction policy.
    directory : path, optional
        Where checkpoints live. When it holds one, the store starts from it (validated: a bad
        checkpoint raises :class:`StateStoreCorrupt`, a changed schema
        :class:`StateSchemaMismatch`). Without a directory :meth:`checkpoint` is unavailable.
    on_evict : callable, optional
        ``on_evict(key, record, reason)`` just before a key is evicted (``"capacity"`` or
        ``"idle"``); the record is a view valid only during the call.

    Examples
    --------
    >>> import tempfile
    >>> schema = StateSchema.of(last=("float32", (3, 2)), n="int64")
    >>> d = tempfile.mkdtemp()
    >>> store = KeyedStateStore(schema, StoreLimits(max_keys=2), directory=d)
    >>> for t, (client, x) in enumerate([("a", 1.0), ("b", 2.0), ("a", 3.0)]):
    ...     rec = store.get_or_create(client, event_ms=t)
    ...     rec["last"][rec["n"] % 3] = x     # a ring buffer of the client's last 3 queries
    ...     rec["n"] += 1
    >>> int(store.peek("a")["n"]), store.peek("a")["last"][:, 0].tolist()
    (2, [1.0, 3.0, 0.0])
    >>> store.checkpoint(offset=3).kind
    'base'
    >>> _ = store.get_or_create("c", event_ms=3)   # evicts "b", the least recently used
    >>> store.evictions, sorted(store.keys())
    ({'capacity': 1, 'idle': 0}, ['a', 'c'])
    >>> info = store.checkpoint(offset=4)         # only "c" and the tombstone of "b" are written
    >>> info.kind, info.keys_written, info.tombstones_written
    ('delta', 1, 1)
    >>> again = KeyedStateStore(schema, StoreLimits(max_keys=2), directory=d)
    >>> again.offset, sorted(again.keys()), int(again.peek("a")["n"])
    (4, ['a', 'c'], 2)
    """

    def __init__(self, schema: StateSchema, limits: StoreLimits | None = None, *,
                 directory: str | os.PathLike[str] | None = None,
                 on_evict: EvictCallback | None = None) -> None:
        self.schema, self.limits = schema, limits or StoreLimits()
        self.on_evict = on_evict
        lim = self.limits
        if schema.itemsize > lim.max_bytes_per_key:
            raise ValueError(f"a key's state is {schema.itemsize} bytes, over max_bytes_per_key="
                             f"{lim.max_bytes_per_key}; shrink the schema or raise the limit")
        rows = max(16, min(4096, 2 ** int(math.log2(max(1, (1 << 20) // schema.itemsize)))))
        self._shift, self._mask = rows.bit_length() - 1, rows - 1
        self.page_rows, self.page_bytes = rows, rows * schema.itemsize
        k = lim.max_key_bytes
        self.key_bound_bytes = int(schema.itemsize + PER_KEY_OVERHEAD + _STR_HEADER + k
                                   + _TOMBSTONE_SHARE * (_STR_HEADER + k + _SET_ENTRY)
                                   + _CHECKPOINT_PER_KEY + 2 * k)
        self.capacity = lim.max_keys
        if lim.max_memory_bytes is not None:
            fit = (lim.max_memory_bytes - 3 * self.page_bytes) // self.key_bound_bytes
            if fit < 1:
                raise ValueError(f"max_memory_bytes={lim.max_memory_bytes} holds no key of "
                                 f"{self.key_bound_bytes} bytes (record {schema.itemsize}, "
                                 f"key <= {lim.max_key_bytes}) plus three {self.page_bytes}-byte "
                                 "pages; raise it or shrink the schema")
            self.capacity = int(min(self.capacity, fit))
        self.directory = Path(directory) if directory is not None else None
        self._proto = schema.new_record()
        self._reset_memory()
        self.created_total = self.deleted_total = 0
        self.evicted = {"capacity": 0, "idle": 0}
        self.checkpoints_total = self.compactions_total = self.checkpoint_bytes_total = 0
        self.last_checkpoint: CheckpointInfo | None = None
        self.seq = 0
        self.offset: int | None = None
        self.meta: dict[str, Any] = {}
        self._segments: tuple[S.SegmentRef, ...] = ()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            C.load_into(self)

    def _reset_memory(self) -> None:
        self._index: OrderedDict[str, int] = OrderedDict()  # LRU order: oldest first
        self._slot_keys: list[str | None] = []
        self._pages: list[NDArray[Any]] = []
        self._cols: list[dict[str, NDArray[Any]]] = []  # per page: field name -> column view
        self._last_seen = np.full(0, _NEVER, dtype=np.int64)
        self._ticks = np.zeros(0, dtype=np.int64)
        self._persisted = np.zeros(0, dtype=bool)
        self._free: list[int] = []
        self._dirty: set[int] = set()
        self._tombstones: set[str] = set()
        self._full_pending = False
        self._tick, self._key_bytes = 0, 0
        self.watermark_ms: int | None = None
        self._next_sweep: int | None = None if self.limits.idle_timeout_ms is None else _UNSEEN

    # ---- access -------------------------------------------------------------------------------

    def get_or_create(self, key: str, event_ms: int) -> np.void:
        """The key's record as a writable view, created from the defaults if new.

        Marks the key dirty (written by the next checkpoint), most recently used, and seen at
        ``event_ms``. The view is valid until the next call that may evict or load
        (``get_or_create``, ``locate``, ``expire``, ``delete``); do not keep it longer. A bad
        key raises :class:`StateKeyError`, an event time outside int64 ``ValueError`` — both
        before anything changes.
        """
        slot = self._touch(key, event_ms)
        rec: np.void = self._pages[slot >> self._shift][slot & self._mask]
        return rec

    def locate(self, key: str, event_ms: int) -> tuple[dict[str, NDArray[Any]], int]:
        """Like :meth:`get_or_create`, as ``(columns, row)``: ``columns[field][row]`` is the
        key's value. Same marking and validity; about 4× faster per field access than the
        record view (numpy's structured scalars are slow), for stages on a hot path.

        >>> store = KeyedStateStore(StateSchema.of(n="int64", last=("float32", (2,))))
        >>> cols, row = store.locate("client-1", event_ms=0)
        >>> cols["n"][row] += 1
        >>> cols["last"][row, 1] = 0.5
        >>> int(store.peek("client-1")["n"]), store.peek("client-1")["last"].tolist()
        (1, [0.0, 0.5])
        """
        slot = self._touch(key, event_ms)
        return self._cols[slot >> self._shift], slot & self._mask

    def _touch(self, key: str, event_ms: int) -> int:
        t = int(event_ms)
        if not _UNSEEN < t < _NEVER:
            raise ValueError(f"event time {t} ms is outside int64; dead-letter the record")
        try:
            slot = self._index.get(key)
        except TypeError:  # unhashable
            raise StateKeyError(f"state key must be a non-empty str, got {key!r}") from None
        if slot is None:
            self._check_key(key)
        if self.watermark_ms is None or t > self.watermark_ms:
            self.watermark_ms = t
            if self._next_sweep is not None and t >= self._next_sweep:
                self._sweep()
                slot = self._index.get(key)
        if slot is None:
            slot = self._create(key)
        else:
            self._index.move_to_end(key)
        if t > self._last_seen[slot]:
            self._last_seen[slot] = t
        self._tick += 1
        self._ticks[slot] = self._tick
        self._dirty.add(slot)
        return slot

    def mark_dirty(self, key: str) -> None:
        """Have the next checkpoint write ``key`` (after changing a view obtained earlier)."""
        self._dirty.add(self._index[key])

    def peek(self, key: str) -> np.void | None:
        """A copy of the key's record, or None; touches neither recency nor dirtiness."""
        slot = self._index.get(key)
        if slot is None:
            return None
        rec: np.void = self._pages[slot >> self._shift][slot & self._mask].copy()
        return rec

    def last_seen_ms(self, key: str) -> int:
        return int(self._last_seen[self._index[key]])

    def delete(self, key: str) -> bool:
        slot = self._index.pop(key, None)
        if slot is None:
            return False
        self._release(key, slot)
        self.deleted_total += 1
        return True

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def keys(self) -> Iterator[str]:
        """Keys from least to most recently used."""
        return iter(self._index)

    def items(self) -> Iterator[tuple[str, np.void]]:
        """``(key, view)`` from least to most recently used; changes need :meth:`mark_dirty`."""
        for key, slot in self._index.items():
            yield key, self._pages[slot >> self._shift][slot & self._mask]

    def clone(self, directory: str | os.PathLike[str] | None = None) -> KeyedStateStore:
        """An empty store with the same schema, limits and callback (e.g. for a new version)."""
        return KeyedStateStore(self.schema, self.limits, directory=directory,
                               on_evict=self.on_evict)

    # ---- bounds -------------------------------------------------------------------------------

    def expire(self, watermark_ms: int | None = None) -> int:
        """Evict keys idle for ``idle_timeout_ms``; ``watermark_ms`` may advance event time
        (e.g. from a wall-clock idle timer). Returns the number evicted."""
        if watermark_ms is not None and (self.watermark_ms is None
                                         or watermark_ms > self.watermark_ms):
            self.watermark_ms = int(watermark_ms)
        before = self.evicted["idle"]
        if self.limits.idle_timeout_ms is not None and self.watermark_ms is not None:
            self._sweep()
        return self.evicted["idle"] - before

    def _sweep(self) -> None:
        idle = self.limits.idle_timeout_ms
        assert idle is not None and self.watermark_ms is not None
        cutoff = self.watermark_ms - idle
        stale = np.flatnonzero(self._last_seen[: len(self._slot_keys)] < cutoff)
        for slot in stale[np.argsort(self._ticks[stale], kind="stable")].tolist():
            key = self._slot_keys[slot]
            assert key is not None
            self._evict(key, slot, "idle")
        self._next_sweep = self.watermark_ms + max(1, idle // 16)

    def _check_key(self, key: object) -> None:
        if not isinstance(key, str) or not key:
            raise StateKeyError(f"state key must be a non-empty str, got {key!r}")
        nbytes = len(key.encode())
        if nbytes > self.limits.max_key_bytes:
            raise StateKeyError(f"state key of {nbytes} bytes is over max_key_bytes="
                                f"{self.limits.max_key_bytes}: {key[:32]!r}…")

    def _create(self, key: str) -> int:
        while len(self._index) >= self.capacity:
            old, old_slot = next(iter(self._index.items()))
            self._evict(old, old_slot, "capacity")
        self.created_total += 1
        self._tombstones.discard(key)
        return self._alloc(key)

    def _alloc(self, key: str) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._slot_keys)
            self._slot_keys.append(None)
            self._grow(slot + 1)
        self._pages[slot >> self._shift][slot & self._mask] = self._proto
        self._slot_keys[slot] = key
        self._last_seen[slot] = _UNSEEN
        self._persisted[slot] = False
        self._index[key] = slot
        self._key_bytes += len(key)
        return slot

    def _grow(self, slots: int) -> None:
        """Make room for slot numbers below ``slots`` (metadata doubles, pages are added)."""
        if slots > self._last_seen.size:
            n = max(1024, 2 * self._last_seen.size, slots)
            grow = n - self._last_seen.size
            self._last_seen = np.concatenate([self._last_seen, np.full(grow, _NEVER, np.int64)])
            self._ticks = np.concatenate([self._ticks, np.zeros(grow, np.int64)])
            self._persisted = np.concatenate([self._persisted, np.zeros(grow, bool)])
        while len(self._pages) << self._shift < slots:
            page = np.zeros(self.page_rows, dtype=self.schema.dtype)
            self._pages.append(page)
            self._cols.append({f.name: page[f.name] for f in self.schema.fields})

    def _evict(self, key: str, slot: int, reason: str) -> None:
        if self.on_evict is not None:
            self.on_evict(key, self._pages[slot >> self._shift][slot & self._mask], reason)
        del self._index[key]
        self._release(key, slot)
        self.evicted[reason] += 1

    def _release(self, key: str, slot: int) -> None:
        if self._persisted[slot] and not self._full_pending:
            self._tombstones.add(key)
            if len(self._tombstones) > _TOMBSTONE_SHARE * self.capacity:
                # Remembering more deletions than this costs more than a full snapshot.
                self._full_pending = True
                self._tombstones.clear()
        self._dirty.discard(slot)
        self._slot_keys[slot] = None
        self._last_seen[slot] = _NEVER
        self._persisted[slot] = False
        self._free.append(slot)
        self._key_bytes -= len(key)

    @property
    def evictions(self) -> dict[str, int]:
        """Evictions so far by reason (``capacity``, ``idle``): plain counters."""
        return dict(self.evicted)

    @property
    def memory_bound_bytes(self) -> int:
        """Upper bound of this store's memory at full capacity (records, bookkeeping, keys)."""
        pages = -(-self.capacity // self.page_rows) + 2  # a checkpoint's page copies
        return int(pages * self.page_bytes
                   + self.capacity * (self.key_bound_bytes - self.schema.itemsize))

    def memory_bytes(self) -> int:
        """Estimate of the memory held now (pages allocated + per-key bookkeeping)."""
        n = len(self._index)
        return int(len(self._pages) * self.page_bytes + n * (PER_KEY_OVERHEAD + _STR_HEADER)
                   + self._key_bytes
                   + len(self._tombstones) * (_STR_HEADER + _SET_ENTRY
                                              + self.limits.max_key_bytes))

    def stats(self) -> StoreStats:
        return StoreStats(
            len(self._index), self.capacity, len(self._dirty), len(self._tombstones),
            self.created_total, self.evicted["capacity"], self.evicted["idle"],
            self.deleted_total, self.checkpoints_total, self.compactions_total,
            self.checkpoint_bytes_total, self.memory_bytes(), self.memory_bound_bytes,
            self.seq, self.offset, self.watermark_ms)

    def checkpoint(self, *, offset: int | None = None, meta: Mapping[str, Any] | None = None,
                   full: bool = False) -> CheckpointInfo:
        """Persist the changes since the last checkpoint; returns once they are durable.

        Writes a delta segment with the dirty keys and the tombstones of keys evicted or
        deleted since (a *compaction* instead — a full base snapshot, older segments removed
        — when ``full``, on the first checkpoint, or when the policy in :class:`StoreLimits`
        says so), then atomically replaces the manifest, which also records ``offset`` and
        ``meta``. Only after it returns may the runtime commit ``offset`` to Kafka. On an
        exception nothing is marked clean: the next checkpoint writes the same keys again.
        """
        return C.write_checkpoint(self, offset=offset, meta=meta, full=full)
