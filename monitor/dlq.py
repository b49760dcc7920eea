"""The dead-letter topic: records the worker cannot use, with the reason, never a lost worker.

Each dead-lettered message keeps the original key and value and carries headers naming the
reason (``repwatch-error-reason``), the error (``repwatch-error``, at most
:data:`MAX_ERROR_CHARS` characters) and the source (``repwatch-source`` = topic/partition/offset).
A record too large for the DLQ (above ``monitor.dlq_max_message_bytes`` or refused by the client)
is replaced by a small JSON *tombstone* (``repwatch-tombstone: 1``)::

    {"tombstone": true, "topic": "...", "partition": 0, "offset": 17, "key": "digits",
     "reason": "decode", "error": "...", "value_bytes": 10485760}

so the DLQ still says which record failed and why, and sending it can never raise.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from monitor.kafka_io import Batch, MessageTooLarge

log = logging.getLogger(__name__)
ERROR_HEADER = "repwatch-error"
REASON_HEADER = "repwatch-error-reason"
SOURCE_HEADER = "repwatch-source"
TOMBSTONE_HEADER = "repwatch-tombstone"
MAX_ERROR_CHARS = 1000
MAX_KEY_BYTES = 256


class _Sender(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = ...,
             headers: list[tuple[str, bytes]] | None = ...) -> None: ...


class _Counter(Protocol):
    def inc(self, amount: float = ...) -> None: ...


class DeadLetters:
    """Sends records of a batch to the DLQ topic, as themselves or as tombstones."""

    def __init__(self, topic: str, max_bytes: int, counted: object, tombstones: _Counter) -> None:
        self.topic, self.max_bytes = topic, max_bytes
        self._counted = counted  # Counter with a ``reason`` label
        self._tombstones = tombstones

    def send(self, producer: _Sender, batch: Batch, i: int, reason: str, message: str) -> None:
        self._counted.labels(reason).inc()  # type: ignore[attr-defined]
        message = message[:MAX_ERROR_CHARS]
        source = f"{batch.topics[i]}/{batch.partitions[i]}/{batch.offsets[i]}"
        headers = [
            (ERROR_HEADER, message.encode()),
            (REASON_HEADER, reason.encode()),
            (SOURCE_HEADER, source.encode()),
        ]
        value, key = batch.values[i], batch.keys[i]
        size = len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers) + 64
        if size <= self.max_bytes:
            try:
                producer.send(self.topic, value, key, headers)
                return
            except MessageTooLarge as exc:
                log.warning("record %s is too large for the DLQ (%s): sending a tombstone",
                            source, exc)
        self._tombstones.inc()
        short_key = None if key is None else key[:MAX_KEY_BYTES]
        body = {
            "tombstone": True,
            "topic": batch.topics[i],
            "partition": batch.partitions[i],
            "offset": batch.offsets[i],
            "key": None if short_key is None else short_key.decode("utf-8", "replace"),
            "reason": reason,
            "error": message,
            "value_bytes": len(value),
        }
        producer.send(self.topic, json.dumps(body).encode(), short_key,
                      [*headers, (TOMBSTONE_HEADER, b"1")])
