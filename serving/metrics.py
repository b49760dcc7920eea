"""The sidecar's Prometheus metrics, declared on a registry passed in (never the global one).

Labels come only from bounded sets: model, model version, drop reason, error kind. Never a
request, record or client id.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sub-millisecond resolution where a small model lives, up to slow upstreams in tap mode.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# Reasons a record can be dropped (a bounded label set).
DROP_REASONS = (
    "queue_full",  # the bounded queue was full: the oldest record made room
    "delivery_failed",  # the producer gave up on it (broker down past the delivery timeout)
    "invalid_record",  # it could not be encoded (e.g. NaN embedding under nan_policy=pass)
    "unjoined_feedback",  # feedback for a record id the sidecar no longer remembers
    "shutdown",  # still queued or in flight when the shutdown deadline passed
)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.request_seconds = Histogram(
            "repwatch_serving_request_duration_seconds",
            "Time from request received to response ready, per model and endpoint kind.",
            ["model", "model_version", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_errors = Counter(
            "repwatch_serving_inference_errors_total",
            "Requests that did not produce a prediction, by kind (bad_request, not_found, "
            "too_large, runtime, upstream).",
            ["model", "kind"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "repwatch_serving_record_queue_depth",
            "Records waiting in the in-memory queue for the producer.",
            registry=registry,
        )
        self.queue_capacity = Gauge(
            "repwatch_serving_record_queue_capacity",
            "Capacity of the in-memory record queue (serving.queue_size).",
            registry=registry,
        )
        self.records_enqueued = Counter(
            "repwatch_serving_records_enqueued_total",
            "Records put on the queue.",
            ["model"],
            registry=registry,
        )
        self.records_sent = Counter(
            "repwatch_serving_records_sent_total",
            "Records acknowledged by the Kafka broker.",
            ["model"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "repwatch_serving_records_dropped_total",
            "Records that will never reach Kafka, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.records_dropped.labels(reason)
        self.producer_errors = Counter(
            "repwatch_serving_producer_errors_total",
            "Kafka producer errors, by kind (connect, send, delivery).",
            ["kind"],
            registry=registry,
        )
        for kind in ("connect", "send", "delivery"):
            self.producer_errors.labels(kind)
        self.records_in_flight = Gauge(
            "repwatch_serving_records_in_flight",
            "Records handed to the Kafka producer and not yet acknowledged.",
            registry=registry,
        )

    def track_queue(self, depth: Callable[[], float], capacity: int) -> None:
        self.queue_depth.set_function(depth)
        self.queue_capacity.set(capacity)

    def track_in_flight(self, in_flight: Callable[[], float]) -> None:
        self.records_in_flight.set_function(in_flight)
