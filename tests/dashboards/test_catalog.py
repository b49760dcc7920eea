"""The metric catalogue, the code, the alert rules and the dashboards agree.

The code registers from the catalogue (so names, HELP texts, types and labels must match what a
scrape shows); the rules and dashboards may only name metrics the catalogue lists, with labels
those metrics have.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor import metric_catalog as catalog
from monitor.metric_catalog import MetricSpec
from monitor.stages import RecordScores, SecurityCounts, WindowTest
from monitor.telemetry import MonitorMetrics

ROOT = Path(__file__).parents[2]
RULES = ROOT / "dashboards" / "rules"


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
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    counted = {f.name for f in families if f.type in ("counter", "histogram")}
    for fam in families:
        if fam.type == "gauge" and fam.name.removesuffix("_created") in counted - {fam.name}:
            continue  # the text format's creation timestamps of counters and histograms
        name = fam.name + ("_total" if fam.type == "counter" else "")
        labels = {k for s in fam.samples for k in s.labels if k not in ("le",)}
        out[name] = (fam.type, fam.documentation, labels)
    return out


def test_monitor_registers_exactly_its_catalogue_entries() -> None:
    import numpy as np

    registry = CollectorRegistry()
    m = MonitorMetrics(registry)
    # Touch every labelled metric once so its label names show in the scrape.
    m.observe("digits", "1", WindowTest("drift.mmd", "window", 0.01, 200, statistic=0.2,
                                        threshold=0.1, effect_size=0.5, detected=True,
                                        p_value=0.01))
    m.observe("digits", "1", RecordScores("ood.knn", "record", 0.01, records=3, flagged=1,
                                          scores=np.array([0.1, 0.5, 2.0])))
    m.records.labels("digits", "1", "inference").inc()
    m.dlq.labels("decode").inc()
    m.stage.labels("decode").inc(0.1)
    m.lag.labels("repwatch.records", "0").set(5)
    m.alerts.labels("digits", "drift").inc()
    m.alerts_duplicate.labels("digits", "drift").inc()
    m.deliveries.labels("webhook", "delivered").inc()
    m.reference_replaced.labels("digits").inc()
    m.batch_failures.labels("retried").inc()
    m.versions_created.labels("digits").inc()
    m.versions_evicted.labels("digits").inc()
    m.checkpoint_bytes.labels("digits").set(1024)
    m.keyed_evictions.labels("digits", "ood.knn", "capacity").inc()
    m.keyed_keys.labels("digits", "1", "ood.knn").set(3)
    m.missing_input.labels("digits", "ood.msp").inc()
    for family in ("attack", "poisoning"):
        m.observe("digits", "1", SecurityCounts(f"x.{family}", family, family, 0.01, records=3,
                                                flagged=1, poison_rate=0.1, p_value=0.01))
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


def test_rules_name_only_catalogue_metrics_and_their_labels() -> None:
    exprs = _rule_exprs()
    assert len(exprs) >= 6
    for alert, expr in exprs:
        assert catalog.query_errors(expr) == [], alert


def test_dashboards_name_only_catalogue_metrics_and_their_labels() -> None:
    from monitor import dashboards

    docs = [dashboards.render(b) for b in dashboards.boards()]
    found = [q for doc in docs for q in dashboards.queries(doc)]
    assert len(found) >= 30
    for where, expr in found:
        assert catalog.query_errors(expr) == [], where
    # Every catalogue metric is on a dashboard (the build info through the health panels).
    text = "\n".join(expr for _, expr in found)
    missing = [s.name for s in catalog.CATALOG if not any(n in text for n in
                                                          catalog.series_names(s))]
    assert missing == [
        "repwatch_records_unknown_model_total", "repwatch_records_already_checkpointed_total",
        "repwatch_reference_replacements_total", "repwatch_records_missing_input_total",
        "repwatch_alerts_deduplicated_total",
    ], "a metric without a panel: add one or list it here"


def test_agreement_check_catches_unknown_metrics_and_labels() -> None:
    assert catalog.query_errors("rate(repwatch_nope_total[5m])") == [
        "repwatch_nope_total: not in the catalogue"]
    assert catalog.query_errors('repwatch_dlq_records_total{model="x"}') == [
        "repwatch_dlq_records_total has no label model"]
    assert catalog.query_errors('repwatch_dlq_records_total{reason="x",job="w"}') == []
    assert catalog.query_errors('histogram_quantile(0.9, rate(repwatch_ood_score_bucket'
                                '{le="1.0", detector="d"}[5m]))') == []


def test_monitor_endpoint_negotiates_openmetrics_and_answers_probes() -> None:
    import urllib.error
    import urllib.request

    from monitor.metrics import serve_metrics

    registry = CollectorRegistry()
    MonitorMetrics(registry)
    state = {"ready": False}
    server = serve_metrics(registry, ready=lambda: state["ready"])
    url = f"http://127.0.0.1:{server.port}"
    try:
        om = urllib.request.Request(f"{url}/metrics",
                                    headers={"Accept": "application/openmetrics-text"})
        with urllib.request.urlopen(om, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert resp.read().endswith(b"# EOF\n")
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert 'repwatch_build_info{component="monitor"' in text
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            assert resp.status == 200
        try:
            urllib.request.urlopen(f"{url}/readyz", timeout=5)
            raise AssertionError("/readyz answered 200 before the worker was ready")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        state["ready"] = True
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.close()
