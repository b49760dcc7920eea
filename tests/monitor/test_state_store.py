"""Keyed state store (monitor.state): bounds, eviction, incremental checkpoints, crash safety.

Every state check compares the store against an independent pure-Python model (an
``OrderedDict`` LRU of plain lists), not against another run of the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.state import (
    KeyedStateStore,
    StateKeyError,
    StateSchema,
    StateSchemaMismatch,
    StateStoreCorrupt,
    StateStoreError,
    StoreLimits,
    set_aside,
)
from monitor.state import segments as S

RING = 4
SCHEMA = StateSchema.of(ring=("float32", (RING,)), n="int64", total=("float64", (), 0.0),
                        first=("int64", (), -1))
REPO = Path(__file__).resolve().parents[2]


def update(store: KeyedStateStore, key: str, t: int, v: float) -> None:
    rec = store.get_or_create(key, t)
    rec["ring"][rec["n"] % RING] = v
    if rec["n"] == 0:
        rec["first"] = t
    rec["n"] += 1
    rec["total"] += v


class Model:
    """Independent reference: LRU of plain Python state, same update rule."""

    def __init__(self, cap: int) -> None:
        self.cap, self.d = cap, OrderedDict[str, dict[str, Any]]()
        self.evicted = 0

    def update(self, key: str, t: int, v: float) -> None:
        if key in self.d:
            self.d.move_to_end(key)
        else:
            if len(self.d) >= self.cap:
                self.d.popitem(last=False)
                self.evicted += 1
            self.d[key] = {"ring": [0.0] * RING, "n": 0, "total": 0.0, "first": -1, "seen": t}
        s = self.d[key]
        s["ring"][s["n"] % RING] = float(np.float32(v))
        if s["n"] == 0:
            s["first"] = t
        s["n"] += 1
        s["total"] += v
        s["seen"] = max(s["seen"], t)


def assert_same(store: KeyedStateStore, model: Model) -> None:
    assert list(store.keys()) == list(model.d), "keys or recency order differ"
    for key, want in model.d.items():
        rec = store.peek(key)
        assert rec is not None
        assert rec["ring"].tolist() == want["ring"], key
        assert int(rec["n"]) == want["n"] and int(rec["first"]) == want["first"], key
        assert float(rec["total"]) == pytest.approx(want["total"], rel=0, abs=1e-9), key
        assert store.last_seen_ms(key) == want["seen"], key


def stream(seed: int, n_batches: int, batch: int, n_keys: int):
    """The record stream both the store and the model consume (child process included)."""
    rng = np.random.default_rng(seed)
    t = 0
    for _ in range(n_batches):
        keys, vals = rng.integers(0, n_keys, size=batch), rng.normal(size=batch)
        yield [(f"client-{k}", t + i, float(v)) for i, (k, v) in enumerate(zip(keys, vals,
                                                                               strict=True))]
        t += batch


# ---- schema and access ------------------------------------------------------------------------

def test_schema_refuses_what_cannot_be_plain_arrays() -> None:
    with pytest.raises(ValueError, match="no objects or strings"):
        StateSchema.of(x="object")
    with pytest.raises(ValueError, match="no objects or strings"):
        StateSchema.of(x="U8")
    with pytest.raises(ValueError, match="identifier"):
        StateSchema.of(**{"not a name": "int64"})
    with pytest.raises(ValueError, match="positive"):
        StateSchema.of(x=("float32", (0,)))
    with pytest.raises(ValueError, match="max_bytes_per_key=1024"):
        KeyedStateStore(StateSchema.of(x=("float64", (200,))), StoreLimits(max_bytes_per_key=1024))
    with pytest.raises(ValueError, match="holds no key"):
        KeyedStateStore(SCHEMA, StoreLimits(max_memory_bytes=1000))


def test_new_keys_start_from_defaults_and_views_write_through() -> None:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=10))
    update(store, "a", 5, 2.5)
    update(store, "a", 7, 1.0)
    rec = store.peek("a")
    assert rec is not None and rec["ring"].tolist() == [2.5, 1.0, 0.0, 0.0]
    assert (int(rec["n"]), float(rec["total"]), int(rec["first"])) == (2, 3.5, 5)
    rec["n"] = 99  # a copy: the store is unchanged
    assert int(store.peek("a")["n"]) == 2  # type: ignore[index]
    assert store.peek("b") is None and "b" not in store and len(store) == 1
    fresh = store.get_or_create("b", 8)
    assert int(fresh["first"]) == -1 and int(fresh["n"]) == 0
    assert store.clone().schema is SCHEMA and len(store.clone()) == 0


def update_columns(store: KeyedStateStore, key: str, t: int, v: float) -> None:
    cols, row = store.locate(key, t)
    n = cols["n"][row]
    cols["ring"][row, n % RING] = v
    if n == 0:
        cols["first"][row] = t
    cols["n"][row] += 1
    cols["total"][row] += v


def test_column_access_is_the_same_state(tmp_path: Path) -> None:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=100), directory=tmp_path)
    model = Model(100)
    for batch in stream(5, 3, 300, 250):
        for key, t, v in batch:
            update_columns(store, key, t, v)
            model.update(key, t, v)
        store.checkpoint()
        assert_same(store, model)
    assert_same(KeyedStateStore(SCHEMA, StoreLimits(max_keys=100), directory=tmp_path), model)


@pytest.mark.parametrize("bad", ["", "x" * 65, "é" * 33, 17, None, ["a"], b"a"])
def test_bad_keys_are_refused_and_leave_the_store_intact(bad: Any) -> None:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=2, idle_timeout_ms=10))
    update(store, "a", 0, 1.0)
    update(store, "b", 1, 1.0)
    with pytest.raises(StateKeyError):
        store.get_or_create(bad, 2)
    assert isinstance(StateKeyError("x"), ValueError)
    for t in (2**63, -(2**63)):
        with pytest.raises(ValueError, match="outside int64"):
            store.get_or_create("a", t)
    assert sorted(store.keys()) == ["a", "b"] and store.evictions == {"capacity": 0, "idle": 0}
    assert store.watermark_ms == 1


def test_capacity_evicts_least_recently_used_and_counts() -> None:
    seen: list[tuple[str, int, str]] = []
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=3),
                            on_evict=lambda k, r, why: seen.append((k, int(r["n"]), why)))
    model = Model(3)
    for key, t, v in next(stream(0, 1, 500, 7)):
        update(store, key, t, v)
        model.update(key, t, v)
    assert_same(store, model)
    assert store.evictions == {"capacity": model.evicted, "idle": 0} and model.evicted > 100
    assert len(seen) == model.evicted and {w for *_, w in seen} == {"capacity"}
    st_ = store.stats()
    assert (st_.keys, st_.evicted_capacity_total, st_.created_total) == (
        3, model.evicted, model.evicted + 3)
    assert store.delete(next(store.keys())) and store.stats().deleted_total == 1


def test_idle_keys_are_evicted_by_event_time() -> None:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=10, idle_timeout_ms=1000))
    update(store, "a", 0, 1.0)
    update(store, "b", 500, 1.0)
    update(store, "c", 300, 1.0)  # late record: event time does not go back
    assert store.watermark_ms == 500 and len(store) == 3
    update(store, "b", 1100, 1.0)  # a (seen at 0) is over 1000 ms behind; c (300) is not
    assert sorted(store.keys()) == ["b", "c"] and store.evictions["idle"] == 1
    assert store.expire() == 0
    assert store.expire(watermark_ms=1301) == 1 and sorted(store.keys()) == ["b"]
    assert store.expire(watermark_ms=2101) == 1 and len(store) == 0
    assert store.stats().evicted_idle_total == 3


# ---- checkpoints ------------------------------------------------------------------------------

def test_checkpoints_write_only_changed_keys_and_reload_exactly(tmp_path: Path) -> None:
    lim = StoreLimits(max_keys=300, compact_every=1000, compact_ratio=1000.0)
    store = KeyedStateStore(SCHEMA, lim, directory=tmp_path)
    model = Model(300)
    batches, tombs = stream(1, 12, 200, 400), 0
    for i, batch in enumerate(batches):
        before = store.stats()
        for key, t, v in batch:
            update(store, key, t, v)
            model.update(key, t, v)
        dirty, tomb = store.stats().dirty_keys, store.stats().tombstones
        info = store.checkpoint(offset=(i + 1) * 200, meta={"batch": i})
        if i == 0:
            assert info.kind == "base" and info.keys_written == len(model.d)
        else:
            assert info.kind == "delta" and (info.keys_written, info.tombstones_written) == (
                dirty, tomb)
            assert 0 < dirty < 200
            assert tomb <= store.evictions["capacity"] - before.evicted_capacity_total
            tombs += tomb
        again = KeyedStateStore(SCHEMA, lim, directory=tmp_path)
        assert_same(again, model)
        assert (again.offset, again.meta, again.seq) == ((i + 1) * 200, {"batch": i}, i + 1)
    assert tombs > 50  # evicted keys that were on disk left as tombstones
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["MANIFEST.json", "base-000000000001.npz"] + [
        f"delta-{s:012d}.npz" for s in range(2, 13)]
    # an unchanged store still moves its offset, with a manifest-only checkpoint
    info = store.checkpoint(offset=5000)
    assert (info.kind, info.keys_written) == ("manifest", 0)
    assert KeyedStateStore(SCHEMA, lim, directory=tmp_path).offset == 5000


def test_compaction_replaces_the_deltas_and_recency_survives_restart(tmp_path: Path) -> None:
    lim = StoreLimits(max_keys=50, compact_every=3)
    store = KeyedStateStore(SCHEMA, lim, directory=tmp_path)
    model = Model(50)
    kinds = []
    for batch in stream(2, 9, 40, 80):
        for key, t, v in batch:
            update(store, key, t, v)
            model.update(key, t, v)
        kinds.append(store.checkpoint().kind)
    assert kinds.count("base") >= 2 and "delta" in kinds
    segs = sorted(p.name for p in tmp_path.glob("*.npz"))
    manifest = json.loads((tmp_path / S.MANIFEST).read_text())
    assert segs == sorted(s["name"] for s in manifest["segments"])  # old ones deleted
    assert len(segs) <= 3
    again = KeyedStateStore(SCHEMA, lim, directory=tmp_path)
    assert_same(again, model)
    # the same next eviction with and without a restart
    for s in (store, again):
        update(s, "new-key", 10**6, 1.0)
    model.update("new-key", 10**6, 1.0)
    assert_same(again, model)
    assert_same(store, model)


def test_full_checkpoint_after_heavy_churn_and_shrunk_limit(tmp_path: Path) -> None:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=20), directory=tmp_path)
    for i in range(20):
        update(store, f"k{i}", i, 1.0)
    store.checkpoint()
    for i in range(20, 60):  # evicts every persisted key: tombstones overflow -> full snapshot
        update(store, f"k{i}", i, 1.0)
    assert store.stats().tombstones <= 10
    assert store.checkpoint().kind == "base"
    small = KeyedStateStore(SCHEMA, StoreLimits(max_keys=5), directory=tmp_path)
    assert list(small.keys()) == [f"k{i}" for i in range(55, 60)]
    assert small.evictions["capacity"] == 15
    info = small.checkpoint()  # 15 tombstones would cost more than the 5 keys: a base
    assert (info.kind, info.keys_written) == ("base", 5)
    assert list(KeyedStateStore(SCHEMA, StoreLimits(max_keys=5), directory=tmp_path).keys()) == [
        f"k{i}" for i in range(55, 60)]


def test_small_delta_over_many_pages_round_trips(tmp_path: Path) -> None:
    big = StateSchema.of(v=("float32", (4096,)), n="int64")  # 16 KiB records: 32 per page
    store = KeyedStateStore(big, StoreLimits(max_keys=1000), directory=tmp_path)
    assert store.page_rows == 32
    want = {}
    for i in range(640):
        rec = store.get_or_create(f"k{i}", i)
        rec["v"][:] = i
        rec["n"] = i
        want[f"k{i}"] = i
    store.checkpoint()
    rng = np.random.default_rng(6)
    for gen in range(1, 4):  # 25 keys over many of 20 pages: the gathered path
        for i in rng.choice(640, size=25, replace=False).tolist():
            rec = store.get_or_create(f"k{i}", 1000 * gen + i)
            rec["v"][:] = i + 0.5 * gen
            rec["n"] += 1
            want[f"k{i}"] = i + 0.5 * gen
        info = store.checkpoint()
        assert (info.kind, info.keys_written) == ("delta", 25)
    again = KeyedStateStore(big, StoreLimits(max_keys=1000), directory=tmp_path)
    assert len(again) == 640
    for key, v in want.items():
        rec, mine = again.peek(key), store.peek(key)
        assert rec is not None and mine is not None
        assert np.all(rec["v"] == np.float32(v)) and int(rec["n"]) == int(mine["n"]), key


def test_schema_change_is_refused_with_the_fix(tmp_path: Path) -> None:
    store = KeyedStateStore(SCHEMA, directory=tmp_path)
    update(store, "a", 0, 1.0)
    store.checkpoint()
    with pytest.raises(StateSchemaMismatch, match="move that directory away"):
        KeyedStateStore(StateSchema.of(n="int64"), directory=tmp_path)
    with pytest.raises(StateStoreError, match="no directory"):
        KeyedStateStore(SCHEMA).checkpoint()


# ---- crash safety -----------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["segment", "segment-renamed", "manifest"])
def test_a_checkpoint_interrupted_at_any_step_leaves_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phase: str) -> None:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=100), directory=tmp_path)
    model = Model(100)
    batches = stream(3, 3, 150, 150)
    for key, t, v in next(batches):
        update(store, key, t, v)
        model.update(key, t, v)
    store.checkpoint(offset=150)
    for batch in batches:
        for key, t, v in batch:
            update(store, key, t, v)
    real_replace, real_fsync_dir = os.replace, S.fsync_dir

    def crash(*a: Any, **k: Any) -> None:
        raise OSError("injected crash")

    if phase == "segment":
        monkeypatch.setattr(S.os, "replace", crash)
    elif phase == "segment-renamed":
        monkeypatch.setattr(S, "write_manifest", crash)
    else:
        def replace(src: Any, dst: Any) -> None:
            if str(dst).endswith(S.MANIFEST):
                raise OSError("injected crash")
            real_replace(src, dst)
        monkeypatch.setattr(S.os, "replace", replace)
    dirty = store.stats().dirty_keys
    with pytest.raises(OSError, match="injected"):
        store.checkpoint(offset=450)
    monkeypatch.setattr(S.os, "replace", real_replace)
    monkeypatch.setattr(S, "fsync_dir", real_fsync_dir)
    assert store.stats().dirty_keys == dirty  # nothing was marked clean
    reloaded = KeyedStateStore(SCHEMA, StoreLimits(max_keys=100), directory=tmp_path)
    assert reloaded.offset == 150 and reloaded.seq == 1
    assert_same(reloaded, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MANIFEST.json",
                                                          "base-000000000001.npz"]
    monkeypatch.undo()
    assert store.checkpoint(offset=450).keys_written == dirty  # the retry writes them all


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from monitor.state import KeyedStateStore, StateSchema, StoreLimits
    RING = 4
    schema = StateSchema.of(ring=("float32", (RING,)), n="int64", total=("float64", (), 0.0),
                            first=("int64", (), -1))
    store = KeyedStateStore(schema, StoreLimits(max_keys=3000, compact_every=4),
                            directory=sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    t = 0
    while True:
        keys, vals = rng.integers(0, 5000, size=2000), rng.normal(size=2000)
        for i, (k, v) in enumerate(zip(keys, vals)):
            rec = store.get_or_create(f"client-{k}", t + i)
            rec["ring"][rec["n"] % RING] = v
            if rec["n"] == 0:
                rec["first"] = t + i
            rec["n"] += 1
            rec["total"] += float(v)
        t += 2000
        info = store.checkpoint(offset=t)
        print(info.seq, t, info.kind, flush=True)
""")


