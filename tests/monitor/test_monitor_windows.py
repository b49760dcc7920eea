"""Windows as values: bounds, contents, min_records, and batching/checkpoint invariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import WindowConfig
from monitor.windows import Window, WindowState


def _stream(n: int, dt_ms: int = 100, t0: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    X = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    return X, [f"r{i}" for i in range(n)], t0 + np.arange(n, dtype=np.int64) * dt_ms


def _run(window: Window, n: int, cuts: list[int], restore_at: int | None = None,
         dt_ms: int = 100) -> list[tuple[int, int, list[str]]]:
    """Feed n records in batches split at ``cuts``; optionally round-trip the state once."""
    X, ids, ts = _stream(n, dt_ms)
    state = window.initialize(3)
    out = []
    edges = [0, *sorted(set(c for c in cuts if 0 < c < n)), n]
    for a, b in itertools.pairwise(edges):
        for w in window.agg(state, X[a:b], ids[a:b], ts[a:b]):
            assert [f"r{int(v)}" for v in w.X[:, 0]] == w.ids  # rows and ids stay aligned
            out.append((w.start, w.end, w.ids))
        if restore_at is not None and a <= restore_at < b:
            arrays, meta = state.get_state()
            state = WindowState.from_state({k: v.copy() for k, v in arrays.items()}, dict(meta))
    return out


def test_count_tumbling_bounds_and_contents() -> None:
    out = _run(Window("count", 4), 10, [3, 7])
    assert [(s, e) for s, e, _ in out] == [(0, 4), (4, 8)]
    assert out[1][2] == ["r4", "r5", "r6", "r7"]


def test_count_sliding_emits_every_step_once_full() -> None:
    out = _run(Window("count", 4, 2), 9, [5])
    assert [(s, e) for s, e, _ in out] == [(0, 4), (2, 6), (4, 8)]
    assert out[2][2] == ["r4", "r5", "r6", "r7"]


def test_count_every_seconds_tests_latest_records_on_an_event_time_grid() -> None:
    # Records every 100 ms; test the latest 5 whenever event time crosses a whole second.
    out = _run(Window("count", 5, every_seconds=1.0, min_records=1), 25, [7, 13])
    assert [e for _, e, _ in out] == [11, 21]  # records at t=1000 ms and t=2000 ms
    assert out[0][2] == ["r6", "r7", "r8", "r9", "r10"]


def test_time_tumbling_and_sliding_by_event_time() -> None:
    tumbling = _run(Window("time", 1), 35, [4, 20])  # 10 records per second
    assert [(s, e, len(i)) for s, e, i in tumbling] == [(0, 1000, 10), (1000, 2000, 10),
                                                        (2000, 3000, 10)]
    sliding = _run(Window("time", 2, 1), 35, [9])
    # Hopping windows are aligned to multiples of the step; the first one holds t0 too.
    assert [(s, e, len(i)) for s, e, i in sliding] == [(-1000, 1000, 10), (0, 2000, 20),
                                                       (1000, 3000, 20)]


def test_time_window_skips_gaps_and_counts_late_records() -> None:
    w = Window("time", 1)
    state = w.initialize(1)
    ts = np.array([0, 500, 10_000_000, 10_000_500, 10_001_000], dtype=np.int64)
    out = w.agg(state, np.zeros((5, 1)), list("abcde"), ts)
    assert [(c.start, c.end, c.ids) for c in out] == [(0, 1000, ["a", "b"]),
                                                      (10_000_000, 10_001_000, ["c", "d"])]
    w.agg(state, np.zeros((1, 1)), ["late"], np.array([600], dtype=np.int64))
    assert state.late == 1


def test_min_records_skips_small_windows() -> None:
    w = Window("time", 1, min_records=3)
    state = w.initialize(1)
    out = w.agg(state, np.zeros((4, 1)), list("abcd"), np.array([0, 1, 1500, 2500]))
    assert out == [] and state.skipped == 2


def test_invalid_specs_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="larger than size"):
        Window("count", 4, 8)
    with pytest.raises(ValueError, match="every_seconds applies to count"):
        Window("time", 4, every_seconds=1.0)
    w = Window.from_config(WindowConfig(kind="count", size=2000, every_seconds=5))
    assert w.describe() == "latest 2000 records every 5 s"


SPECS = [Window("count", 7), Window("count", 7, 3), Window("count", 6, every_seconds=0.5),
         Window("time", 1), Window("time", 2, 1)]


@settings(max_examples=60, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    cuts=st.lists(st.integers(1, 59), max_size=8),
    restore=st.one_of(st.none(), st.integers(0, 59)),
)
def test_windows_do_not_depend_on_batching_or_a_checkpoint_round_trip(spec, cuts, restore) -> None:
    """The replay guarantee: same records in the same order ⇒ the same windows, however the
    stream was cut into poll batches and wherever the worker was restored from a checkpoint."""
    assert _run(spec, 60, cuts, restore) == _run(spec, 60, [])
