"""Grafana dashboards as code (grafana-foundation-sdk, Grafana 11.6 build; the ``ops`` extra).

Two dashboards, both on a Prometheus data source chosen by a ``datasource`` variable:

- **repwatch / overview** (uid ``repwatch-overview``): every model: traffic, drift status and
  p-values, OOD and alert rates, worker and sidecar health, firing alerts.
- **repwatch / model** (uid ``repwatch-model``), templated on ``model`` and ``version``: drift
  statistic with its threshold, effect size, OOD score distribution, flagged fractions, the
  sidecar's queue and drops, consumer lag, alerts; firing repwatch alerts as annotations.

Every metric comes from :mod:`monitor.metric_catalog`. A catalogue family without hand-made
panels below (the security detectors, when they land) gets a row of generic panels, one per
metric, on both dashboards: adding a family is adding catalogue entries.

The JSON is generated into ``dashboards/generated/`` (``repwatch dashboards build``), committed,
and checked for staleness by the tests; the Helm chart ships it in ConfigMaps, and
``repwatch dashboards push`` uploads it over the Grafana HTTP API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor import metric_catalog as catalog

GENERATED = Path(__file__).resolve().parents[1] / "dashboards" / "generated"
DS = "${datasource}"
RATE = "$__rate_interval"
SEL = 'model="$model", model_version="$version"'
# Families with hand-made panels; any other family gets generic panels (see generic_panels).
CURATED = frozenset({"drift", "ood", "stream", "alerts", "health", "serving"})
ALERTS_EXPR = 'ALERTS{alertname=~"Repwatch.*", alertstate="firing"}'


@dataclass(frozen=True)
class Panel:
    """A panel before it is handed to the SDK: title, visualisation, PromQL targets."""

    title: str
    kind: str  # timeseries | stat | heatmap | state
    targets: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    description: str = ""
    width: int = 12


@dataclass
class Board:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[Panel]]] = field(default_factory=list)
    templated: bool = False
    annotation: str = ALERTS_EXPR


def _p(title: str, kind: str, *targets: tuple[str, str], **kw: Any) -> Panel:
    return Panel(title, kind, tuple(targets), **kw)


def _sel(name: str, sel: str) -> str:
    return f"{name}{{{sel}}}" if sel else name


def _sum_rate(name: str, by: str, sel: str = "") -> str:
    if catalog.find_series(name) is None:
        catalog.get(name)  # raises, naming the fix
    return f"sum by ({by}) (rate({_sel(name, sel)}[{RATE}]))"


def _ratio(num: str, den: str, by: str, sel: str = "") -> str:
    return f"{_sum_rate(num, by, sel)}\n  /\n{_sum_rate(den, by, sel)}"


def _quantile(q: float, name: str, by: str, sel: str = "") -> str:
    spec = catalog.get(name)
    assert spec.kind == "histogram", name
    return (f"histogram_quantile({q}, sum by ({by}, le) "
            f"(rate({_sel(name + '_bucket', sel)}[{RATE}])))")


def generic_panels(family: str, templated: bool) -> list[Panel]:
    """One panel per catalogue metric of ``family`` (for families without hand-made panels)."""
    panels = []
    for spec in catalog.CATALOG:
        if spec.family != family:
            continue
        sel = SEL if templated and {"model", "model_version"} <= set(spec.labels) else ""
        if templated and not sel and "model" in spec.labels:
            sel = 'model="$model"'
        keep = [label for label in spec.labels if label not in ("model_version",)
                and not (templated and label == "model")]
        by = ", ".join(keep) or "job"
        legend = " ".join(f"{{{{{label}}}}}" for label in keep) or "{{job}}"
        if spec.kind == "counter":
            expr, unit = _sum_rate(spec.name, by, sel), "ops"
        elif spec.kind == "gauge":
            expr, unit = f"max by ({by}) ({_sel(spec.name, sel)})", "short"
        else:
            expr, unit = _quantile(0.99, spec.name, by, sel), spec.unit or "short"
            if unit == "seconds":
                unit = "s"
        words = spec.base_name.removeprefix("repwatch_").replace("_", " ").capitalize()
        title = {"counter": f"{words} / s", "gauge": words}.get(spec.kind, f"{words} p99")
        panels.append(_p(title, "timeseries",
                         (expr, legend), unit=unit, description=spec.help))
    return panels


def _generic_rows(templated: bool) -> list[tuple[str, list[Panel]]]:
    return [(family.capitalize(), generic_panels(family, templated))
            for family in catalog.families() if family not in CURATED]


def overview() -> Board:
    b = Board("repwatch-overview", "repwatch / overview",
              "All models watched by repwatch: traffic, drift, OOD, alerts and health.")
    b.rows.append(("Traffic", [
        _p("Records processed / s", "timeseries",
           (_sum_rate("repwatch_records_processed_total", "model"), "{{model}}"), unit="ops",
           description="Records the monitor workers ran through a pipeline, by model."),
        _p("Sidecar requests / s", "timeseries",
           (_sum_rate("repwatch_serving_request_duration_seconds_count", "model"), "{{model}}"),
           unit="reqps", width=6),
        _p("Sidecar p99 latency", "timeseries",
           (_quantile(0.99, "repwatch_serving_request_duration_seconds", "model"), "{{model}}"),
           unit="s", width=6),
    ]))
    b.rows.append(("Drift", [
        _p("Drift status", "state",
           ("max by (model, detector) (repwatch_drift_detected)", "{{model}} {{detector}}"),
           description="1 (red) when the last window test of the detector found drift."),
        _p("Drift p-values", "timeseries",
           ("min by (model, detector) (repwatch_drift_p_value)", "{{model}} {{detector}}"),
           description="Last p-value of each drift test (lower is stronger evidence)."),
    ]))
    b.rows.append(("OOD and alerts", [
        _p("OOD flagged fraction", "timeseries",
           (_ratio("repwatch_ood_records_flagged_total", "repwatch_ood_records_scored_total",
                   "model, detector"), "{{model}} {{detector}}"), unit="percentunit",
           description="Share of records flagged by the per-record detectors (about 1% when "
           "calibrated and in distribution)."),
        _p("Alerts raised / s", "timeseries",
           (_sum_rate("repwatch_alerts_total", "model, type"), "{{model}} {{type}}"),
           unit="ops", description="CloudEvents alerts sent, by model and type."),
    ]))
    b.rows.append(("Health", [
        _p("Monitor workers", "stat",
           ('count by (job) (repwatch_build_info{component="monitor"})', "{{job}}"), width=6),
        _p("Sidecars", "stat",
           ('count by (job) (repwatch_build_info{component="serving"})', "{{job}}"), width=6),
        _p("Consumer lag", "timeseries",
           ("sum by (topic) (repwatch_consumer_lag_records)", "{{topic}}"), unit="short",
           width=6),
        _p("Checkpoint age", "timeseries",
           ("max by (instance) (repwatch_checkpoint_age_seconds)", "{{instance}}"),
           (_sum_rate("repwatch_checkpoints_total", "instance"), "writes/s {{instance}}"),
           unit="s", width=6),
        _p("Dead letters / s", "timeseries",
           (_sum_rate("repwatch_dlq_records_total", "reason"), "{{reason}}"), unit="ops",
           width=6),
        _p("Sidecar drops / s", "timeseries",
           (_sum_rate("repwatch_serving_records_dropped_total", "reason"), "{{reason}}"),
           unit="ops", width=6),
        _p("Alert deliveries / s", "timeseries",
           (_sum_rate("repwatch_alert_deliveries_total", "sink, outcome"),
            "{{sink}} {{outcome}}"), unit="ops", width=6),
        _p("Checkpoint size", "timeseries",
           ("max by (model) (repwatch_checkpoint_bytes)", "{{model}}"), unit="bytes", width=6),
        _p("Version churn / s", "timeseries",
           (_sum_rate("repwatch_model_versions_created_total", "model"), "created {{model}}"),
           (_sum_rate("repwatch_model_versions_evicted_total", "model"), "evicted {{model}}"),
           unit="ops", width=6),
        _p("Failed batches and rejected checkpoints / s", "timeseries",
           (_sum_rate("repwatch_batch_failures_total", "outcome"), "batches {{outcome}}"),
           (_sum_rate("repwatch_checkpoints_rejected_total", "job"), "checkpoints rejected"),
           (_sum_rate("repwatch_dlq_tombstones_total", "job"), "DLQ tombstones"),
           unit="ops", width=6),
        _p("Sidecar intake rejections / s", "timeseries",
           (_sum_rate("repwatch_serving_rejected_total", "reason"), "{{reason}}"), unit="ops",
           width=6),
        _p("Sidecar streams degraded", "stat",
           ("sum(repwatch_serving_record_stream_degraded)", "degraded"), width=6,
           description="Sidecars whose records wait with nothing delivered (broker slow or "
           "down); predictions are still served."),
        _p("Worker time by stage", "timeseries",
           (_sum_rate("repwatch_monitor_stage_seconds_total", "stage"), "{{stage}}"),
           unit="percentunit", width=6,
           description="Seconds per second each worker stage takes (summed over workers)."),
        _p("Firing alerts", "timeseries",
           (f"count by (alertname, severity) ({ALERTS_EXPR})", "{{alertname}} {{severity}}"),
           width=24),
    ]))
    b.rows.extend(_generic_rows(templated=False))
    return b


def model() -> Board:
    b = Board("repwatch-model", "repwatch / model",
              "One model version: drift tests, OOD scores, security, sidecar and stream.",
              templated=True,
              annotation='ALERTS{alertname=~"Repwatch.*", alertstate="firing", model="$model"}')
    b.rows.append(("Drift", [
        _p("Drift statistic and threshold", "timeseries",
           (f"repwatch_drift_statistic{{{SEL}}}", "{{detector}}"),
           (f"repwatch_drift_threshold{{{SEL}}}", "{{detector}} threshold"),
           description="The last test statistic of each drift detector and the threshold it "
           "was compared against."),
        _p("Drift p-value", "timeseries", (f"repwatch_drift_p_value{{{SEL}}}", "{{detector}}"),
           width=6),
        _p("Effect size", "timeseries",
           (f"repwatch_drift_effect_size{{{SEL}}}", "{{detector}}"), width=6),
        _p("Drift detected", "state", (f"repwatch_drift_detected{{{SEL}}}", "{{detector}}"),
           width=18),
        _p("Drift tests / s", "timeseries",
           (_sum_rate("repwatch_drift_tests_total", "detector", SEL), "{{detector}}"),
           unit="ops", width=6),
    ]))
    b.rows.append(("Out of distribution", [
        _p("OOD score distribution", "heatmap",
           (f"sum by (le) (rate(repwatch_ood_score_bucket{{{SEL}}}[{RATE}]))", "{{le}}"),
           description="Per-record scores (higher is more anomalous), all OOD detectors."),
        _p("OOD flagged fraction", "timeseries",
           (_ratio("repwatch_ood_records_flagged_total", "repwatch_ood_records_scored_total",
                   "detector", SEL), "{{detector}}"), unit="percentunit"),
        _p("OOD score p50 / p99", "timeseries",
           (_quantile(0.5, "repwatch_ood_score", "detector", SEL), "{{detector}} p50"),
           (_quantile(0.99, "repwatch_ood_score", "detector", SEL), "{{detector}} p99")),
        _p("Detector compute p99", "timeseries",
           (_quantile(0.99, "repwatch_detector_compute_seconds", "detector", SEL),
            "{{detector}}"), unit="s"),
    ]))
    b.rows.append(("Sidecar", [
        _p("Records enqueued and sent / s", "timeseries",
           (_sum_rate("repwatch_serving_records_enqueued_total", "model", 'model="$model"'),
            "enqueued"),
           (_sum_rate("repwatch_serving_records_sent_total", "model", 'model="$model"'),
            "sent"), unit="ops", width=8),
        _p("Sidecar queue", "timeseries",
           ("sum by (instance) (repwatch_serving_record_queue_depth)", "depth {{instance}}"),
           ("sum by (instance) (repwatch_serving_record_queue_capacity)",
            "capacity {{instance}}"), width=8),
        _p("Sidecar drops / s", "timeseries",
           (_sum_rate("repwatch_serving_records_dropped_total", "reason"), "{{reason}}"),
           unit="ops", width=8),
        _p("Producer in flight and errors", "timeseries",
           ("sum by (instance) (repwatch_serving_records_in_flight)", "in flight {{instance}}"),
           (_sum_rate("repwatch_serving_producer_errors_total", "kind"), "errors/s {{kind}}"),
           width=8),
        _p("Request latency p50 / p99", "timeseries",
           (_quantile(0.5, "repwatch_serving_request_duration_seconds", "mode", SEL),
            "p50 {{mode}}"),
           (_quantile(0.99, "repwatch_serving_request_duration_seconds", "mode", SEL),
            "p99 {{mode}}"), unit="s", width=8),
        _p("OIP gRPC calls / s", "timeseries",
           (_sum_rate("repwatch_serving_grpc_requests_total", "method, code"),
            "{{method}} {{code}}"), unit="ops", width=8,
           description="Calls on serving.grpc_port by method and gRPC status code (all models: "
           "the code of a refused call is known before its model)."),
        _p("gRPC ModelInfer latency p50 / p99", "timeseries",
           (_quantile(0.5, "repwatch_serving_grpc_request_duration_seconds", "model", SEL),
            "p50"),
           (_quantile(0.99, "repwatch_serving_grpc_request_duration_seconds", "model", SEL),
            "p99"), unit="s", width=8),
        _p("Inference errors / s", "timeseries",
           (_sum_rate("repwatch_serving_inference_errors_total", "kind", 'model="$model"'),
            "{{kind}}"), unit="ops", width=8),
    ]))
    b.rows.append(("Stream and alerts", [
        _p("Records processed / s", "timeseries",
           (_sum_rate("repwatch_records_processed_total", "kind", SEL), "{{kind}}"), unit="ops",
           width=8),
        _p("Consumer lag", "timeseries",
           ("sum by (topic, partition) (repwatch_consumer_lag_records)",
            "{{topic}}/{{partition}}"), width=8),
        _p("Alerts raised / s", "timeseries",
           (_sum_rate("repwatch_alerts_total", "type", 'model="$model"'), "{{type}}"),
           unit="ops", width=8),
    ]))
    b.rows.extend(_generic_rows(templated=True))
    return b


def boards() -> list[Board]:
    return [overview(), model()]


def render(board: Board) -> dict[str, Any]:
    """The dashboard JSON (a plain dict), built with grafana-foundation-sdk."""
    from monitor.dashboards_sdk import build

    return build(board)


def write(directory: Path = GENERATED) -> list[Path]:
    """Write every dashboard as ``<uid>.json`` into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for board in boards():
        path = directory / f"{board.uid}.json"
        path.write_text(dumps(render(board)))
        out.append(path)
    return out


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation of a dashboard JSON."""
    out = []
    for panel in doc.get("panels", []):
        for sub in [panel, *panel.get("panels", [])]:
            for t in sub.get("targets", []):
                out.append((f"{doc['uid']}: {sub['title']} [{t['refId']}]", t["expr"]))
    for ann in doc.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append((f"{doc['uid']}: annotation {ann['name']}", ann["expr"]))
    return out
