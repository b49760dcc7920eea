"""The metric catalogue, the code, the alert rules and the dashboards agree.

The code registers from the catalogue (so names, HELP texts, types and labels must match what a
scrape shows); the rules and dashboards may only name metrics the catalogue lists, with labels
those metrics have.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor import metric_catalog as catalog
from monitor.metric_catalog import MetricSpec
from monitor.pipeline import Observation
from monitor.telemetry import MonitorMetrics

ROOT = Path(__file__).parents[2]
RULES = ROOT / "dashboards" / "rules"
# Labels the scrape adds, or that rules match on without the metric having them.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "alertname", "alertstate", "severity"}
METRIC_RE = re.compile(r"\b(repwatch_[a-z0-9_]+)")


def test_catalogue_follows_the_conventions() -> None:
    assert catalog.conformance_errors() == []


def test_conformance_check_catches_each_kind_of_mistake() -> None:
    bad = (
        MetricSpec("repwatch_things", "counter", "h", (), "", "monitor", "x"),
        MetricSpec("repwatch_lag", "gauge", "h", (), "records", "monitor", "x"),
        MetricSpec("repwatch_wait", "gauge", "h", (), "seconds", "monitor", "x"),
        MetricSpec("repwatch_seen_total", "counter", "h", ("record_id",), "", "monitor", "x"),
        MetricSpec("queue_seconds", "histogram", "h", (), "seconds", "monitor", "x"),
    )
    errors = "\n".join(catalog.conformance_errors(bad))
    assert "repwatch_things: counters, and only counters, end in _total" in errors
    assert "repwatch_lag: unit 'records' is not in the name" in errors
    assert "repwatch_wait: unit 'seconds' is not the name's suffix" in errors
    assert "labels ['record_id'] are not from a bounded set" in errors
    assert "queue_seconds: no repwatch_ prefix" in errors
    assert "queue_seconds: histograms, and only histograms, have buckets" in errors


def _scrape(registry: CollectorRegistry) -> dict[str, tuple[str, str, set[str]]]:
    """name -> (type, help, label names seen), names as the text exposition writes them."""
    out: dict[str, tuple[str, str, set[str]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        name = fam.name + ("_total" if fam.type == "counter" else "")
        labels = {k for s in fam.samples for k in s.labels if k not in ("le",)}
        if not fam.name.endswith("_created"):  # the text format's creation timestamps
            out[name] = (fam.type, fam.documentation, labels)
    return out


def test_monitor_registers_exactly_its_catalogue_entries() -> None:
    import numpy as np

    registry = CollectorRegistry()
    m = MonitorMetrics(registry)
    # Touch every labelled metric once so its label names show in the scrape.
    m.observe("digits", "1", Observation("drift.mmd", "window", 0.01, test={
        "statistic": 0.2, "threshold": 0.1, "p_value": 0.01, "effect_size": 0.5,
        "detected": 1.0}))
    m.observe("digits", "1", Observation("ood.knn", "record", 0.01, records=3, flagged=1,
                                         scores=np.array([0.1, 0.5, 2.0])))
    m.records.labels("digits", "1", "inference").inc()
    m.dlq.labels("decode").inc()
    m.stage.labels("decode").inc(0.1)
    m.lag.labels("repwatch.records", "0").set(5)
    m.alerts.labels("digits", "drift").inc()
    m.alerts_duplicate.labels("digits", "drift").inc()
    m.deliveries.labels("webhook", "delivered").inc()
    m.reference_replaced.labels("digits").inc()
    scraped = _scrape(registry)
    ours = {k: v for k, v in scraped.items() if k.startswith("repwatch_")}
    expected = {s.name: s for s in catalog.for_component("monitor")}
    assert set(ours) == set(expected)
    for name, (kind, help_text, labels) in ours.items():
        spec = expected[name]
        assert (kind, help_text) == (spec.kind, spec.help), name
        assert labels == set(spec.labels), name
    # The standard collectors, on this registry (not the global one).
    assert {"process_resident_memory_bytes", "python_info", "python_gc_objects_collected_total"
            } <= set(scraped)


def _rule_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RULES.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule.get("record"), rule["expr"]))
    return out


def _unknown_names(expr: str) -> list[str]:
    return [n for n in METRIC_RE.findall(expr) if catalog.find_series(n) is None]


def _bad_labels(expr: str) -> list[str]:
    """Labels in ``{...}`` selectors of catalogue metrics that the metric does not have."""
    bad = []
    for name, sel in re.findall(r"\b(repwatch_[a-z0-9_]+)\{([^}]*)\}", expr):
        spec = catalog.find_series(name)
        if spec is None:
            continue
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!=|!~|=)", sel):
            if label not in spec.labels and label not in TARGET_LABELS and label != "le":
                bad.append(f"{name}{{{label}}}")
    return bad


def test_rules_name_only_catalogue_metrics_and_their_labels() -> None:
    exprs = _rule_exprs()
    assert len(exprs) >= 6
    for alert, expr in exprs:
        assert _unknown_names(expr) == [], alert
        assert _bad_labels(expr) == [], alert


def test_agreement_check_catches_unknown_metrics_and_labels() -> None:
    assert _unknown_names("rate(repwatch_nope_total[5m])") == ["repwatch_nope_total"]
    assert _bad_labels('repwatch_dlq_records_total{model="x"}') == [
        "repwatch_dlq_records_total{model}"]
    assert _bad_labels('repwatch_dlq_records_total{reason="x",job="w"}') == []
