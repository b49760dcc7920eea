"""The metric catalogue: every metric repwatch exports, in one place.

The code registers its metrics from these entries (:mod:`monitor.telemetry`,
:mod:`serving.metrics`, through :func:`monitor.metrics.declare`), and the alert rules
(``dashboards/rules/``) and the Grafana dashboards (``dashboards/build.py``) read them; a test
checks that the three agree. Pure: importable without prometheus_client.

Conventions (ARCHITECTURE.md "Metrics"): the ``repwatch_`` prefix; base units as a suffix
(``_seconds``, ``_bytes``; counts of things name the thing: ``_records``); counters end in
``_total``; labels only from :data:`BOUNDED_LABELS` — never a record, request or client id.

Adding a metric family (e.g. the security detectors) is adding entries here: the dashboards
give every entry whose ``family`` has no hand-made panels a generic panel of its own (see
``dashboards/build.py``), and the catalogue test makes the rules and dashboards name only
metrics listed here.

Examples
--------
>>> spec = get("repwatch_drift_p_value")
>>> spec.kind, spec.labels
('gauge', ('model', 'model_version', 'detector'))
>>> sorted(series_names(get("repwatch_detector_compute_seconds")))[:2]
['repwatch_detector_compute_seconds_bucket', 'repwatch_detector_compute_seconds_count']
>>> find_series("repwatch_ood_score_bucket").name
'repwatch_ood_score'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
Component = Literal["monitor", "serving", "both"]

# Label names a metric may carry: each takes values from a bounded set (configured models, at
# most ``model_versions_kept`` versions per model, configured detectors, fixed enumerations).
BOUNDED_LABELS = frozenset({
    "model", "model_version", "detector", "kind", "reason", "stage", "topic", "partition",
    "sink", "outcome", "type", "mode", "component", "version", "python_version",
    "method", "code",  # the six OIP gRPC methods served; gRPC status code names
})
# Units that must be the name's suffix (before ``_total``); ``records`` must be a word of it.
SUFFIX_UNITS = frozenset({"seconds", "bytes", "info"})

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
                 10.0)
COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
# Sub-millisecond resolution where a small model lives, up to slow upstreams in tap mode.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01,
                   0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric.

    Parameters
    ----------
    name : str
        The exposed name (counters with ``_total``; histograms without ``_bucket``).
    kind : {"counter", "gauge", "histogram"}
    help : str
        The HELP text; it names only labels the metric has.
    labels : tuple of str
        Label names, each from :data:`BOUNDED_LABELS`.
    unit : str
        Base unit (``seconds``, ``bytes``), ``records`` for counts of records, ``info`` for a
        constant-1 info gauge, or ``""`` for a dimensionless value (a test statistic).
    component : {"monitor", "serving", "both"}
        Which process exports it.
    family : str
        Dashboard grouping: ``drift``, ``ood``, ``stream``, ``alerts``, ``health``, ``serving``,
        ``security``, ...
    buckets : tuple of float, optional
        Histogram bucket upper bounds.
    """

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    unit: str
    component: Component
    family: str
    buckets: tuple[float, ...] | None = None

    @property
    def base_name(self) -> str:
        """The name without ``_total`` (what prometheus_client is given and adds it back to)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


MV = ("model", "model_version")
DET = (*MV, "detector")
SEC = (*DET, "stage")  # security stages: adversarial | attack | poisoning


def _c(name: str, help: str, labels: tuple[str, ...], component: Component, family: str,
       unit: str = "") -> MetricSpec:
    return MetricSpec(name, "counter", help, labels, unit, component, family)


def _g(name: str, help: str, labels: tuple[str, ...], component: Component, family: str,
       unit: str = "") -> MetricSpec:
    return MetricSpec(name, "gauge", help, labels, unit, component, family)


CATALOG: tuple[MetricSpec, ...] = (
    # ---- both processes ------------------------------------------------------------------
    _g("repwatch_build_info", "Constant 1, labelled with the repwatch version, the Python "
       "version and the component (monitor or serving).",
       ("version", "python_version", "component"), "both", "health", "info"),
    # ---- monitor: records and streaming ----------------------------------------------------
    _c("repwatch_records_processed_total", "Records run through a pipeline, by kind.",
       (*MV, "kind"), "monitor", "stream", "records"),
    _c("repwatch_records_unknown_model_total",
       "Records of models that are not configured (skipped or dead-lettered).", (), "monitor",
       "stream", "records"),
    _c("repwatch_records_already_checkpointed_total",
       "Replayed records skipped because a checkpoint already holds them.", (), "monitor",
       "stream", "records"),
    _c("repwatch_dlq_records_total", "Records sent to the dead-letter topic, by reason.",
       ("reason",), "monitor", "stream", "records"),
    _g("repwatch_consumer_lag_records",
       "Records behind: partition high-water mark minus the worker's position.",
       ("topic", "partition"), "monitor", "stream", "records"),
    _c("repwatch_monitor_stage_seconds_total",
       "Worker time by stage (decode, route, detectors, metrics, ...).", ("stage",), "monitor",
       "stream", "seconds"),
    _c("repwatch_dlq_tombstones_total", "Dead-lettered records too large for the DLQ, sent as a "
       "tombstone (key, partition, offset, reason).", (), "monitor", "stream"),
    _c("repwatch_batch_failures_total", "Batches that failed with an unexpected error "
       "(retried from the last checkpoint, or dead-lettered after the last retry).",
       ("outcome",), "monitor", "stream"),
    _c("repwatch_model_versions_created_total", "Pipelines created for a new model version.",
       ("model",), "monitor", "stream"),
    _c("repwatch_model_versions_evicted_total", "Model-version pipelines evicted by the "
       "live-version cap (version churn).", ("model",), "monitor", "stream"),
    _c("repwatch_checkpoints_total", "Checkpoints written.", (), "monitor", "health"),
    _c("repwatch_checkpoints_rejected_total", "Checkpoints that failed validation and were set "
       "aside (the model restarted from the committed offset).", (), "monitor", "health"),
    _g("repwatch_checkpoint_bytes", "Size of the last checkpoint written for a model.",
       ("model",), "monitor", "health", "bytes"),
    _g("repwatch_checkpoint_age_seconds", "Seconds since the last checkpoint.", (), "monitor",
       "health", "seconds"),
    _c("repwatch_reference_replacements_total",
       "References replaced at run time by an admin call.", ("model",), "monitor", "health"),
    # ---- monitor: keyed (per-client) stages ----------------------------------------------------
    _c("repwatch_keyed_state_evictions_total", "Client keys evicted from a keyed stage's state, "
       "by reason (capacity: the key bound; idle: no record for key_idle_seconds).",
       ("model", "detector", "reason"), "monitor", "keyed"),
    _g("repwatch_keyed_state_keys", "Client keys held by a keyed stage.", DET, "monitor",
       "keyed"),
    _c("repwatch_records_missing_input_total", "Records a stage skipped because they lack its "
       "input (no logits, no label, no client id...).", ("model", "detector"), "monitor",
       "stream", "records"),
    # ---- monitor: drift --------------------------------------------------------------------
    _g("repwatch_drift_statistic", "Last drift test statistic.", DET, "monitor", "drift"),
    _g("repwatch_drift_threshold",
       "Threshold the last drift test statistic was compared against (NaN when the test "
       "decides by p-value only).", DET, "monitor", "drift"),
    _g("repwatch_drift_p_value", "Last drift test p-value.", DET, "monitor", "drift"),
    _g("repwatch_drift_effect_size", "Last drift effect size.", DET, "monitor", "drift"),
    _g("repwatch_drift_detected", "1 if the last test of this detector found drift, else 0.",
       DET, "monitor", "drift"),
    _c("repwatch_drift_tests_total", "Drift tests run.", DET, "monitor", "drift"),
    # ---- monitor: per-record detectors -----------------------------------------------------
    _c("repwatch_ood_records_scored_total", "Records scored by per-record detectors.", DET,
       "monitor", "ood", "records"),
    _c("repwatch_ood_records_flagged_total", "Records flagged by per-record detectors.", DET,
       "monitor", "ood", "records"),
    MetricSpec("repwatch_ood_score", "histogram",
               "Per-record scores of the per-record detectors (higher is more anomalous).",
               DET, "", "monitor", "ood", SCORE_BUCKETS),
    MetricSpec("repwatch_detector_compute_seconds", "histogram",
               "Detector compute time per call.", DET, "seconds", "monitor", "health",
               COMPUTE_BUCKETS),
    # ---- monitor: security stages (monitor/security.py) ------------------------------------
    _c("repwatch_security_records_scored_total", "Records judged by a security stage "
       "(adversarial: inference records; attack: client queries; poisoning: feedback records "
       "of closed windows), by stage.", SEC, "monitor", "security", "records"),
    _c("repwatch_security_records_flagged_total", "Records a security stage flagged "
       "(adversarial inputs, queries matching earlier ones, suspicious feedback), by stage.",
       SEC, "monitor", "security", "records"),
    _c("repwatch_attack_records_duplicate_total", "Queries skipped by the query-attack stage "
       "as exact repeats of one in the client's memory.", DET, "monitor", "security",
       "records"),
    _c("repwatch_attack_clients_alerted_total", "Clients whose recent queries crossed the "
       "query-attack count rule (one per attacking client and episode).", DET, "monitor",
       "security"),
    _g("repwatch_attack_clients_tracked", "Client pseudonyms held in the query-attack "
       "detector's bounded memory.", DET, "monitor", "security"),
    _c("repwatch_attack_clients_evicted_total", "Clients evicted from the query-attack memory "
       "(least recently seen, at max_clients).", DET, "monitor", "security"),
    _g("repwatch_attack_state_bytes", "Bytes of the query-attack detector's per-client memory "
       "and global hash index.", DET, "monitor", "security", "bytes"),
    _c("repwatch_poisoning_windows_total", "Feedback windows judged by a poisoning stage.",
       DET, "monitor", "security"),
    _g("repwatch_poisoning_rate", "Estimated poisoned share of the last closed feedback "
       "window (flagged share corrected for the false-positive rate).", DET, "monitor",
       "security"),
    _g("repwatch_poisoning_p_value", "Binomial p-value of the last feedback window's flags "
       "against the clean false-positive rate.", DET, "monitor", "security"),
    # ---- monitor: alerts -------------------------------------------------------------------
    _c("repwatch_alerts_total", "Alerts raised (after de-duplication), by alert type.",
       ("model", "type"), "monitor", "alerts"),
    _c("repwatch_alerts_deduplicated_total",
       "Alerts not sent again because their key was sent before.", ("model", "type"),
       "monitor", "alerts"),
    _c("repwatch_alert_deliveries_total",
       "Alert deliveries by sink (kafka, webhook) and outcome (delivered, rejected, failed).",
       ("sink", "outcome"), "monitor", "alerts"),
    # ---- serving sidecar -------------------------------------------------------------------
    MetricSpec("repwatch_serving_request_duration_seconds", "histogram",
               "Time from request received to response ready, by model, model version and mode "
               "(local: the sidecar runs the model; tap: it forwards to an upstream server).",
               (*MV, "mode"), "seconds", "serving", "serving", LATENCY_BUCKETS),
    _c("repwatch_serving_inference_errors_total",
       "Requests that did not produce a prediction, by kind (bad_request, not_found, "
       "too_large, runtime, upstream).", ("model", "kind"), "serving", "serving"),
    _g("repwatch_serving_record_queue_depth",
       "Records waiting in the in-memory queue for the producer.", (), "serving", "serving"),
    _g("repwatch_serving_record_queue_capacity",
       "Capacity of the in-memory record queue (serving.queue_size).", (), "serving", "serving"),
    _c("repwatch_serving_records_enqueued_total", "Records put on the queue.", ("model",),
       "serving", "serving", "records"),
    _c("repwatch_serving_records_sent_total", "Records acknowledged by the Kafka broker.",
       ("model",), "serving", "serving", "records"),
    _c("repwatch_serving_records_dropped_total",
       "Records that will never reach Kafka, by reason.", ("reason",), "serving", "serving",
       "records"),
    _c("repwatch_serving_producer_errors_total",
       "Kafka producer errors, by kind (connect, send, delivery).", ("kind",), "serving",
       "serving"),
    _c("repwatch_serving_rejected_total",
       "Requests refused at intake for going over a configured bound, by reason.", ("reason",),
       "serving", "serving"),
    _g("repwatch_serving_record_stream_degraded",
       "1 while records wait and none has been delivered for serving.stream_stall_seconds.",
       (), "serving", "serving"),
    _g("repwatch_serving_records_in_flight",
       "Records handed to the Kafka producer and not yet acknowledged.", (), "serving",
       "serving", "records"),
    _c("repwatch_serving_grpc_requests_total",
       "OIP gRPC calls (serving.grpc_port), by method and gRPC status code.",
       ("method", "code"), "serving", "serving"),
    MetricSpec("repwatch_serving_grpc_request_duration_seconds", "histogram",
               "Time from an OIP gRPC ModelInfer call received to its response ready, by model "
               "and model version (REST requests are in "
               "repwatch_serving_request_duration_seconds).",
               MV, "seconds", "serving", "serving", LATENCY_BUCKETS),
)

_BY_NAME = {spec.name: spec for spec in CATALOG}


def get(name: str) -> MetricSpec:
    """The entry called ``name``; a clear error naming the fix when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"metric {name!r} is not in the catalogue; add a MetricSpec for it to "
            "monitor/metric_catalog.py"
        ) from None


