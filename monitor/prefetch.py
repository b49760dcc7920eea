"""Fetch one batch ahead: ``poll`` + ``decode_many`` on a thread while the loop runs detectors.

:class:`PrefetchingConsumer` has the interface of :class:`monitor.kafka_io.Consumer`, so the
runtime does not change. A fetcher thread owns the Kafka consumer: it runs the commits the loop
asked for, polls, decodes and queues the batch (at most ``depth`` batches ahead). Rebalance
callbacks fire on the client's thread while the fetcher is in ``poll``; they are queued as
markers *behind* the batches already fetched, and the loop's ``poll`` runs them on the loop
thread in that order:

* *revoke*: the loop first processes every batch fetched before it, then checkpoints the
  revoked partitions; the client thread waits for that and commits the offsets it returns;
* *assign*: restored before any record of the new partitions is handed out.

Records fetched but not yet processed when the worker stops are dropped, not committed: the loop
only commits offsets it has processed, so they are read again by the next owner.

``seek`` (the loop rewinding partitions after a failed batch) is run by the fetcher before its
next poll; batches fetched before it carry an older ``generation`` and are dropped by ``poll``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from monitor import records as R
from monitor.kafka_io import TP, Batch, Consumer

log = logging.getLogger(__name__)


class PrefetchingConsumer:
    def __init__(
        self,
        make_consumer: Callable[[Callable[[list[TP]], None], Callable[[list[TP]], dict[TP, int]]],
                                Consumer],
        on_assign: Callable[[list[TP]], None],
        on_revoke: Callable[[list[TP]], dict[TP, int]],
        max_records: int,
        depth: int = 2,
    ) -> None:
        self.on_assign, self.on_revoke, self.max_records = on_assign, on_revoke, max_records
        self._q: queue.Queue[tuple[str, Any, Future[Any] | None]] = queue.Queue(depth)
        self._commits: queue.Queue[dict[TP, int]] = queue.Queue()
        self._seeks: queue.Queue[tuple[TP, int, int]] = queue.Queue()
        self._gen = 0  # loop side: batches of an older generation were fetched before a seek
        self._fetch_gen = 0
        self._stop = threading.Event()
        self._closing = False
        self._highwater: dict[TP, int] = {}
        self._assignment: list[TP] = []
        self._c = make_consumer(self._assigned, self._revoked)
        self._thread = threading.Thread(target=self._fetch, name="repwatch-fetcher", daemon=True)
        self._thread.start()

    # --- client thread (rebalance callbacks, inside the fetcher's poll) ---------------------
    def _put(self, item: tuple[str, Any, Future[Any] | None]) -> bool:
        while not self._closing:
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _assigned(self, tps: list[TP]) -> None:
        if self._closing or not self._put(("assign", tps, None)):
            self.on_assign(tps)  # the loop is blocked in close(): nothing else touches state

    def _revoked(self, tps: list[TP]) -> dict[TP, int]:
        fut: Future[dict[TP, int]] = Future()
        if self._closing or not self._put(("revoke", tps, fut)):
            return self.on_revoke(tps)
        return fut.result()

    # --- fetcher thread -------------------------------------------------------------------
    def _run_commits(self) -> None:
        while True:
            try:
                offsets = self._commits.get_nowait()
            except queue.Empty:
                return
            try:
                self._c.commit(offsets)
            except Exception as exc:  # the checkpoint still guards the state
                log.warning("commit of %s failed: %s", offsets, exc)

    def _run_seeks(self) -> None:
        seeks = []
        while True:
            try:
                seeks.append(self._seeks.get_nowait())
            except queue.Empty:
                break
        if not seeks:
            return
        for tp, offset, gen in seeks:
            try:
                self._c.seek(tp, offset)
            except Exception as exc:  # partition no longer assigned: its next owner replays
                log.warning("seek of %s to %d failed: %s", tp, offset, exc)
            self._fetch_gen = max(self._fetch_gen, gen)

    def _fetch(self) -> None:
        try:
            while not self._stop.is_set():
                self._run_commits()
                self._run_seeks()
                gen = self._fetch_gen
                batch = self._c.poll(0.1, self.max_records)
                batch.generation = gen
                self._assignment = self._c.assignment()
                self._highwater = self._c.highwaters()
                if not len(batch):
                    continue
                t = time.perf_counter()
                batch.decoded = R.decode_many(batch.values)
                batch.decode_seconds = time.perf_counter() - t
                if not self._put(("batch", batch, None)):
                    break
        except Exception:
            log.exception("fetcher thread failed")
            self._put(("error", None, None))
        finally:
            self._run_commits()

    # --- loop thread ----------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int) -> Batch:
        end = time.monotonic() + timeout_s
        while True:
            try:
                kind, payload, fut = self._q.get(timeout=max(end - time.monotonic(), 0.001))
            except queue.Empty:
                return Batch()
            if kind == "batch":
                if payload.generation < self._gen:
                    continue  # fetched before a seek: read again from the new position
                return payload
            self._control(kind, payload, fut)
            if kind == "error":
                raise RuntimeError("the Kafka fetcher thread failed; see the log")

    def _control(self, kind: str, tps: Any, fut: Future[Any] | None) -> None:
        if kind == "assign":
            self.on_assign(tps)
        elif kind == "revoke" and fut is not None:
            try:
                fut.set_result(self.on_revoke(tps))
            except Exception as exc:
                fut.set_exception(exc)

    def commit(self, offsets: dict[TP, int]) -> None:
        """Run after the fetcher's current poll (the loop never blocks on the client)."""
        if offsets:
            self._commits.put(dict(offsets))

    def seek(self, tp: TP, offset: int) -> None:
        """Rewind a partition; batches already fetched are dropped, the next ones start there."""
        self._gen += 1
        self._seeks.put((tp, offset, self._gen))

    def highwaters(self) -> dict[TP, int]:
        return dict(self._highwater)

    def lag(self, positions: dict[TP, int]) -> dict[TP, int]:
        hw = self._highwater
        return {tp: max(hw[tp] - pos, 0) for tp, pos in positions.items() if tp in hw}

    def assignment(self) -> list[TP]:
        return list(self._assignment)

    def close(self) -> None:
        """Stop fetching (answering rebalance markers meanwhile), run commits, leave."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                kind, payload, fut = self._q.get(timeout=0.05)
            except queue.Empty:
                continue
            if kind != "batch":
                self._control(kind, payload, fut)
        self._closing = True
        while not self._q.empty():
            kind, payload, fut = self._q.get_nowait()
            if kind != "batch":
                self._control(kind, payload, fut)
        self._run_commits()
        self._c.close()
