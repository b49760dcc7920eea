"""Session-scoped real services on free loopback ports: Tansu, Prometheus, Alertmanager.

A missing binary fails the test with the install command; these fixtures never skip.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitor import localstack
from monitor.localstack import Service, ServiceMissing

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


class WebhookReceiver:
    """A loopback HTTP server that records every POST (stands in for PagerDuty/Slack)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    receiver.requests.append((dict(self.headers), body))
                    receiver.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float) -> list[Any]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.requests) >= count, timeout)
            return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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