@pytest.mark.parametrize("seed,delay", [(11, 0.0), (12, 0.011), (13, 0.037)])
def test_kill_9_mid_stream_reloads_the_last_completed_checkpoint(
        tmp_path: Path, seed: int, delay: float) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    d = tmp_path / "state"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(d), str(seed)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    done = [proc.stdout.readline() for _ in range(3)]  # three checkpoints have completed
    assert all(done), f"child died early: {done}"
    time.sleep(delay)  # then somewhere inside the next batch of updates or its checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = [*done, *proc.stdout.read().splitlines()]
    last_seq, last_offset, _ = lines[-1].split()
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=3000), directory=d)
    # the kill may land after a manifest rename and before the print: one more is fine
    assert store.seq in (int(last_seq), int(last_seq) + 1)
    assert store.offset == int(last_offset) + 2000 * (store.seq - int(last_seq))
    model = Model(3000)
    assert store.offset is not None
    for batch in stream(seed, store.offset // 2000, 2000, 5000):
        for key, t, v in batch:
            model.update(key, t, v)
    assert_same(store, model)


# ---- memory bound -----------------------------------------------------------------------------

MEM_CHILD = textwrap.dedent("""
    import json, sys, tempfile
    from monitor.state import KeyedStateStore, StateSchema, StoreLimits
    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    schema = StateSchema.of(ring=("float32", (8, 16)), n="int64", hashes=("uint64", (8,)))
    bound = int(sys.argv[1]) or None
    store = KeyedStateStore(schema, StoreLimits(max_keys=100_000, max_memory_bytes=bound),
                            directory=tempfile.mkdtemp() if bound else None)
    base = rss("VmRSS")
    for i in range(100_000):
        # 64-character pseudonyms, made per record as a decoder would (the store keeps them)
        rec = store.get_or_create(f"{i:064x}", i)
        rec["ring"][i % 8] = 1.0
        rec["n"] += 1
        if bound and i % 10_000 == 9_999:
            store.checkpoint(offset=i + 1)
    print(json.dumps({"grew": rss("VmHWM") - base, "keys": len(store),
                      "capacity": store.capacity, "evicted": store.evictions["capacity"],
                      "bound": store.memory_bound_bytes, "estimate": store.memory_bytes()}))
""")


def test_100k_clients_stay_under_the_configured_memory_bound(tmp_path: Path) -> None:
    script = tmp_path / "mem.py"
    script.write_text(MEM_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bound = 16 << 20

    def run(limit: int) -> dict[str, int]:
        out = subprocess.run([sys.executable, str(script), str(limit)], env=env, check=True,
                             capture_output=True, text=True, timeout=120).stdout
        return dict(json.loads(out))

    bounded, unbounded = run(bound), run(0)
    assert bounded["keys"] == bounded["capacity"] and 5_000 < bounded["capacity"] < 100_000
    assert bounded["evicted"] == 100_000 - bounded["capacity"]
    assert bounded["bound"] <= bound and bounded["estimate"] <= bounded["bound"]
    # Peak RSS, checkpoints included. The bound caps the store's own arrays; the process also
    # carries allocator slack and checkpoint write buffers (measured 15.0-17.1 MB of growth
    # against 16.8 MB across loaded runs), so allow a fixed 4 MiB on top, far below the
    # unbounded run's growth asserted next.
    assert bounded["grew"] <= bound + (4 << 20), bounded
    # the measurement can fail: the same stream without the bound (and without checkpoints,
    # to save time) grows far past it
    assert unbounded["evicted"] == 0 and unbounded["grew"] > 3 * bound, unbounded


# ---- validation of what is on disk ------------------------------------------------------------

def _checkpointed(tmp_path: Path) -> Path:
    store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=50), directory=tmp_path)
    for batch in stream(4, 2, 60, 60):
        for key, t, v in batch:
            update(store, key, t, v)
        store.checkpoint(offset=1)
    return tmp_path


