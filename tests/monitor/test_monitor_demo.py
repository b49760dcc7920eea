"""``repwatch demo`` end to end: images through the serving sidecar, records through the real
broker into the monitor, every scripted incident caught with its delay, a quiet clean phase,
the alerts on a signed webhook, Prometheus and Alertmanager, and the HTML report. It starts its
own stack (~30-40 s on 2 cores)."""

from __future__ import annotations

import re

import pytest

from monitor.cli import main

pytestmark = [pytest.mark.integration]


def test_demo_detects_every_incident_it_runs_and_writes_the_report(capsys, tmp_path) -> None:
    report = tmp_path / "repwatch-demo-report.html"
    assert main(["--log-level", "WARNING", "demo", "--plain", "--records", "500",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "serving sidecar http://127.0.0.1:" in out
    for title, detector in (("gradual corruption drift", "drift.mmd"),
                            ("out-of-distribution inputs", "ood.knn")):
        m = re.search(rf"{title}: DETECTED by {detector} (\d+\.\d) s after it started", out)
        assert m, out
        assert 0 < float(m.group(1)) < 30
    for title in ("adversarial client", "probing client", "poisoned feedback"):
        assert f"{title}: not available in this build" in out
    assert "clean phase: 0 false alarm(s)" in out and "PROBLEM" not in out
    assert "Alertmanager notified: ['RepwatchDriftDetected']" in out
    assert "[('digits', '2000')]" in out  # every record processed and counted by Prometheus
    assert "demo succeeded" in out
    html = report.read_text()
    charts = re.findall(r'data-chart="([^"]+)"', html)
    assert charts == ["timeline", "drift:drift.mmd", "scores:ood.knn", "roc:drift.mmd",
                      "roc:ood.knn"]
    assert html.count("class=ok>yes<") == 2 and "MISSED" not in html


def test_demo_refuses_fewer_records_than_a_window(capsys) -> None:
    assert main(["demo", "--records", "100"]) == 2
    assert "--records must be at least 250" in capsys.readouterr().out
