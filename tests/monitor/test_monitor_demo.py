"""``repwatch demo`` runs end to end and exits 0: images through the serving sidecar, records
through the real broker into the monitor, the alert on Kafka and a signed webhook, Prometheus
and Alertmanager. It starts its own stack (~12 s)."""

from __future__ import annotations

import pytest

from monitor.cli import main

pytestmark = [pytest.mark.integration]


def test_demo_sees_the_drift_alert_and_exits_zero(capsys) -> None:
    assert main(["--log-level", "WARNING", "demo", "--records", "1000"]) == 0
    out = capsys.readouterr().out
    assert "serving sidecar: http://127.0.0.1:" in out
    assert "[clean phase] 1000 images in 50 OIP requests, all 200" in out
    assert "io.repwatch.alert.drift" in out and "signature valid" in out
    assert "Alertmanager notified: ['RepwatchDriftDetected']" in out
    assert "demo succeeded" in out
