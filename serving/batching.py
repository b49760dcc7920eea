"""Dynamic batching: concurrent requests for one model run as one ``session.run``.

A worker thread takes the first waiting request, gathers more for up to ``timeout`` seconds or
until ``max_batch`` rows, concatenates those whose non-batch dimensions agree, runs once, and
hands each caller its rows back on its event loop. It also moves inference off the event loop,
which matters for models that take more than a fraction of a millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serving.session import ModelSession

log = logging.getLogger(__name__)

Feeds = dict[str, NDArray[Any]]
_Job = tuple[Feeds, int, asyncio.Future[list[NDArray[Any]]], asyncio.AbstractEventLoop]


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class Batcher:
    def __init__(self, session: ModelSession, max_batch: int, timeout: float) -> None:
        if not session.batchable:
            raise ValueError(
                f"{session.label}: dynamic batching needs a dynamic batch axis on every input "
                "and output"
            )
        self.session = session
        self.max_batch = max_batch
        self.timeout = timeout
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._loop, name=f"repwatch-batch-{session.label}", daemon=True
        )
        self._thread.start()

    async def run(self, feeds: Feeds) -> list[NDArray[Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[NDArray[Any]]] = loop.create_future()
        rows = next(iter(feeds.values())).shape[0]
        self._jobs.put((feeds, rows, fut, loop))
        return await fut

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(5.0)

    def _loop(self) -> None:
        pending: _Job | None = None
        while True:
            first = pending or self._jobs.get()
            pending = None
            if first is None:
                return
            batch = [first]
            rows = first[1]
            key = _key(first[0])
            deadline = time.monotonic() + self.timeout
            while rows < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    job = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None or _key(job[0]) != key or rows + job[1] > self.max_batch:
                    pending = job  # starts the next batch
                    if job is None:
                        self._jobs.put(None)
                        pending = None
                    break
                batch.append(job)
                rows += job[1]
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        try:
            if len(batch) == 1:
                feeds = batch[0][0]
            else:
                feeds = {
                    name: np.concatenate([job[0][name] for job in batch]) for name in batch[0][0]
                }
            outputs = self.session.run(feeds)
        except Exception as exc:
            for _, _, fut, loop in batch:
                loop.call_soon_threadsafe(_set_exception, fut, exc)
            return
        start = 0
        for _, n, fut, loop in batch:
            part = [o[start : start + n] for o in outputs] if len(batch) > 1 else outputs
            start += n
            loop.call_soon_threadsafe(_set_result, fut, part)


def _key(feeds: Feeds) -> tuple[Any, ...]:
    return tuple((name, a.shape[1:], a.dtype) for name, a in feeds.items())
