"""Prometheus alert rules: promtool's own checks and unit tests, then the real path from a
repwatch metric through Prometheus rule evaluation and Alertmanager to an incident webhook."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from monitor import localstack
from monitor.metrics import serve_metrics

RULES = Path(__file__).parents[2] / "dashboards" / "rules"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with: apt-get install -y {package}")
    return path


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = _tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "repwatch.rules.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", "repwatch.rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_alertmanager_example_is_valid() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    example = RULES.parent / "alertmanager.example.yml"
    out = subprocess.run([amtool, "check-config", example], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
def test_drift_metric_pages_through_prometheus_and_alertmanager(
    alertmanager, alertmanager_receiver
) -> None:
    registry = CollectorRegistry()
    detected = Gauge(
        "repwatch_drift_detected",
        "1 if drift.",
        ["model", "model_version", "detector"],
        registry=registry,
    )
    detected.labels("digits", "1", "drift.mmd").set(0)
    metrics = serve_metrics(registry)
    before = len(alertmanager_receiver.requests)
    prom = localstack.start_prometheus(
        [f"127.0.0.1:{metrics.port}"],
        rule_files=[RULES / "repwatch.rules.yml"],
        alertmanager=alertmanager.address,
    )
    try:
        time.sleep(2)
        assert len(alertmanager_receiver.requests) == before  # no drift, no page
        t0 = time.monotonic()
        detected.labels("digits", "1", "drift.mmd").set(1)
        got = alertmanager_receiver.wait_for(before + 1, timeout=30)
        latency = time.monotonic() - t0
        firing = [
            a
            for msg in got[before:]
            for a in msg["alerts"]
            if a["labels"]["alertname"] == "RepwatchDriftDetected"
        ]
        assert firing, got[before:]
        assert firing[0]["labels"]["model"] == "digits"
        assert firing[0]["status"] == "firing"
        assert latency < 20
    finally:
        prom.stop()
        shutil.rmtree(prom.workdir, ignore_errors=True)
        metrics.close()