def series_names(spec: MetricSpec) -> set[str]:
    """The sample names Prometheus stores for ``spec``."""
    if spec.kind == "histogram":
        return {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
    return {spec.name}


def find_series(series: str) -> MetricSpec | None:
    """The entry a stored series name belongs to (``x_bucket`` -> ``x``), or None."""
    for spec in CATALOG:
        if series in series_names(spec):
            return spec
    return None


def for_component(component: Component) -> tuple[MetricSpec, ...]:
    return tuple(s for s in CATALOG if s.component in (component, "both"))


def families() -> list[str]:
    """Families in catalogue order."""
    return list(dict.fromkeys(s.family for s in CATALOG))


def conformance_errors(catalog: tuple[MetricSpec, ...] = CATALOG) -> list[str]:
    """Where entries break the naming conventions (empty when all conform)."""
    errors = []
    seen: set[str] = set()
    for s in catalog:
        if s.name in seen:
            errors.append(f"{s.name}: listed twice")
        seen.add(s.name)
        if not s.name.startswith("repwatch_"):
            errors.append(f"{s.name}: no repwatch_ prefix")
        if (s.kind == "counter") != s.name.endswith("_total"):
            errors.append(f"{s.name}: counters, and only counters, end in _total")
        if s.unit in SUFFIX_UNITS and not s.base_name.endswith(f"_{s.unit}"):
            errors.append(f"{s.name}: unit {s.unit!r} is not the name's suffix")
        if s.unit == "records" and "records" not in s.base_name.split("_"):
            errors.append(f"{s.name}: unit 'records' is not in the name")
        if s.unit == "" and s.base_name.endswith(("_seconds", "_bytes")):
            errors.append(f"{s.name}: the name has a unit suffix but the entry has no unit")
        bad = [label for label in s.labels if label not in BOUNDED_LABELS]
        if bad:
            errors.append(f"{s.name}: labels {bad} are not from a bounded set")
        if (s.kind == "histogram") != (s.buckets is not None):
            errors.append(f"{s.name}: histograms, and only histograms, have buckets")
    return errors


# Labels a query may match on that the metric itself does not carry: added by the scrape, or by
# Prometheus' ALERTS series.
TARGET_LABELS = frozenset({"instance", "job", "namespace", "pod", "service", "container",
                           "alertname", "alertstate", "severity", "le"})
_NAME = re.compile(r"\b(repwatch_[a-z0-9_]+)")
_SELECTOR = re.compile(r"\b(repwatch_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)")


def query_errors(expr: str) -> list[str]:
    """Metrics a PromQL expression names that are not in the catalogue, and labels it selects
    on that its metric does not have (empty when the expression agrees with the catalogue).

    >>> query_errors('rate(repwatch_dlq_records_total{reason="decode"}[5m])')
    []
    >>> query_errors('repwatch_nope_total + repwatch_dlq_records_total{model="m"}')
    ['repwatch_nope_total: not in the catalogue', 'repwatch_dlq_records_total has no label model']
    """
    errors = [f"{n}: not in the catalogue" for n in _NAME.findall(expr) if find_series(n) is None]
    for name, sel in _SELECTOR.findall(expr):
        spec = find_series(name)
        if spec is None:
            continue
        for label in _MATCHER.findall(sel):
            if label not in spec.labels and label not in TARGET_LABELS:
                errors.append(f"{name} has no label {label}")
    return errors
