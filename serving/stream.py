"""The record stream: a bounded in-memory queue drained by a background thread into Kafka.

The request path only appends a small item to a deque (no encoding, no I/O). One thread turns
items into v1 records (running the SSL encoder, msgpack-encoding) and hands them to a
kafka-python producer (batched, compressed, idempotent, keyed by model), by default in a child
process (:mod:`serving.transport`) so that the client's interpreter time never competes with
requests for the GIL.

When the broker is slow or down, the producer stops taking from the queue once
``max_in_flight`` records await acknowledgement; the queue fills, then drops its **oldest**
records (counted as ``queue_full``). Records the producer gives up on are counted as
``delivery_failed``. Nothing waits on the broker on the request path, and the thread recovers by
itself: it backs off, and after repeated failures rebuilds the producer (a broker restarted with
empty storage does not know the old idempotent producer id).

No single record can wedge the stream: a record over ``max_record_bytes`` is dropped before it
is handed over (``too_large``), one the client refuses (too large for it, unserialisable, any
per-record error) is dropped by the transport with its reason, never re-queued, and an item that
fails to build is dropped alone (``invalid_record``, counted in records), not with its batch.
:attr:`RecordStream.degraded` is true while records wait and nothing has been delivered for
``degraded_after`` seconds; the sidecar reports it in readiness detail and a gauge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from serving.metrics import DROP_REASONS, ServingMetrics
from serving.transport import InProcessTransport, Transport

log = logging.getLogger(__name__)

Message = tuple[str, bytes]  # (model = Kafka key, encoded record)
Builder = Callable[[list[Any]], list[Message]]


class Encoded:
    """Already-encoded messages put back on the queue (they failed to be handed over)."""

    __slots__ = ("messages",)

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages


class RecordQueue:
    """A deque of ``(n_records, item)`` bounded by the total record count; drops oldest."""

    def __init__(self, capacity: int, metrics: ServingMetrics) -> None:
        self.capacity = capacity
        self._items: deque[tuple[int, Any]] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._dropped = metrics.records_dropped.labels("queue_full")
        metrics.track_queue(lambda: self._count, capacity)

    def __len__(self) -> int:
        return self._count

    def put(self, item: Any, n: int = 1) -> None:
        with self._lock:
            self._items.append((n, item))
            self._count += n
            while self._count > self.capacity:
                old, _ = self._items.popleft()
                self._count -= old
                self._dropped.inc(old)
            if n == self._count:  # queue was empty: the producer may be waiting
                self._ready.notify()

    def put_front(self, item: Any, n: int) -> None:
        """Return items taken but not handed over; they are the oldest, so they go first."""
        with self._lock:
            if self._count + n > self.capacity:
                self._dropped.inc(n)
                return
            self._items.appendleft((n, item))
            self._count += n

    def take(self, max_records: int, timeout: float) -> list[Any]:
        return [item for _, item in self.take_counted(max_records, timeout)]

    def take_counted(self, max_records: int, timeout: float) -> list[tuple[int, Any]]:
        """Like :meth:`take`, with each item's record count."""
        with self._lock:
            if not self._items:
                self._ready.wait(timeout)
            out: list[tuple[int, Any]] = []
            taken = 0
            while self._items and taken < max_records:
                pair = self._items.popleft()
                taken += pair[0]
                out.append(pair)
            self._count -= taken
            return out

    def clear(self) -> int:
        with self._lock:
            n, self._count = self._count, 0
            self._items.clear()
            return n


ProducerFactory = Callable[[], Any]


