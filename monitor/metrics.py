"""Metrics from the catalogue onto a registry, and serving a registry over HTTP.

Metrics are always declared on a registry passed in (never the global one at import), so tests
and several workers in one process never collide on duplicate time series. Names, HELP texts,
labels and buckets come from :mod:`monitor.metric_catalog`.
"""

from __future__ import annotations

import platform
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from monitor import metric_catalog as catalog


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


def version() -> str:
    try:
        return metadata.version("repwatch")
    except metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def register_standard(registry: CollectorRegistry, component: str) -> None:
    """``repwatch_build_info`` plus the standard process, platform and GC collectors."""
    info = declare("repwatch_build_info", registry)
    info.labels(version(), platform.python_version(), component).set(1)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


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
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Expose ``registry`` on ``http://host:port/metrics`` (port 0 picks a free one).

    prometheus_client's server negotiates the format: OpenMetrics when the scraper asks for it.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
