"""``repwatch demo`` end to end: images through the serving sidecar, records through the real
broker into the monitor, every scripted incident caught with its delay, a quiet clean phase,
the alerts on a signed webhook, Prometheus and Alertmanager, and the HTML report. It starts its
own stack (~30-40 s on 2 cores)."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from monitor.cli import main

pytestmark = [pytest.mark.integration]
# Where the browser test keeps its screenshot (a test artefact; CI may collect the folder).
ARTEFACTS = Path(os.environ.get("REPWATCH_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))


# The security incidents run where this build's monitor has their stages (monitor.security,
# issue 12); otherwise the demo must say so for each of them, never fake one.
SECURITY = importlib.util.find_spec("monitor.security") is not None
BASE = (("gradual corruption drift", "drift.mmd"), ("out-of-distribution inputs", "ood.knn"))
SECURE = (("adversarial client", "adversarial.combined"), ("probing client", "adversarial.query"),
          ("poisoned feedback", "poisoning.feedback"))


def test_demo_detects_every_incident_it_runs_and_writes_the_report(capsys, tmp_path) -> None:
    report = tmp_path / "repwatch-demo-report.html"
    assert main(["--log-level", "WARNING", "demo", "--plain", "--records", "500",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "serving sidecar http://127.0.0.1:" in out
    for title, detector in BASE + (SECURE if SECURITY else ()):
        m = re.search(rf"{title}: DETECTED by {detector} (\d+\.\d) s after it started", out)
        assert m, out
        assert 0 < float(m.group(1)) < 30
    if SECURITY:  # the probing incident is caught on one of its own clients
        assert re.search(r"probing client: DETECTED .* client client-probe-(hsj|square),", out)
    else:
        for title, _ in SECURE:
            assert f"{title}: not available in this build" in out
    assert "clean phase: 0 false alarm(s)" in out and "PROBLEM" not in out
    assert "Alertmanager notified: ['RepwatchDriftDetected']" in out
    # every inference and feedback record the demo sent, processed and counted by Prometheus
    sent = re.findall(r"^\[([\w-]+)\] (\d+) records sent(?: and (\d+) feedback labels)?$", out,
                      flags=re.M)
    assert [p for p, _, _ in sent][:4] == ["clean", "drift", "recovery", "ood"]
    assert int(sent[0][2] or 0) > 200  # the clean phase's honest feedback
    total = sum(int(n) + int(f or 0) for _, n, f in sent)
    assert f"[('digits', '{total}')]" in out
    assert "demo succeeded" in out
    page = report.read_text()
    charts = re.findall(r'data-chart="([^"]+)"', page)
    expected = ["timeline", "drift:drift.mmd", "scores:ood.knn", "roc:drift.mmd", "roc:ood.knn"]
    if SECURITY:
        expected = ["timeline", "drift:drift.mmd", "scores:ood.knn",
                    "scores:adversarial.combined", "scores:poisoning.feedback",
                    "roc:adversarial.combined", "roc:drift.mmd", "roc:ood.knn",
                    "roc:poisoning.feedback"]
    assert charts == expected
    assert page.count("class=ok>yes<") == (5 if SECURITY else 2) and "MISSED" not in page
    shot = check_in_browser(report, tmp_path, charts)
    print(f"screenshot: {shot}")


def test_demo_refuses_fewer_records_than_a_window(capsys) -> None:
    assert main(["demo", "--records", "100"]) == 2
    assert "--records must be at least 250" in capsys.readouterr().out


# --- the report in a real browser -----------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# Measures every chart once the page has laid out; appended to a copy of the report only.
MEASURE = """<script>
const out = [...document.querySelectorAll('svg[data-chart]')].map(s => {
  const box = s.getBoundingClientRect();
  const marks = [...s.querySelectorAll('[data-series]')].map(m => m.getBBox())
    .filter(b => b.width > 0 || b.height > 0).length;
  return {chart: s.dataset.chart, width: box.width, height: box.height, marks: marks};
});
const pre = document.createElement('pre'); pre.id = 'measured';
pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
</script></body>"""


def _chromium(tmp_path: Path, *args: str) -> str:
    import shutil

    binary = shutil.which("chromium")
    assert binary, "Debian's chromium is missing: apt-get install chromium (setup-system.sh)"
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    out = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def check_in_browser(report: Path, tmp_path: Path, charts: list[str]) -> Path:
    """Every plot laid out with drawn marks in headless Chromium; the screenshot is kept."""
    probe = tmp_path / "measure.html"
    probe.write_text(report.read_text().replace("</body>", MEASURE))
    dom = _chromium(tmp_path, "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="measured">(.*?)</pre>', dom, flags=re.S)
    assert m, dom[-2000:]
    measured = json.loads(html.unescape(m.group(1)))
    assert [c["chart"] for c in measured] == charts
    for c in measured:
        assert c["width"] > 100 and c["height"] > 100 and c["marks"] > 0, c
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "repwatch-demo-report.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000, len(data)
    return shot
