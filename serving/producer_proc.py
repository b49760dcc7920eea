"""The Kafka producer in a child process, so the client never holds the sidecar's GIL.

The client is confluent-kafka (librdkafka) or kafka-python (:mod:`serving.kafka_clients`).
kafka-python is pure Python: ~13 µs of interpreter time per record (partitioning, record-batch
building, futures, compression on its sender thread). Inside the serving process that time is
taken from the request threads; here it runs on its own interpreter, and the serving process pays
only one pipe write per batch of already-encoded records.

Protocol (msgpack over two one-way pipes):

* parent → child: ``["send", topic, [[key, value], ...]]``, ``["reset"]`` (rebuild the producer
  after repeated failures), ``["close", seconds]`` (flush within the deadline and exit);
* child → parent: ``{"ok": {model: n}}`` acknowledgements, ``{"fail": n, "error": str}`` for
  records the client gave up on, ``{"drop": {reason: n}, "drop_error": str}`` for records the
  client refused outright (too large, unserialisable: dropped, never retried, so one record
  cannot wedge the stream), ``{"connect": str}`` when the producer cannot be built or reach any
  broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Any

import msgpack

from serving.kafka_clients import RecordRejected, client_class

log = logging.getLogger(__name__)


class _Child:
    def __init__(
        self, conn_in: Any, conn_out: Any, kafka_kwargs: dict[str, Any], client: str
    ) -> None:
        self.client_class = client_class(client)
        self.conn_in = conn_in
        self.conn_out = conn_out
        self.kwargs = kafka_kwargs
        self.pending: deque[tuple[str, bytes, bytes]] = deque()
        self.cond = threading.Condition()
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.fail = 0
        self.error = ""
        self.drop: Counter[str] = Counter()
        self.drop_error = ""
        self.unreachable: str | None = None
        self.reset = False
        self.deadline: float | None = None
        self.producer: Any = None
        self.connect_failures = 0
        self.next_connect = 0.0

    # ---- pipe reader thread: never blocks on the broker --------------------------------------
    def read(self) -> None:
        try:
            while True:
                msg = msgpack.unpackb(self.conn_in.recv_bytes(), raw=False)
                with self.cond:
                    if msg[0] == "send":
                        topic = msg[1]
                        self.pending.extend((topic, k.encode(), v) for k, v in msg[2])
                    elif msg[0] == "reset":
                        self.reset = True
                    elif msg[0] == "close":
                        self.deadline = time.monotonic() + float(msg[1])
                        self.cond.notify()
                        return
                    self.cond.notify()
        except (EOFError, OSError):
            with self.cond:
                self.deadline = time.monotonic()  # the parent is gone: stop at once
                self.cond.notify()

    # ---- callbacks: kafka-python's sender thread, or librdkafka's poll on this loop ------------
    def _acked(self, model: str) -> None:
        with self.lock:
            self.ok[model] += 1

    def _failed(self, error: str) -> None:
        with self.lock:
            self.fail += 1
            self.error = error

    def _unreachable(self, error: str) -> None:
        with self.lock:
            self.unreachable = error

    def _dropped(self, reason: str, error: str) -> None:
        with self.lock:
            self.drop[reason] += 1
            self.drop_error = error

    def emit(self, connect_error: str | None = None) -> None:
        with self.lock:
            ok, fail, error = dict(self.ok), self.fail, self.error
            drop, drop_error = dict(self.drop), self.drop_error
            self.ok.clear()
            self.drop.clear()
            self.fail = 0
            if connect_error is None:
                connect_error, self.unreachable = self.unreachable, None
        event: dict[str, Any] = {}
        if ok:
            event["ok"] = ok
        if fail:
            event["fail"] = fail
            event["error"] = error
        if drop:
            event["drop"] = drop
            event["drop_error"] = drop_error
        if connect_error is not None:
            event["connect"] = connect_error
        if event:
            self.conn_out.send_bytes(msgpack.packb(event))

    # ---- main loop ---------------------------------------------------------------------------
    def connect(self) -> None:
        try:
            self.producer = self.client_class(
                self.kwargs, self._acked, self._failed, self._unreachable
            )
            self.connect_failures = 0
        except Exception as exc:
            self.connect_failures += 1
            self.next_connect = time.monotonic() + min(
                5.0, 0.2 * 2 ** min(self.connect_failures, 5)
            )
            self.emit(connect_error=f"{type(exc).__name__}: {exc}")

    def drop_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.close()
            except Exception as exc:
                log.warning("producer close failed: %s", exc)

    def send_pending(self) -> None:
        with self.cond:
            batch = list(self.pending)
            self.pending.clear()
        send = self.producer.send
        for i, (topic, key, value) in enumerate(batch):
            try:
                send(topic, key, value)
            except RecordRejected as exc:  # this record only: drop it, go on
                self._dropped(exc.reason, str(exc))
            except Exception as exc:  # metadata unavailable: keep the rest, try later
                with self.cond:
                    self.pending.extendleft(reversed(batch[i:]))
                self.emit(connect_error=f"{type(exc).__name__}: {exc}")
                return

    def run(self) -> None:
        reader = threading.Thread(target=self.read, daemon=True)
        reader.start()
        while True:
            producer = self.producer
            with self.cond:
                idle = self.deadline is None and not self.pending and not self.reset
                if idle and not (producer is not None and producer.outstanding()):
                    self.cond.wait(0.05)
                deadline, reset = self.deadline, self.reset
                self.reset = False
            if idle and producer is not None and producer.outstanding():
                producer.serve(0.01)  # librdkafka: wait for acknowledgements instead
            if producer is not None and producer.fatal:
                reset = True
            if reset:
                self.drop_producer()
            if self.producer is None and time.monotonic() >= self.next_connect:
                self.connect()
            if self.producer is not None:
                self.send_pending()
                self.producer.serve(0)
            self.emit()
            if deadline is not None:
                break
            if self.producer is None or self.pending:
                time.sleep(0.02)  # waiting for the broker: do not spin
        self.shutdown(deadline)

    def shutdown(self, deadline: float) -> None:
        if self.producer is not None:
            self.send_pending()
            try:
                self.producer.flush(max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("flush did not finish: %s", exc)
            self.emit()
            self.drop_producer()
        self.emit()
        self.conn_out.close()


def main(
    conn_in: Any, conn_out: Any, kafka_kwargs: dict[str, Any], client: str = "kafka-python"
) -> None:
    """Child process entry point; ``client`` is ``confluent`` or ``kafka-python``."""
    logging.basicConfig(level=logging.WARNING)
    # The parent reports an outage once (and counts every failure): kafka-python's own
    # per-reconnect ERROR lines would flood the log while the broker is down.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    _Child(conn_in, conn_out, kafka_kwargs, client).run()
