"""How the record stream hands encoded records to Kafka.

* :class:`ProcessTransport` (what ``repwatch serve`` uses): confluent-kafka or kafka-python
  (``serving.kafka_client``, :mod:`serving.kafka_clients`) in a child process
  (:mod:`serving.producer_proc`), fed one pipe write per batch.
* :class:`InProcessTransport`: a producer object in this process (a ``KafkaProducer`` or a test
  stand-in), one ``send`` per record with delivery callbacks.

Both report back through the stream's accounting: ``handed(n)`` before records leave,
``acked(model, n)``, ``failed(n, error)``, ``dropped(n, reason, error)`` (records the client
refused: never retried) and ``connect_failed(error)``.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from serving import kafka_clients

if TYPE_CHECKING:
    from serving.stream import Message, RecordStream

log = logging.getLogger(__name__)


class Transport:
    def open(self, stream: RecordStream) -> bool:
        """Make sure records can be handed over; False to back off (failures are reported)."""
        raise NotImplementedError

    def send(self, topic: str, messages: list[Message]) -> int:
        """Hand over messages in order; returns how many were taken (the rest go back)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Rebuild the producer after repeated failures."""

    def close(self, deadline: float) -> None:
        """Flush what was handed over, by ``deadline`` (``time.monotonic()``), and stop."""


class InProcessTransport(Transport):
    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.producer: Any = None
        self.stream: RecordStream | None = None

    def open(self, stream: RecordStream) -> bool:
        self.stream = stream
        if self.producer is None:
            try:
                self.producer = self.factory()
            except Exception as exc:
                stream.connect_failed(f"{type(exc).__name__}: {exc}")
                return False
        return True

    def send(self, topic: str, messages: list[Message]) -> int:
        stream = self.stream
        assert stream is not None
        for i, (model, value) in enumerate(messages):
            try:
                fut = self.producer.send(topic, key=model.encode(), value=value)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if _retriable(exc):  # metadata unavailable within max_block_ms: the broker
                    stream.connect_failed(f"send: {error}", kind="send")
                    return i
                # Refused for this record (too large, unserialisable): drop, never re-queue.
                stream.handed(1)
                stream.dropped(
                    1, "too_large" if "TooLarge" in type(exc).__name__ else "send_error", error
                )
                continue
            stream.handed(1)
            fut.add_callback(self._ok, model)
            fut.add_errback(self._err)
        return len(messages)

    def _ok(self, model: str, _meta: Any) -> None:
        assert self.stream is not None
        self.stream.acked(model, 1)

    def _err(self, exc: BaseException) -> None:
        assert self.stream is not None
        self.stream.failed(1, f"{type(exc).__name__}: {exc}")

    def reset(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception as exc:
                log.warning("record stream: close failed (%s)", exc)

    def close(self, deadline: float) -> None:
        producer, self.producer = self.producer, None
        if producer is None:
            return
        try:
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            log.warning("record stream: flush did not finish (%s)", exc)
        try:
            producer.close(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            log.warning("record stream: close failed (%s)", exc)


def _retriable(exc: BaseException) -> bool:
    """Whether a synchronous send error is the broker's (retry later), not the record's."""
    return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in (
        "KafkaTimeoutError",
        "BufferError",
    )


class ProcessTransport(Transport):
    """A Kafka client in a child process (spawned, so no threads or sessions are forked).

    ``kafka_kwargs`` are kafka-python's producer options; the client is ``kafka_client``
    (``auto``: confluent-kafka when installed), which a ``kafka_client`` key in the options
    overrides.
    """

    def __init__(self, kafka_kwargs: dict[str, Any], kafka_client: str = "auto") -> None:
        kwargs = dict(kafka_kwargs)
        self.client = kafka_clients.resolve(kwargs.pop("kafka_client", kafka_client))
        if self.client == "confluent":
            kafka_clients.librdkafka_config(kwargs)  # unknown options fail here, not in the child
        self.kwargs = kwargs
        self.proc: Any = None
        self.conn: Any = None
        self.stream: RecordStream | None = None
        self._reader: threading.Thread | None = None

    def open(self, stream: RecordStream) -> bool:
        self.stream = stream
        if self.proc is not None and self.proc.is_alive():
            return True
        ctx = multiprocessing.get_context("spawn")
        to_child_r, to_child_w = ctx.Pipe(duplex=False)
        from_child_r, from_child_w = ctx.Pipe(duplex=False)
        from serving import producer_proc

        self.proc = ctx.Process(
            target=producer_proc.main,
            args=(to_child_r, from_child_w, self.kwargs, self.client),
            name="repwatch-kafka-producer",
            daemon=True,
        )
        self.proc.start()
        to_child_r.close()
        from_child_w.close()
        self.conn = to_child_w
        self._reader = threading.Thread(
            target=self._read, args=(from_child_r,), name="repwatch-producer-events", daemon=True
        )
        self._reader.start()
        log.info(
            "record stream: Kafka producer process %d started (client: %s)",
            self.proc.pid,
            self.client,
        )
        return True

    def _read(self, conn: Any) -> None:
        stream = self.stream
        assert stream is not None
        try:
            while True:
                event = msgpack.unpackb(conn.recv_bytes(), raw=False)
                for model, n in event.get("ok", {}).items():
                    stream.acked(model, n)
                if event.get("fail"):
                    stream.failed(event["fail"], event.get("error", ""))
                for reason, n in event.get("drop", {}).items():
                    stream.dropped(n, reason, event.get("drop_error", ""))
                if "connect" in event:
                    stream.connect_failed(event["connect"])
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
            stream.transport_lost()

    def send(self, topic: str, messages: list[Message]) -> int:
        assert self.stream is not None
        payload = msgpack.packb(["send", topic, messages], use_bin_type=True)
        self.stream.handed(len(messages))
        try:
            self.conn.send_bytes(payload)
        except OSError as exc:
            self.stream.failed(len(messages), f"producer process: {exc}")
        return len(messages)

    def reset(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send_bytes(msgpack.packb(["reset"]))
            except OSError:
                pass

    def close(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send_bytes(msgpack.packb(["close", max(0.0, deadline - time.monotonic())]))
        except OSError:
            pass
        self.proc.join(max(0.1, deadline - time.monotonic() + 1.0))
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2.0)
        if self._reader is not None:
            self._reader.join(2.0)
        self.conn.close()
        self.proc = None