class RecordStream:
    """Background thread draining a :class:`RecordQueue` into a :class:`Transport`.

    ``transport`` may also be a producer factory (a callable returning an object with
    kafka-python's ``send``/``flush``/``close``), used in this process.
    """

    def __init__(
        self,
        queue: RecordQueue,
        build: Builder,
        transport: Transport | ProducerFactory,
        topic: str,
        metrics: ServingMetrics,
        *,
        max_in_flight: int = 2000,
        stall_seconds: float = 0.5,
        batch_records: int = 500,
        linger: float = 0.02,
        rebuild_after_failures: int = 3,
        max_backoff: float = 5.0,
        max_record_bytes: int | None = None,
        degraded_after: float = 30.0,
    ) -> None:
        self.queue = queue
        self._build = build
        self.transport = (
            transport if isinstance(transport, Transport) else InProcessTransport(transport)
        )
        self.topic = topic
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.stall_seconds = stall_seconds
        self.batch_records = batch_records
        # Waking once per record would contend with request threads for the GIL at every
        # request; a few ms of linger turns that into one short burst per batch.
        self.linger = linger
        self.rebuild_after_failures = rebuild_after_failures
        self.max_backoff = max_backoff
        self.max_record_bytes = max_record_bytes
        self.degraded_after = degraded_after
        self._lock = threading.Lock()
        self._in_flight = 0
        self._progress = 0.0  # last ack/failure, or when records went in flight after none
        self._failures = 0  # consecutive failed deliveries/connects
        self._pause_until = 0.0
        self._rebuild = False
        self._stop = threading.Event()
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._loop, name="repwatch-producer", daemon=True)
        self._sent: dict[str, Any] = {}
        self._drop_delivery = metrics.records_dropped.labels("delivery_failed")
        self._invalid = metrics.records_dropped.labels("invalid_record")
        self._too_large = metrics.records_dropped.labels("too_large")
        # Last delivery, and last moment nothing was waiting: degraded = waiting, undelivered.
        self._delivered_at = self._idle_at = time.monotonic()
        metrics.track_in_flight(lambda: self._in_flight)
        metrics.track_stream(lambda: float(self.degraded))

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._failures == 0

    @property
    def waiting(self) -> int:
        """Records queued or in flight."""
        return len(self.queue) + max(0, self._in_flight)

    @property
    def undelivered_seconds(self) -> float:
        """How long records have waited with no delivery (0 while nothing waits)."""
        if not self.waiting:
            self._idle_at = time.monotonic()
            return 0.0
        return time.monotonic() - max(self._delivered_at, self._idle_at)

    @property
    def degraded(self) -> bool:
        return self.undelivered_seconds > self.degraded_after

    def close(self, timeout: float) -> None:
        """Flush what is queued and in flight within ``timeout`` seconds, then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 2.0)
        left = self.queue.clear()
        with self._lock:
            left += max(0, self._in_flight)
            self._in_flight = 0
        if left:
            log.warning(
                "record stream: %d records not delivered before the shutdown deadline", left
            )
            self.metrics.records_dropped.labels("shutdown").inc(left)

    # ---- the thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                if not self._step():
                    break
            except Exception:  # a bug here must not silently stop the stream
                log.exception("record stream: unexpected error; continuing")
                self._wait(0.5)
        self.transport.close(self._deadline)

    def _step(self) -> bool:
        """One pass: take, build, hand over. False once the stream should stop."""
        now = time.monotonic()
        if self._stop.is_set() and (not len(self.queue) or now >= self._deadline):
            return False
        if self._rebuild:
            self._rebuild = False
            log.warning(
                "record stream: %d failures in a row; rebuilding the producer", self._failures
            )
            self.transport.reset()
        if not self.transport.open(self):
            self._wait(min(self.max_backoff, 0.2 * 2 ** min(self._failures, 5)))
            return True
        if (
            self._in_flight >= self.max_in_flight
            or now < self._pause_until
            or (self._in_flight > 0 and now - self._progress > self.stall_seconds)
        ):
            # Broker slow or gone: leave records in the bounded queue (drop-oldest there)
            # rather than piling them up inside the client.
            self._wait(0.02)
            return True
        if not self.waiting:
            self._idle_at = now
        # After a failure, probe with one record: if the broker is still gone, only that
        # one waits out the delivery timeout, and the rest stay in the queue (drop-oldest).
        items = self.queue.take_counted(self.batch_records if self._failures == 0 else 1, 0.05)
        if not items:
            return True
        messages: list[Message] = []
        fresh = []
        for n, item in items:
            if isinstance(item, Encoded):
                messages.extend(item.messages)
            else:
                fresh.append((n, item))
        if fresh:
            messages.extend(self._build_each(fresh))
        if self.max_record_bytes is not None:
            messages = self._fit(messages)
        if messages:
            taken = self.transport.send(self.topic, messages)
            if taken < len(messages):
                rest = messages[taken:]
                self.queue.put_front(Encoded(rest), len(rest))
                self._failed()
        if len(messages) < self.batch_records and not self._stop.is_set():
            self._stop.wait(self.linger)
        return True

    def _build_each(self, fresh: list[tuple[int, Any]]) -> list[Message]:
        """Build a batch; if that fails, item by item, so only the bad items are dropped."""
        try:
            return self._build([item for _, item in fresh])
        except Exception as exc:
            if len(fresh) == 1:
                log.warning(
                    "record stream: an item of %d records cannot be built (%s: %s); dropped",
                    fresh[0][0],
                    type(exc).__name__,
                    exc,
                )
                self._invalid.inc(fresh[0][0])
                return []
        out: list[Message] = []
        for pair in fresh:
            out.extend(self._build_each([pair]))
        return out

    def _fit(self, messages: list[Message]) -> list[Message]:
        limit = self.max_record_bytes
        assert limit is not None
        fit = [m for m in messages if len(m[1]) <= limit]
        if len(fit) < len(messages):
            self._too_large.inc(len(messages) - len(fit))
            log.warning(
                "record stream: %d records over %d bytes dropped (serving.limits."
                "max_record_bytes)",
                len(messages) - len(fit),
                limit,
            )
        return fit

    def _wait(self, seconds: float) -> None:
        if self._stop.is_set():
            time.sleep(max(0.0, min(seconds, self._deadline - time.monotonic())))
        else:
            self._stop.wait(seconds)

    # ---- accounting, called by the transport from any thread --------------------------------
    def handed(self, n: int) -> None:
        with self._lock:
            if self._in_flight <= 0:
                self._progress = time.monotonic()
            self._in_flight += n

    def acked(self, model: str, n: int) -> None:
        with self._lock:
            self._in_flight -= n
            self._progress = self._delivered_at = time.monotonic()
        self._failures = 0
        counter = self._sent.get(model)
        if counter is None:
            counter = self._sent[model] = self.metrics.records_sent.labels(model)
        counter.inc(n)

    def failed(self, n: int, error: str) -> None:
        with self._lock:
            self._in_flight -= n
            self._progress = time.monotonic()
        self._drop_delivery.inc(n)
        self.metrics.producer_errors.labels("delivery").inc(n)
        if self._failures == 0:
            log.warning("record stream: delivery failed (%s)", error)
        self._failed()

    def dropped(self, n: int, reason: str, error: str) -> None:
        """The client refused records (too large for it, unserialisable): never retried."""
        if reason not in DROP_REASONS:
            reason = "send_error"
        with self._lock:
            self._in_flight -= n
            self._progress = time.monotonic()
        self.metrics.records_dropped.labels(reason).inc(n)
        self.metrics.producer_errors.labels("send").inc(n)
        log.warning("record stream: %d records refused by the producer, dropped (%s)", n, error)

    def connect_failed(self, error: str, kind: str = "connect") -> None:
        self.metrics.producer_errors.labels(kind).inc()
        if self._failures == 0:
            log.warning("record stream: cannot reach Kafka (%s)", error)
        self._failed()

    def transport_lost(self) -> None:
        """The producer process exited: what it held is lost (unless we are shutting down)."""
        if self._stop.is_set():
            return
        with self._lock:
            lost = max(0, self._in_flight)
        if lost:
            self.failed(lost, "the producer process exited")

    def _failed(self) -> None:
        self._failures += 1
        backoff = min(self.max_backoff, 0.1 * 2 ** min(self._failures, 6))
        self._pause_until = time.monotonic() + backoff
        if self._failures % self.rebuild_after_failures == 0:
            self._rebuild = True


def kafka_producer_options(
    bootstrap_servers: Sequence[str],
    *,
    client_id: str = "repwatch-serving",
    compression: str = "lz4",
    linger_ms: int = 50,
    batch_size: int = 256 * 1024,
    delivery_timeout_ms: int = 30_000,
    request_timeout_ms: int = 10_000,
    max_block_ms: int = 2_000,
    bootstrap_timeout_ms: int = 5_000,
    **extra: Any,
) -> dict[str, Any]:
    """``KafkaProducer`` settings: idempotent, acks=all, batched, compressed.

    lz4 by default: librdkafka spends about half the CPU on gzip that it does on lz4 for these
    records (``benchmarks/results/serving.md``), and the monitor's kafka-python consumer reads
    lz4 with the ``lz4`` package, which the ``monitor`` and ``serving`` extras install.
    """
    return {
        "bootstrap_servers": list(bootstrap_servers),
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if compression == "none" else compression,
        "linger_ms": linger_ms,
        "batch_size": batch_size,
        "delivery_timeout_ms": delivery_timeout_ms,
        "request_timeout_ms": request_timeout_ms,
        "max_block_ms": max_block_ms,
        # How long building a producer may wait for an unreachable broker (default 30 s): short,
        # so that connection failures are reported and retried promptly.
        "bootstrap_timeout_ms": bootstrap_timeout_ms,
        "retry_backoff_ms": 200,
        "reconnect_backoff_ms": 100,
        "reconnect_backoff_max_ms": 2000,
        **extra,
    }


def kafka_producer_factory(bootstrap_servers: Sequence[str], **options: Any) -> ProducerFactory:
    """A factory for an in-process producer with :func:`kafka_producer_options`."""
    kwargs = kafka_producer_options(bootstrap_servers, **options)

    def make() -> Any:
        from kafka import KafkaProducer

        from monitor.kafka_crc import install as use_c_crc32c

        use_c_crc32c()

        return KafkaProducer(**kwargs)

    return make
