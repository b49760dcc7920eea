"""Two workers in one consumer group split the partitions and, across the rebalance, put every
record into detector state exactly once."""

from __future__ import annotations

import time

import pytest
from kafka.partitioner.default import murmur2

from monitor.checkpoint import CheckpointStore

pytestmark = pytest.mark.integration
PARTITIONS = 4  # Tansu auto-creates topics with 4 partitions
PER_MODEL = 600


def _models(per_partition: int = 2) -> list[str]:
    """Model names whose keys land on every partition (the default murmur2 partitioner)."""
    chosen: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while any(len(v) < per_partition for v in chosen.values()):
        name = f"model{i}"
        part = (murmur2(name.encode()) & 0x7FFFFFFF) % PARTITIONS
        if len(chosen[part]) < per_partition:
            chosen[part].append(name)
        i += 1
    return sorted(n for v in chosen.values() for n in v)


def _seq(workers, model: str) -> int:
    for w in workers:
        for models in list(w.state.values()):
            ms = models.get(model)
            if ms is not None and ms.pipelines:
                return sum(p.seq for p in ms.pipelines.values())
    return 0


@pytest.mark.parametrize("prefetch", [False, True], ids=["poll-in-loop", "prefetch-thread"])
def test_two_workers_split_partitions_and_process_every_record_once(mon, prefetch) -> None:
    models = _models()
    config = mon.config(models=tuple(models), checkpoint_interval_seconds=0.2, prefetch=prefetch)
    a, b = mon.worker(config), mon.worker(config)
    half = PER_MODEL // 2
    mon.produce([r for m in models for r in mon.make(m, half)])
    ta = mon.in_thread(a)
    try:
        deadline = time.monotonic() + 60
        while a.processed < len(models) * half // 2:
            assert time.monotonic() < deadline, "worker A did not start consuming"
            time.sleep(0.05)
        tb = mon.in_thread(b)  # joins mid-stream: A revokes (checkpoints, commits), B restores
        mon.produce([r for m in models for r in mon.make(m, PER_MODEL - half, start=half)])
        deadline = time.monotonic() + 60
        while True:
            both = bool(a.state) and bool(b.state)
            if both and all(_seq([a, b], m) == PER_MODEL for m in models):
                break
            assert time.monotonic() < deadline, {m: _seq([a, b], m) for m in models}
            time.sleep(0.1)
        assert set(a.state).isdisjoint(b.state)
        assert len(set(a.state) | set(b.state)) == PARTITIONS
        # Some models moved from A to B mid-stream: B continued from A's checkpoints.
        moved = [m for models_b in b.state.values() for m in models_b
                 if a.metrics.records.labels(m, "1", "inference")._value.get() > 0]
        assert moved, "the rebalance happened before A processed anything"
    finally:
        a.stop()
        b.stop()
        ta.join(30)
        if "tb" in locals():
            tb.join(30)
    # Checkpoints after the drain: one per model, each with exactly PER_MODEL records of state.
    store = CheckpointStore(config.monitor.checkpoint_dir)
    found = {}
    for part in range(PARTITIONS):
        for ckpt in store.load_partition(mon.records_topic, part):
            assert ckpt.model not in found, f"{ckpt.model} checkpointed in two partitions"
            found[ckpt.model] = sum(int(m["seq"]) for _, m in ckpt.versions)
    assert found == dict.fromkeys(models, PER_MODEL)
