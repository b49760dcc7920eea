"""Session-scoped real services on free loopback ports: Tansu, Prometheus, Alertmanager.

A missing binary fails the test with the install command; these fixtures never skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from monitor import localstack
from monitor.localstack import Service, ServiceMissing, WebhookReceiver

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
