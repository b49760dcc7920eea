"""Prometheus alert rules: promtool's own checks and unit tests, then the real path from a
repwatch metric through Prometheus rule evaluation and Alertmanager to an incident webhook."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from monitor import localstack
from monitor.metrics import serve_metrics

RULES = Path(__file__).parents[2] / "dashboards" / "rules"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with: apt-get install -y {package}")
    return path


def _rules() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, rule)
        for path in sorted(RULES.glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = _tool("promtool", "prometheus")
    files = sorted(RULES.glob("*.rules.yml"))
    assert files, RULES
    for path in files:
        count = sum(1 for p, _ in _rules() if p == path)
        check = subprocess.run(
            [promtool, "check", "rules", path.name], cwd=RULES, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"SUCCESS: {count} rules found" in check.stdout
        unit = subprocess.run(
            [promtool, "test", "rules", path.name.replace(".rules.yml", ".rules.test.yml")],
            cwd=RULES,
            capture_output=True,
            text=True,
        )
        assert unit.returncode == 0, unit.stdout + unit.stderr


def test_every_alert_has_severity_annotations_runbook_and_a_firing_unit_test() -> None:
    runbook = (RULES.parent / "RUNBOOK.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    fired: set[str] = set()
    for path in sorted(RULES.glob("*.rules.test.yml")):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    alerts = [rule for _, rule in _rules() if "alert" in rule]
    assert len(alerts) >= 11
    for rule in alerts:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], name
        doc, _, anchor = notes["runbook_url"].partition("#")
        assert doc == "dashboards/RUNBOOK.md" and anchor == name.lower(), name
        assert anchor in anchors, f"RUNBOOK.md has no section '## {name}'"
        assert name in fired, f"no promtool unit test expects {name} to fire"


def test_alertmanager_example_is_valid_and_routes_by_severity() -> None:
    amtool = _tool("amtool", "prometheus-alertmanager")
    example = RULES.parent / "alertmanager.example.yml"
    out = subprocess.run([amtool, "check-config", example], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 inhibit rules" in out.stdout
    for labels, receiver in [
        (["severity=critical", "alertname=RepwatchWorkerDown"], "repwatch-pager"),
        (["severity=warning", "alertname=RepwatchDriftDetected"], "repwatch-ml-team"),
        (["severity=info", "alertname=RepwatchDeadLetters"], "repwatch-info"),
        (["alertname=SomethingElse"], "repwatch-default"),
    ]:
        route = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={example}", *labels],
            capture_output=True,
            text=True,
        )
        assert route.returncode == 0, route.stderr
        assert route.stdout.strip() == receiver, labels
    config = yaml.safe_load(example.read_text())
    worker_down = [r for r in config["inhibit_rules"]
                   if r["source_matchers"] == ['alertname="RepwatchWorkerDown"']]
    assert worker_down and "RepwatchDriftDetected" in worker_down[0]["target_matchers"][0]


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


@pytest.mark.integration
def test_example_routing_and_inhibition_on_a_live_alertmanager(webhook_receiver) -> None:
    """The example's route tree and inhibit rules, on a real Alertmanager: its receivers are
    swapped for loopback webhooks (one path each) and its waits shortened; nothing else."""
    import json
    import urllib.request

    config = yaml.safe_load((RULES.parent / "alertmanager.example.yml").read_text())
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{webhook_receiver.url}/{r['name']}"}]}
        for r in config["receivers"]
    ]
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="0s", group_interval="1s")
    am = localstack.start_alertmanager(webhook_receiver.url, config=config)
    try:
        def post(*alerts: dict[str, str]) -> None:
            body = json.dumps([{"labels": a} for a in alerts]).encode()
            req = urllib.request.Request(f"{am.url}/api/v2/alerts", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200

        post({"alertname": "RepwatchWorkerDown", "severity": "critical", "job": "m"})
        assert webhook_receiver.wait("/repwatch-pager", 15), "critical did not page"
        # While the worker is down, a drift alert is inhibited; a dead-letter one is not.
        post({"alertname": "RepwatchDriftDetected", "severity": "warning", "model": "digits"},
             {"alertname": "RepwatchDeadLetters", "severity": "info", "reason": "decode"})
        assert webhook_receiver.wait("/repwatch-info", 15), "info was not routed"
        time.sleep(2)
        paths = [p for p, _, _ in webhook_receiver.posts]
        assert "/repwatch-ml-team" not in paths, paths
        names = [a["labels"]["alertname"] for p, _, b in webhook_receiver.posts
                 for a in json.loads(b)["alerts"]]
        assert "RepwatchDriftDetected" not in names
    finally:
        am.stop()
        shutil.rmtree(am.workdir, ignore_errors=True)
