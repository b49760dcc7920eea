"""The two Kafka clients the producer process can run, behind one small interface.

* ``confluent``: ``confluent_kafka.Producer`` (librdkafka, C): a few µs of CPU per record.
* ``kafka-python``: pure Python, ~20 µs of interpreter time per record.

``auto`` (the default of ``serving.kafka_client``) picks confluent-kafka when it is importable.
Settings are written once, with kafka-python's names
(:func:`serving.stream.kafka_producer_options`); :func:`librdkafka_config` maps them to
librdkafka's. Both clients report every record exactly once to ``acked(model)`` or
``failed(error)``, and broker-unreachable conditions to ``unreachable(error)``.

``send`` raises :class:`RecordRejected` for a record the client refuses on its own account (too
large, unserialisable): the caller drops it, counted by reason, and goes on. Any other exception
from ``send`` means the broker cannot take records now (metadata unavailable, local queue full):
the caller keeps the record and retries later.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

CLIENTS = ("auto", "confluent", "kafka-python")

# kafka-python option -> librdkafka property (None: no librdkafka equivalent, dropped).
_LIBRDKAFKA_NAMES: dict[str, str | None] = {
    "client_id": "client.id",
    "acks": "acks",
    "enable_idempotence": "enable.idempotence",
    "compression_type": "compression.type",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "delivery_timeout_ms": "message.timeout.ms",
    "request_timeout_ms": "request.timeout.ms",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    # produce() never blocks on metadata, and building a producer never waits for a broker.
    "max_block_ms": None,
    "bootstrap_timeout_ms": None,
}


def resolve(choice: str) -> str:
    """``auto`` → ``confluent`` when confluent-kafka is installed, else ``kafka-python``."""
    if choice not in CLIENTS:
        raise ValueError(f"kafka_client {choice!r} is not one of {', '.join(CLIENTS)}")
    if choice == "auto":
        found = importlib.util.find_spec("confluent_kafka") is not None
        return "confluent" if found else "kafka-python"
    if choice == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
        raise ValueError(
            "kafka_client is 'confluent' but confluent-kafka is not installed: "
            "pip install confluent-kafka, or set serving.kafka_client to auto"
        )
    return choice


def librdkafka_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """kafka-python producer options → a ``confluent_kafka.Producer`` configuration."""
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(kwargs["bootstrap_servers"]),
        # kafka-python's (and Java's) key → partition mapping, so a model's records land on the
        # same partition whichever client wrote them.
        "partitioner": "murmur2_random",
    }
    for name, value in kwargs.items():
        if name == "bootstrap_servers" or value is None:
            continue
        if name not in _LIBRDKAFKA_NAMES:
            raise ValueError(
                f"producer option {name!r} has no librdkafka equivalent here: drop it, or set "
                "serving.kafka_client to kafka-python"
            )
        target = _LIBRDKAFKA_NAMES[name]
        if target is not None:
            conf[target] = str(value).lower() if isinstance(value, bool) else value
    return conf


Acked = Callable[[str], None]
Failed = Callable[[str], None]


class RecordRejected(Exception):
    """The client refused this one record; ``reason`` is ``too_large`` or ``send_error``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KafkaPythonClient:
    """kafka-python: callbacks run on its sender thread; ``send`` blocks up to max_block_ms."""

    name = "kafka-python"
    fatal = False  # kafka-python recovers (or fails records) by itself

    def __init__(
        self, kwargs: dict[str, Any], acked: Acked, failed: Failed, unreachable: Failed
    ) -> None:
        from kafka import KafkaProducer

        from monitor.kafka_crc import install as use_c_crc32c

        use_c_crc32c()
        self._acked, self._failed = acked, failed
        self.producer = KafkaProducer(**kwargs)

    def _ok(self, model: str, _meta: Any) -> None:
        self._acked(model)

    def _err(self, exc: BaseException) -> None:
        self._failed(f"{type(exc).__name__}: {exc}")

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

        try:
            fut = self.producer.send(topic, key=key, value=value)
        except KafkaTimeoutError:
            raise  # metadata unavailable within max_block_ms: the broker, not the record
        except MessageSizeTooLargeError as exc:
            raise RecordRejected("too_large", f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            raise RecordRejected("send_error", f"{type(exc).__name__}: {exc}") from None
        fut.add_callback(self._ok, key.decode())
        fut.add_errback(self._err)

    def outstanding(self) -> int:
        return 0  # nothing to serve: kafka-python calls back from its own thread

    def serve(self, timeout: float) -> None:
        pass

    def flush(self, timeout: float) -> None:
        self.producer.flush(timeout=timeout)

    def close(self) -> None:
        self.producer.close(timeout=0)


class ConfluentClient:
    """librdkafka: ``produce`` only enqueues; callbacks run inside ``poll``/``flush``."""

    name = "confluent"

    def __init__(
        self, kwargs: dict[str, Any], acked: Acked, failed: Failed, unreachable: Failed
    ) -> None:
        from confluent_kafka import Producer

        self._acked, self._failed, self._unreachable = acked, failed, unreachable
        self.fatal = False
        conf = librdkafka_config(kwargs)
        conf["error_cb"] = self._error
        # The parent reports an outage once (error_cb above): librdkafka's own per-reconnect
        # log lines would flood stderr while the broker is down.
        conf.setdefault("log_level", 2)
        self.producer = Producer(conf)

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is None:
            self._acked(msg.key().decode())
        else:
            self._failed(f"KafkaError: {err.str()}")

    def _error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        if err.fatal():  # e.g. the idempotent producer id is no longer known: rebuild
            self.fatal = True
            self._unreachable(f"fatal: {err.str()}")
        elif err.code() == KafkaError._TRANSPORT:  # one connection dropped: retried by itself
            log.debug("librdkafka: %s", err.str())
        else:  # all brokers down, authentication, TLS, name resolution...
            self._unreachable(f"KafkaError: {err.str()}")

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        from confluent_kafka import KafkaError, KafkaException

        try:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._delivered)
            except BufferError:  # local queue full: serve callbacks once, then try again
                self.producer.poll(0.1)
                self.producer.produce(topic, value, key, on_delivery=self._delivered)
        except BufferError:
            raise  # still full: the broker is not taking records; retried later
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            reason = "too_large" if code == KafkaError.MSG_SIZE_TOO_LARGE else "send_error"
            raise RecordRejected(reason, f"KafkaException: {exc}") from None
        except Exception as exc:
            raise RecordRejected("send_error", f"{type(exc).__name__}: {exc}") from None

    def outstanding(self) -> int:
        return len(self.producer)

    def serve(self, timeout: float) -> None:
        self.producer.poll(timeout)

    def flush(self, timeout: float) -> None:
        self.producer.flush(timeout)

    def close(self) -> None:
        """Give up on what is still queued: each record is reported as failed."""
        self.producer.purge()  # queued and in-flight records, reported to _delivered
        self.producer.poll(0)


def client_class(name: str) -> type[KafkaPythonClient] | type[ConfluentClient]:
    return ConfluentClient if name == "confluent" else KafkaPythonClient
