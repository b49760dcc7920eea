"""The Kafka boundary: every kafka-python call of the monitor lives in this one file.

The runtime sees columnar :class:`Batch` values, ``(topic, partition)`` tuples and plain ints;
swapping in confluent-kafka means rewriting this module only (``Consumer``/``Producer`` keep
their methods, the rebalance callbacks keep their meaning: *revoke* runs before partitions are
taken away, while the runtime's thread is blocked in ``poll``, so the runtime can checkpoint them
and the boundary commits them). Client settings passed through (``session_timeout_ms``,
``check_crcs``…) use kafka-python's names; another client maps them here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.config import KafkaConfig, read_secret

log = logging.getLogger(__name__)
TP = tuple[str, int]


class MessageTooLarge(ValueError):
    """The client refused a message above its ``max_request_size`` (raised by ``send``)."""


def client_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """Connection settings shared by consumers and producers (secrets resolved here)."""
    kw: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "security_protocol": cfg.security_protocol,
        "client_id": cfg.client_id,
    }
    if cfg.sasl_mechanism:
        password = read_secret(cfg.sasl_password)
        kw.update(
            sasl_mechanism=cfg.sasl_mechanism,
            sasl_plain_username=cfg.sasl_username,
            sasl_plain_password=password.decode() if password else None,
        )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, name)
        if value is not None:
            kw[name] = str(value)
    return kw


@dataclass
class Batch:
    """Messages of one poll, column by column, in partition order then offset order."""

    topics: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    decoded: Any = None  # records.DecodedBatch when decoded ahead (monitor.prefetch)
    decode_seconds: float = 0.0
    generation: int = 0  # monitor.prefetch: batches fetched before a seek are stale

    def __len__(self) -> int:
        return len(self.values)


class Consumer:
    """A group consumer on one topic with manual commits and rebalance callbacks."""

    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str,
        group_id: str,
        on_assign: Callable[[list[TP]], None],
        on_revoke: Callable[[list[TP]], dict[TP, int]],
        **overrides: Any,
    ) -> None:
        """``on_revoke`` checkpoints and returns the offsets to commit before the hand-over."""
        from kafka import KafkaConsumer

        from monitor.kafka_crc import install as use_c_crc32c

        use_c_crc32c()

        consumer = self

        # kafka-python 3 runs rebalance listeners on its I/O thread (while our thread is blocked
        # in poll), where a blocking commit() raises; its async listener may await the commit.
        try:
            from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener

            class Listener(AsyncConsumerRebalanceListener):
                async def on_partitions_revoked(self, revoked: Any) -> None:
                    offsets = on_revoke([(tp.topic, tp.partition) for tp in revoked])
                    try:
                        await consumer._c._coordinator._commit_offsets_sync_async(
                            _offsets(offsets)
                        )
                    except Exception as exc:  # the checkpoint still guards the state
                        log.warning("commit before rebalance failed (%s); the next owner "
                                    "replays from the last commit and skips checkpointed "
                                    "records", exc)

                async def on_partitions_assigned(self, assigned: Any) -> None:
                    on_assign([(tp.topic, tp.partition) for tp in assigned])

            listener: Any = Listener()
        except ImportError:  # kafka-python 2.x: listeners run on the polling thread
            from kafka.consumer.subscription_state import ConsumerRebalanceListener

            class SyncListener(ConsumerRebalanceListener):
                def on_partitions_revoked(self, revoked: Any) -> None:
                    consumer.commit(on_revoke([(tp.topic, tp.partition) for tp in revoked]))

                def on_partitions_assigned(self, assigned: Any) -> None:
                    on_assign([(tp.topic, tp.partition) for tp in assigned])

            listener = SyncListener()

        settings: dict[str, Any] = {
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 8 << 20,
            "fetch_max_bytes": 64 << 20,
            # A broker may hold a fetch for the whole wait when little data is there (Tansu
            # does): 100 ms bounds the latency it adds; a busy topic never waits anyway.
            "fetch_max_wait_ms": 100,
            **client_kwargs(cfg),
            **overrides,
        }
        self._c = KafkaConsumer(**settings)
        self._c.subscribe([topic], listener=listener)

    def poll(self, timeout_s: float, max_records: int) -> Batch:
        out = Batch()
        polled = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        for tp, msgs in polled.items():
            n = len(msgs)
            out.topics.extend([tp.topic] * n)
            out.partitions.extend([tp.partition] * n)
            for m in msgs:
                out.offsets.append(m.offset)
                out.keys.append(m.key)
                out.values.append(m.value)
                out.timestamps.append(m.timestamp)
        return out

    def commit(self, offsets: dict[TP, int]) -> None:
        """Commit ``next offset to read`` per partition (synchronous)."""
        if offsets:
            self._c.commit(_offsets(offsets))

    def committed(self, tp: TP) -> int | None:
        from kafka.structs import TopicPartition

        result: int | None = self._c.committed(TopicPartition(*tp))
        return result

    def position(self, tp: TP) -> int:
        from kafka.structs import TopicPartition

        return int(self._c.position(TopicPartition(*tp)))

    def seek(self, tp: TP, offset: int) -> None:
        from kafka.structs import TopicPartition

        self._c.seek(TopicPartition(*tp), offset)

    def lag(self, positions: dict[TP, int]) -> dict[TP, int]:
        """High-water mark minus position, from fetch metadata (no extra broker request)."""
        from kafka.structs import TopicPartition

        out = {}
        for tp, pos in positions.items():
            hw = self._c.highwater(TopicPartition(*tp))
            if hw is not None:
                out[tp] = max(int(hw) - pos, 0)
        return out

    def highwaters(self) -> dict[TP, int]:
        """Last high-water mark seen per assigned partition (from fetch responses)."""
        out = {}
        for tp in self._c.assignment():
            hw = self._c.highwater(tp)
            if hw is not None:
                out[(tp.topic, tp.partition)] = int(hw)
        return out

    def assignment(self) -> list[TP]:
        return [(tp.topic, tp.partition) for tp in self._c.assignment()]

    def close(self) -> None:
        self._c.close(autocommit=False)


def _offsets(offsets: dict[TP, int]) -> dict[Any, Any]:
    from kafka.structs import OffsetAndMetadata, TopicPartition

    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


class Producer:
    """Fire-and-forget sends with an optional per-message success callback; ``flush`` waits."""

    def __init__(self, cfg: KafkaConfig, **overrides: Any) -> None:
        from kafka import KafkaProducer

        from monitor.kafka_crc import install as use_c_crc32c

        use_c_crc32c()

        settings: dict[str, Any] = {
            "acks": "all",
            "linger_ms": 5,
            **client_kwargs(cfg),
            **overrides,
        }
        self._p = KafkaProducer(**settings)

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_success: Callable[[], None] | None = None,
    ) -> None:
        from kafka.errors import MessageSizeTooLargeError

        try:
            fut = self._p.send(topic, value=value, key=key, headers=headers or [])
        except MessageSizeTooLargeError as exc:
            raise MessageTooLarge(str(exc)) from None
        if on_success is not None:
            fut.add_callback(lambda _meta: on_success())
        fut.add_errback(lambda exc: log.error("send to %s failed: %s", topic, exc))

    def flush(self, timeout_s: float = 10.0) -> None:
        self._p.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._p.close(timeout=timeout_s)


def read_range(
    cfg: KafkaConfig,
    topic: str,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    start_offset: int | None = None,
    end_offset: int | None = None,
    max_messages: int = 1_000_000,
    idle_timeout_s: float = 2.0,
) -> list[bytes]:
    """Values of a topic between two times (ms) or offsets (per partition), without a group.

    Start offsets come from the broker's time index, but every record is also checked against
    the bounds, and the end of a partition is taken from the high-water mark of the fetches:
    brokers differ in how exactly they answer ListOffsets (Tansu's is approximate).
    """
    import time

    from kafka import KafkaConsumer

    from monitor.kafka_crc import install as use_c_crc32c

    use_c_crc32c()
    from kafka.structs import TopicPartition

    c = KafkaConsumer(enable_auto_commit=False, **client_kwargs(cfg))
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            raise ValueError(f"topic {topic!r} does not exist or has no partitions")
        c.assign(tps)
        c.seek_to_beginning(*tps)
        if start_ms is not None:
            found = c.offsets_for_times({tp: start_ms for tp in tps})
            for tp in tps:
                if found.get(tp) is not None:
                    c.seek(tp, found[tp].offset)
        elif start_offset is not None:
            for tp in tps:
                c.seek(tp, start_offset)
        out: list[bytes] = []
        done: set[Any] = set()
        last = time.monotonic()
        while len(done) < len(tps) and len(out) < max_messages:
            polled = c.poll(timeout_ms=200)
            now = time.monotonic()
            for tp, msgs in polled.items():
                last = now
                for m in msgs:
                    past_end = (end_offset is not None and m.offset >= end_offset) or (
                        end_ms is not None and m.timestamp >= end_ms)
                    if past_end:
                        done.add(tp)
                        c.pause(tp)
                        break
                    if start_ms is None or m.timestamp >= start_ms:
                        out.append(m.value)
            for tp in tps:
                hw = c.highwater(tp)
                if hw is not None and c.position(tp) >= hw:
                    done.add(tp)
            if not polled and now - last > idle_timeout_s:
                break  # partitions with nothing to fetch report no high-water mark
        return out[:max_messages]
    finally:
        c.close()
