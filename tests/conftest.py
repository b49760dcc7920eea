"""Session-scoped real services on free loopback ports: Tansu, Prometheus, Alertmanager.

A missing binary fails the test with the install command; these fixtures never skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from monitor import localstack
from monitor.localstack import Service, ServiceMissing, WebhookReceiver
from monitor.records import Record

# Tansu holds a consumer's first JoinGroup for session_timeout_ms/2: keep it short.
CONSUMER_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


def _start(factory: Any, *args: Any, **kwargs: Any) -> Service:
    try:
        return factory(*args, **kwargs)  # type: ignore[no-any-return]
    except ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Service]:
    """A Tansu broker (memory storage); ``.address`` is the bootstrap server."""
    with localstack.running(_start(localstack.start_tansu)) as svc:
        yield svc


@pytest.fixture(scope="session")
def consumer_timeouts() -> dict[str, int]:
    return dict(CONSUMER_TIMEOUTS)


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Service]:
    """A Prometheus scraping every 1 s; change targets with localstack.set_scrape_targets."""
    with localstack.running(_start(localstack.start_prometheus, [])) as svc:
        yield svc


@pytest.fixture(scope="session")
def alertmanager_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def alertmanager(alertmanager_receiver: WebhookReceiver) -> Iterator[Service]:
    """Alertmanager routing every alert at once to ``alertmanager_receiver``."""
    svc = _start(localstack.start_alertmanager, alertmanager_receiver.url)
    with localstack.running(svc):
        yield svc


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def read_topic(address: str, topic: str, want: int, timeout: float) -> list[Record]:
    """Every record on ``topic`` from the start (no consumer group), until ``want`` or timeout."""
    from kafka import KafkaConsumer, TopicPartition

    from monitor.records import decode

    consumer = KafkaConsumer(
        bootstrap_servers=[address],
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=5000,
    )
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.2)
        if not parts:
            return []
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Record] = []
        while len(out) < want and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=200).values():
                out.extend(decode(m.value) for m in msgs)
        return out
    finally:
        consumer.close()
