"""``repwatch demo`` runs end to end and exits 0 (slow: it starts its own stack)."""

from __future__ import annotations

import pytest

from monitor.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_sees_the_drift_alert_and_exits_zero(capsys) -> None:
    assert main(["--log-level", "WARNING", "demo", "--records", "1000"]) == 0
    out = capsys.readouterr().out
    assert "io.repwatch.alert.drift" in out and "signature valid" in out
    assert "demo succeeded" in out
