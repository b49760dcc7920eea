"""Keyed state for client-keyed stages: bounded, evicting, checkpointed incrementally.

A stage keyed by client pseudonym keeps one small, fixed-layout numpy record per client (e.g. a
ring buffer of the client's last *m* query embeddings or hashes plus counters). This package is
pure (numpy + stdlib, no Kafka, no Prometheus) and has three parts:

* :class:`StateSchema` (``schema.py``) — the record layout and the defaults a new key starts
  with; :class:`StoreLimits` — capacity, memory bound, idle timeout, key length, compaction;
* :class:`KeyedStateStore` (``store.py``) — the keys, their records, eviction, stats;
* ``checkpointing.py`` — delta / compaction writing and loading for the store;
* ``segments.py`` — the on-disk format and the atomic writes (below).

Using it from a stage
---------------------
::

    schema = StateSchema.of(ring=("float32", (32, dim)), n="int64", score=("float64", (), 0.0))
    store = KeyedStateStore(schema, StoreLimits(max_keys=100_000, idle_timeout_ms=3_600_000),
                            directory=ckpt_dir / topic / f"p{partition}" / model / "clients")
    for client, x, t in records_in_stream_order:        # one stage, one partition, in order
        rec = store.get_or_create(client, event_ms=t)    # writable view, marked dirty
        rec["ring"][rec["n"] % 32] = x
        rec["n"] += 1
    info = store.checkpoint(offset=next_offset)          # durable when it returns
    consumer.commit(next_offset)                         # only now

``get_or_create`` returns a view into the store's memory; it stays valid until the next call
that can evict (``get_or_create``, ``locate``, ``expire``, ``delete``) — take what you need and
drop it. ``locate(key, t)`` does the same and returns ``(columns, row)`` instead
(``columns["n"][row] += 1``): numpy's structured scalars cost ~1 µs per field access, column
views about a quarter of that, so a hot stage should use it.
A view changed later (e.g. from :meth:`KeyedStateStore.items`) needs ``mark_dirty(key)``.
``peek`` returns a copy and changes nothing. ``clone()`` gives an empty store with the same
schema and limits (for a new model version or partition). Keys are ``str`` of at most
``max_key_bytes`` UTF-8 bytes; anything else raises :class:`StateKeyError` (a ``ValueError``):
that is one bad record — dead-letter it, the store is unharmed (an event time outside int64
raises ``ValueError`` the same way). Event time drives idle eviction: a record stamped far in
the future would make every other key look idle, so the runtime must dead-letter implausible
timestamps before they reach the store (or pass a wall-clock watermark to ``expire``).

Bounds (they hold at every moment, not only at checkpoints)
-----------------------------------------------------------
* **keys**: at most ``capacity`` = ``max_keys``, lowered to fit ``max_memory_bytes`` when set;
  a new key beyond it evicts the least recently used (reason ``capacity``);
* **bytes per key**: fixed by the schema (``schema.itemsize``), refused at construction when
  over ``max_bytes_per_key``; ``memory_bound_bytes`` is the store's whole footprint at full
  capacity, ``memory_bytes()`` the current estimate;
* **idle**: with ``idle_timeout_ms``, a key whose last event time is that far behind the
  largest event time seen is evicted (reason ``idle``; checked every ``idle_timeout_ms/16`` of
  event time, and by ``expire(watermark_ms)`` that a wall-clock timer may call);
* eviction counts are plain counters: ``store.evictions`` (``{"capacity": n, "idle": n}``) and
  :meth:`KeyedStateStore.stats` (keys, dirty keys, created/evicted/deleted totals, checkpoint
  and compaction totals, bytes written, memory estimate and bound). The runtime turns them
  into Prometheus metrics.

Files (one directory per store; one writer per directory)
---------------------------------------------------------
::

    <dir>/MANIFEST.json              the commit point: format, seq, offset, meta, watermark,
                                     tick, schema, and the live segments with bytes + sha256
    <dir>/base-<seq:012d>.npz        every live key at checkpoint <seq> (a compaction)
    <dir>/delta-<seq:012d>.npz       keys changed since the previous checkpoint + tombstones
                                     of keys evicted or deleted since (only keys that were on
                                     disk get a tombstone)

Segments are uncompressed ``.npz`` — arrays only (keys as a UTF-8 blob + offsets, one array
per schema field, last-seen times, recency ticks), readable by
``np.load(f, allow_pickle=False)``; nothing is pickled. See :mod:`monitor.state.segments`.

Guarantees
----------
* **Atomic**: a checkpoint writes its segment to a temp file, fsyncs, renames it into place,
  fsyncs the directory, then does the same for the manifest. The manifest rename is the commit:
  a crash (even ``kill -9``) at any point leaves the previous checkpoint or the new one, never a
  mix; a segment without a manifest entry is an orphan that the next load deletes.
* **Incremental**: a checkpoint writes only the keys changed since the last one (cost grows
  with dirty keys, not total keys: ``benchmarks/results/state_store.md``). It compacts — writes
  a base of all keys and deletes the older segments — on the first checkpoint, after
  ``compact_every`` deltas, when the deltas' bytes exceed ``compact_ratio`` × the base's, when
  more keys changed than exist, or on ``checkpoint(full=True)``. A checkpoint with no change
  only rewrites the manifest (the offset still advances).
* **Offsets after state**: ``checkpoint(offset=...)`` stores the offset with the state it
  covers; ``store.offset`` / ``store.seq`` / ``store.meta`` after loading say what the state
  reflects. Commit an offset to Kafka only after the ``checkpoint`` that stored it returned;
  when a worker keeps other state too (``monitor.checkpoint``), commit the smaller offset.
* **Validated load**: ``KeyedStateStore(..., directory=d)`` loads base + deltas in order after
  checking each segment's size and SHA-256 against the manifest, its member list, dtypes,
  shapes, key offsets and embedded seq/kind. Anything wrong raises
  :class:`StateStoreCorrupt` (``.path`` names the file), never another exception type and never
  a crash; a schema change raises :class:`StateSchemaMismatch`. Both derive from
  :class:`StateStoreError`; on either, :func:`set_aside` the directory and start fresh from the
  committed offset.
* **A failed checkpoint loses nothing**: on an exception (disk full…) the dirty set is kept and
  the next checkpoint writes those keys again; the runtime must not commit that offset.
* Recency order survives a restart (ticks are stored); counters start at zero per process.
"""

from monitor.state.checkpointing import CheckpointInfo, set_aside
from monitor.state.schema import (
    StateField,
    StateKeyError,
    StateSchema,
    StateSchemaMismatch,
    StateStoreCorrupt,
    StateStoreError,
    StoreLimits,
)
from monitor.state.store import KeyedStateStore, StoreStats

__all__ = [
    "CheckpointInfo",
    "KeyedStateStore",
    "StateField",
    "StateKeyError",
    "StateSchema",
    "StateSchemaMismatch",
    "StateStoreCorrupt",
    "StateStoreError",
    "StoreLimits",
    "StoreStats",
    "set_aside",
]
