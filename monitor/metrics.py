"""Metrics from the catalogue onto a registry, and serving a registry over HTTP.

Metrics are always declared on a registry passed in (never the global one at import), so tests
and several workers in one process never collide on duplicate time series. Names, HELP texts,
labels and buckets come from :mod:`monitor.metric_catalog`.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from monitor import metric_catalog as catalog
from monitor.version import version


def declare(name: str, registry: CollectorRegistry) -> Any:
    """Register the catalogue entry ``name`` on ``registry``; returns the metric object."""
    spec = catalog.get(name)
    labels = list(spec.labels)
    if spec.kind == "counter":
        return Counter(spec.base_name, spec.help, labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, labels, registry=registry)
    assert spec.buckets is not None
    return Histogram(spec.name, spec.help, labels, buckets=spec.buckets, registry=registry)


def register_standard(registry: CollectorRegistry, component: str) -> None:
    """``repwatch_build_info`` plus the standard process, platform and GC collectors."""
    info = declare("repwatch_build_info", registry)
    info.labels(version(), platform.python_version(), component).set(1)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # scrapes and probes every few seconds
        pass


Check = Callable[[], bool]


def metrics_app(registry: CollectorRegistry, ready: Check | None = None) -> Any:
    """WSGI app: ``/metrics`` (format negotiated: OpenMetrics when asked), ``/healthz``
    (the process answers: liveness) and ``/readyz`` (``ready()``, default always)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "/")
        if path in ("/healthz", "/readyz"):
            ok = path == "/healthz" or ready is None or ready()
            body = b'{"status": "ok"}' if ok else b'{"status": "not ready"}'
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)

    return app


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0,
    ready: Check | None = None,
) -> MetricsServer:
    """Expose ``registry`` on ``http://host:port/metrics`` (port 0 picks a free one), with
    ``/healthz`` and ``/readyz`` for probes (see :func:`metrics_app`)."""
    server = make_server(host, port, metrics_app(registry, ready), _ThreadingServer,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="repwatch-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
