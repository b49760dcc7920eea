"""Checkpointing of :class:`~monitor.state.store.KeyedStateStore`: delta, compaction, load.

Functions on the store's own slots, pages and dirty set (a friend module, so that store.py stays
about access and bounds). The format and the commit protocol are in :mod:`monitor.state.segments`.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray

from monitor.state import segments as S
from monitor.state.schema import StateStoreCorrupt, StateStoreError

if TYPE_CHECKING:
    from monitor.state.store import KeyedStateStore

_LOAD_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class CheckpointInfo:
    """What one :meth:`KeyedStateStore.checkpoint` wrote (it is on disk when this exists)."""

    seq: int
    offset: int | None
    kind: str  # "base" (compaction) | "delta" | "manifest" (nothing changed but the offset)
    keys_written: int
    tombstones_written: int
    bytes_written: int
    seconds: float
    live_keys: int


def write_checkpoint(store: KeyedStateStore, *, offset: int | None,
                     meta: Mapping[str, Any] | None, full: bool) -> CheckpointInfo:
    """:meth:`KeyedStateStore.checkpoint` (segment first, then the manifest: the commit)."""
    if store.directory is None:
        raise StateStoreError("this store has no directory: pass directory= to checkpoint")
    meta_d = dict(meta or {})
    if len(json.dumps(meta_d)) > S.MAX_META_BYTES:
        raise ValueError(f"checkpoint meta is over {S.MAX_META_BYTES} bytes of JSON")
    if offset is not None:
        offset = int(offset)
    t0 = time.perf_counter()
    deltas = store._segments[1:]
    delta_bytes = sum(d.bytes for d in deltas)
    compact = (full or store._full_pending or not store._segments
               or len(deltas) >= store.limits.compact_every
               or delta_bytes > store.limits.compact_ratio * store._segments[0].bytes
               or len(store._dirty) + len(store._tombstones) > len(store._index))
    seq = store.seq + 1
    written = 0
    if compact:
        slots = np.sort(np.fromiter(store._index.values(), dtype=np.intp,
                                    count=len(store._index)))
        ref = _write(store, seq, "base", slots, [])
        segs: tuple[S.SegmentRef, ...] = (ref,)
    elif store._dirty or store._tombstones:
        slots = np.sort(np.fromiter(store._dirty, dtype=np.intp, count=len(store._dirty)))
        ref = _write(store, seq, "delta", slots, sorted(store._tombstones))
        segs = (*store._segments, ref)
    else:
        ref, slots, segs = None, np.zeros(0, dtype=np.intp), store._segments
    manifest = S.Manifest(seq, offset, meta_d, store.watermark_ms, store._tick,
                          store.schema.describe(), segs, time.time())
    S.write_manifest(store.directory, manifest)
    written = (ref.bytes if ref else 0) + len(manifest.to_json())
    # Committed: the in-memory state says so before anything else may fail.
    if compact:
        store._persisted[:] = False
        store.compactions_total += 1
    store._persisted[slots] = True
    n_tomb = ref.tombstones if ref else 0
    store._dirty.clear()
    store._tombstones.clear()
    store._full_pending = False
    store._segments, store.seq, store.offset, store.meta = segs, seq, offset, meta_d
    store.checkpoints_total += 1
    store.checkpoint_bytes_total += written
    store.last_checkpoint = CheckpointInfo(
        seq, offset, ref.kind if ref else "manifest", len(slots), n_tomb, written,
        time.perf_counter() - t0, len(store._index))
    if compact:
        try:
            _remove_unreferenced(store, segs)
        except OSError:  # a leftover file is harmless: the next load removes it
            pass
    return store.last_checkpoint


def _write(store: KeyedStateStore, seq: int, kind: str, slots: NDArray[np.intp],
           tombstones: list[str]) -> S.SegmentRef:
    assert store.directory is not None
    keys = cast(list[str], [store._slot_keys[s] for s in slots.tolist()])
    pages = slots >> store._shift
    cuts = np.flatnonzero(np.diff(pages)) + 1
    chunks = [(store._pages[int(part[0]) >> store._shift], part & store._mask)
              for part in np.split(slots, cuts) if part.size]
    if 1 < len(chunks) and slots.size <= store.page_rows:
        # A small delta scattered over many pages: gather its records once (at most a page),
        # so each field is one write instead of one per page.
        buf = np.concatenate([page[rows] for page, rows in chunks])
        chunks = [(buf, np.arange(buf.size, dtype=np.intp))]
    return S.write_segment(store.directory, kind, seq, store.schema, keys,
                           chunks, store._last_seen[slots], store._ticks[slots], tombstones)


def _remove_unreferenced(store: KeyedStateStore, live: tuple[S.SegmentRef, ...]) -> None:
    assert store.directory is not None
    keep = {r.name for r in live}
    for p in store.directory.iterdir():
        if (S.SEGMENT_RE.match(p.name) and p.name not in keep) or p.name.startswith(".tmp-"):
            p.unlink(missing_ok=True)


def load_into(store: KeyedStateStore) -> None:
    """Base + deltas in order, validated; recency order from the ticks; the limit applied."""
    assert store.directory is not None
    m = S.read_manifest(store.directory)
    if m is None:
        _remove_unreferenced(store, ())  # segments of a first checkpoint that never committed
        return
    store.schema.check_matches(m.schema, store.directory)
    if not m.segments:
        raise StateStoreCorrupt(store.directory / S.MANIFEST, "lists no base segment")
    for ref in m.segments:
        with S.open_segment(store.directory, ref, store.schema) as seg:
            _apply(store, seg)
    _remove_unreferenced(store, m.segments)
    store.seq, store.offset, store.meta, store._segments = m.seq, m.offset, m.meta, m.segments
    store.watermark_ms, store._tick = m.watermark_ms, m.tick
    keys = list(store._index)
    slots = np.fromiter(store._index.values(), np.intp, len(keys))
    order = np.argsort(store._ticks[slots], kind="stable").tolist()
    store._index = OrderedDict((keys[i], int(slots[i])) for i in order)
    store._persisted[np.fromiter(store._index.values(), np.intp, len(store._index))] = True
    while len(store._index) > store.capacity:  # the limit shrank since it was written
        old, old_slot = next(iter(store._index.items()))
        store._evict(old, old_slot, "capacity")


def _apply(store: KeyedStateStore, seg: S.SegmentData) -> None:
    for key in seg.tombstones:
        slot = store._index.pop(key, None)
        if slot is not None:
            store._release(key, slot)
    n = len(seg.keys)
    if not store._index and not store._slot_keys:  # a base into an empty store: in bulk
        store._grow(n)
        store._slot_keys = list(seg.keys)
        store._index = OrderedDict(zip(seg.keys, range(n), strict=True))
        store._key_bytes = sum(map(len, seg.keys))
        slots = np.arange(n, dtype=np.intp)
    else:
        slots = np.empty(n, dtype=np.intp)
        for i, key in enumerate(seg.keys):
            s = store._index.get(key)
            slots[i] = store._alloc(key) if s is None else s
    store._last_seen[slots] = seg.last_seen
    store._ticks[slots] = seg.ticks
    for f in store.schema.fields:
        for start, arr in seg.field_chunks(f.name, _LOAD_CHUNK_ROWS):
            _scatter(store, f.name, slots[start:start + len(arr)], arr)


def _scatter(store: KeyedStateStore, name: str, dst: NDArray[np.intp],
             arr: NDArray[Any]) -> None:
    if dst.size and dst[-1] - dst[0] == dst.size - 1 and bool(np.all(np.diff(dst) == 1)):
        i = 0  # consecutive slots (a base): plain slices, page by page
        while i < dst.size:
            s = int(dst[0]) + i
            off = s & store._mask
            k = min(dst.size - i, store.page_rows - off)
            store._pages[s >> store._shift][name][off:off + k] = arr[i:i + k]
            i += k
        return
    pg = dst >> store._shift
    for p in np.unique(pg).tolist():
        sel = pg == p
        store._pages[p][name][dst[sel] & store._mask] = arr[sel]


def set_aside(directory: str | os.PathLike[str]) -> Path:
    """Rename a checkpoint directory that failed to load to ``<dir>.corrupt-<unix time>``."""
    src = Path(directory)
    dst = src.with_name(f"{src.name}.corrupt-{int(time.time())}")
    os.replace(src, dst)
    return dst
