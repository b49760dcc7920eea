"""The sidecar's Prometheus metrics, declared on a registry passed in (never the global one).

Labels come only from bounded sets: model, model version, drop reason, error kind. Never a
request, record or client id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.metrics import declare, register_standard

# Reasons a record can be dropped (a bounded label set).
DROP_REASONS = (
    "queue_full",  # the bounded queue was full: the oldest record made room
    "delivery_failed",  # the producer gave up on it (broker down past the delivery timeout)
    "invalid_record",  # it could not be encoded (e.g. NaN embedding under nan_policy=pass)
    "unjoined_feedback",  # feedback for a record id the sidecar no longer remembers
    "shutdown",  # still queued or in flight when the shutdown deadline passed
    "too_large",  # over serving.limits.max_record_bytes, or refused by the client as too large
    "send_error",  # refused by the Kafka client for another per-record reason (never retried)
    "rows",  # a tapped request with more rows than serving.limits.max_rows (its upstream took it)
)


class ServingMetrics:
    """Every metric the sidecar exports, registered from :mod:`monitor.metric_catalog`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def m(name: str) -> Any:
            return declare(name, registry)

        self.registry = registry
        register_standard(registry, "serving")
        self.request_seconds = m("repwatch_serving_request_duration_seconds")
        self.inference_errors = m("repwatch_serving_inference_errors_total")
        self.queue_depth = m("repwatch_serving_record_queue_depth")
        self.queue_capacity = m("repwatch_serving_record_queue_capacity")
        self.records_enqueued = m("repwatch_serving_records_enqueued_total")
        self.records_sent = m("repwatch_serving_records_sent_total")
        self.records_dropped = m("repwatch_serving_records_dropped_total")
        for reason in DROP_REASONS:
            self.records_dropped.labels(reason)
        self.producer_errors = m("repwatch_serving_producer_errors_total")
        for kind in ("connect", "send", "delivery"):
            self.producer_errors.labels(kind)
        self.rejected = m("repwatch_serving_rejected_total")
        self.stream_degraded = m("repwatch_serving_record_stream_degraded")
        self.records_in_flight = m("repwatch_serving_records_in_flight")
        from serving.limits import REASONS

        for reason in REASONS:
            self.rejected.labels(reason)
        self.grpc_requests = m("repwatch_serving_grpc_requests_total")
        self.grpc_seconds = m("repwatch_serving_grpc_request_duration_seconds")

    def track_queue(self, depth: Callable[[], float], capacity: int) -> None:
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

    def track_in_flight(self, in_flight: Callable[[], float]) -> None:
        self.records_in_flight.set_function(in_flight)

    def track_stream(self, degraded: Callable[[], float]) -> None:
        self.stream_degraded.set_function(degraded)