def _rewrite(d: Path, name: str, members: dict[str, np.ndarray[Any, Any]]) -> None:
    """Replace one segment with crafted arrays and fix the manifest digest (a *consistent*
    tamper, so the checks behind the digest are what must catch it)."""
    with zipfile.ZipFile(d / name, "w") as zf:
        for k, a in members.items():
            with zf.open(f"{k}.npy", "w") as fp:
                np.lib.format.write_array(fp, a, allow_pickle=True)
    m = json.loads((d / S.MANIFEST).read_text())
    data = (d / name).read_bytes()
    for s in m["segments"]:
        if s["name"] == name:
            s["bytes"], s["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (d / S.MANIFEST).write_text(json.dumps(m))


def _members(d: Path, name: str) -> dict[str, np.ndarray[Any, Any]]:
    with np.load(d / name, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


TAMPERS = {
    "object array (pickle)": lambda m: m.update({"f.n": m["f.n"].astype(object)}),
    "wrong dtype": lambda m: m.update({"f.total": m["f.total"].astype(np.float32)}),
    "wrong shape": lambda m: m.update({"f.ring": m["f.ring"][:, :2].copy()}),
    "extra member": lambda m: m.update({"extra": np.zeros(3)}),
    "missing member": lambda m: m.pop("ticks"),
    "offsets out of range": lambda m: m["keys_offsets"].__setitem__(-1, 10**9),
    "duplicate keys": lambda m: m.update(
        {"keys_blob": np.frombuffer(b"ab" * (len(m["keys_offsets"]) - 1), np.uint8),
         "keys_offsets": np.arange(len(m["keys_offsets"]), dtype=np.int64) * 2}),
    "not utf-8": lambda m: m["keys_blob"].__setitem__(0, 0xFF),
    "meta of another seq": lambda m: m.update({"__meta__": np.frombuffer(json.dumps(
        {**json.loads(m["__meta__"].tobytes()), "seq": 99}).encode(), np.uint8)}),
}


@pytest.mark.parametrize("what", sorted(TAMPERS))
def test_tampered_segment_is_a_clear_error(tmp_path: Path, what: str) -> None:
    d = _checkpointed(tmp_path)
    name = json.loads((d / S.MANIFEST).read_text())["segments"][-1]["name"]
    members = {k: v.copy() for k, v in _members(d, name).items()}
    TAMPERS[what](members)
    _rewrite(d, name, members)
    with pytest.raises(StateStoreCorrupt) as e:
        KeyedStateStore(SCHEMA, StoreLimits(max_keys=50), directory=d)
    assert name in str(e.value.path) and "start this stage's keyed state fresh" in str(e.value)


def test_truncated_or_flipped_segment_and_bad_manifest(tmp_path: Path) -> None:
    d = _checkpointed(tmp_path)
    seg = d / json.loads((d / S.MANIFEST).read_text())["segments"][0]["name"]
    good = seg.read_bytes()
    for bad in (good[:-7], good[:100] + bytes([good[100] ^ 1]) + good[101:]):
        seg.write_bytes(bad)
        with pytest.raises(StateStoreCorrupt, match="sha256"):
            KeyedStateStore(SCHEMA, directory=d)
    seg.unlink()
    with pytest.raises(StateStoreCorrupt, match="cannot be read"):
        KeyedStateStore(SCHEMA, directory=d)
    (d / S.MANIFEST).write_text('{"kind": "repwatch.keyed-state", "format": 1, "seq": 1, '
                                '"meta": {}, "schema": [], "segments": [{"name": "../x"}]}')
    with pytest.raises(StateStoreCorrupt, match="malformed"):
        KeyedStateStore(SCHEMA, directory=d)
    moved = set_aside(d)
    assert moved.exists() and not d.exists()
    assert len(KeyedStateStore(SCHEMA, directory=d)) == 0  # fresh start


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbage_on_disk_never_crashes_the_load(tmp_path_factory: pytest.TempPathFactory,
                                               data: st.DataObject) -> None:
    d = _checkpointed(tmp_path_factory.mktemp("fuzz"))
    m = json.loads((d / S.MANIFEST).read_text())
    if data.draw(st.booleans(), "mangle the manifest"):
        raw = bytearray((d / S.MANIFEST).read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, 1 << 20)) % len(raw)
            raw[i] = data.draw(st.integers(0, 255))
        (d / S.MANIFEST).write_bytes(bytes(raw))
    else:  # mangle a segment consistently (digest fixed), so the parser itself is tested
        name = m["segments"][-1]["name"]
        raw = bytearray((d / name).read_bytes())
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, 1 << 20)) % len(raw)
            raw[i] = data.draw(st.integers(0, 255))
        (d / name).write_bytes(bytes(raw))
        for s in m["segments"]:
            if s["name"] == name:
                s["bytes"], s["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
        (d / S.MANIFEST).write_text(json.dumps(m))
    try:
        store = KeyedStateStore(SCHEMA, StoreLimits(max_keys=50), directory=d)
    except StateStoreError:
        return
    assert len(store) <= 50  # a harmless change (e.g. in a float) may load
