"""The demo's verdict, analysis and report without a stack: attribution of alerts to phases,
the exit decision, ROC against an independent computation, and the HTML/SVG it writes."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from monitor.demo import incidents as I
from monitor.demo.analysis import Analysis, Roc, WindowPoint, roc
from monitor.demo.report import ReportInput, render


def _phases() -> list[I.Phase]:
    return [I.Phase("clean", None, 1_000, 2_000, 500), I.Phase("drift", "drift", 2_000, 3_000, 500),
            I.Phase("recovery", None, 3_000, 4_000, 500), I.Phase("ood", "ood", 4_000, 5_000, 500)]


def _alert(kind: str, detector: str, last_ts: int, arrived: int, i: int = 0) -> I.SeenAlert:
    return I.SeenAlert({"id": f"{kind}-{i}", "type": f"io.repwatch.alert.{kind}", "data": {
        "detector": detector, "window": {"last_ts_ms": last_ts},
        "evidence": {"record_ids": [f"r{i}", f"r{i + 1}"]}}}, arrived)


def test_alerts_are_attributed_by_event_time_and_delays_measured_from_incident_start() -> None:
    alerts = [_alert("drift", "drift.mmd", 2_600, 2_900), _alert("ood", "ood.knn", 3_100, 3_200, 1),
              _alert("ood", "ood.knn", 4_700, 4_750, 2)]
    outcomes, false_alarms = I.attribute(_phases(), alerts)
    by = {o.incident.key: o for o in outcomes}
    assert by["drift"].detected and by["drift"].delay_s == pytest.approx(0.9)
    assert by["drift"].evidence == ("r0", "r1") and by["drift"].detector == "drift.mmd"
    # The OOD alert in the recovery phase belongs to the drift incident: not the OOD catch.
    assert by["ood"].detected and by["ood"].alert_id == "ood-2"
    assert by["ood"].delay_s == pytest.approx(0.75)
    assert not false_alarms
    assert I.verdict(outcomes, false_alarms, {"drift", "ood"}) == (True, [])
    unavailable = [o for o in outcomes if not o.available]
    assert {o.incident.key for o in unavailable} == {"adversarial", "probing", "poisoning"}
    assert all("not available in this build" in (o.reason or "") for o in unavailable)


def test_a_missed_incident_or_a_clean_phase_alarm_fails_the_demo() -> None:
    outcomes, fa = I.attribute(_phases(), [_alert("drift", "drift.mmd", 2_600, 2_900)])
    passed, problems = I.verdict(outcomes, fa, {"drift", "ood"})
    assert not passed and problems == ["missed: out-of-distribution inputs"]
    alerts = [_alert("ood", "ood.knn", 1_500, 1_600, 9), _alert("drift", "drift.mmd", 2_600, 2_900),
              _alert("ood", "ood.knn", 4_500, 4_600, 1)]
    outcomes, fa = I.attribute(_phases(), alerts)
    passed, problems = I.verdict(outcomes, fa, {"drift", "ood"})
    assert not passed and [a.event["id"] for a in fa] == ["ood-9"]
    assert problems == ["false alarm in the clean phase: ood by ood.knn (ood-9)"]


def test_roc_matches_an_independent_auc() -> None:
    rng = np.random.default_rng(1)
    neg, pos = rng.normal(size=300), rng.normal(0.8, 1.0, size=200)
    fpr, tpr, auc = roc(neg, pos)
    # Mann-Whitney: P(pos > neg) + P(pos == neg) / 2, counted pair by pair.
    diff = pos[:, None] - neg[None, :]
    assert auc == pytest.approx((diff > 0).mean() + 0.5 * (diff == 0).mean(), abs=1e-12)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def _analysis() -> Analysis:
    pts = tuple(WindowPoint(250 * (i + 1), 0.001 * i * i, 0.002, i >= 3, "clean" if i < 2 else
                            "drift") for i in range(6))
    rng = np.random.default_rng(0)
    scores = {"ood.knn": {"clean": tuple(rng.normal(size=100)), "drift": (),
                          "recovery": tuple(rng.normal(size=50)),
                          "ood": tuple(rng.normal(3, 1, size=100))}}
    f, t, auc = roc(np.array(scores["ood.knn"]["clean"]), np.array(scores["ood.knn"]["ood"]))
    rocs = (Roc("ood.knn", "ood", tuple(f), tuple(t), auc, "records"),)
    return Analysis({"drift.mmd": pts}, scores, {"ood.knn": 1.5}, rocs, 1000)


def test_report_is_self_contained_with_a_drawn_svg_per_plot() -> None:
    alerts = [_alert("drift", "drift.mmd", 2_600, 2_900), _alert("ood", "ood.knn", 4_700, 4_750, 2)]
    outcomes, fa = I.attribute(_phases(), alerts)
    html = render(ReportInput("t", "conditions", tuple(_phases()), tuple(alerts),
                              tuple(outcomes), tuple(fa), (), _analysis(), {}))
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    charts = re.findall(r'<svg [^>]*data-chart="([^"]+)"(.*?)</svg>', html, flags=re.S)
    assert [c for c, _ in charts] == ["timeline", "drift:drift.mmd", "scores:ood.knn",
                                      "roc:ood.knn"]
    for name, body in charts:
        assert re.search(r"<(polyline|rect) data-series|<line data-series", body), name
    assert "MISSED" not in html and html.count("class=ok>yes<") == 2
    assert html.count("not available in this build") == 3


def test_repwatch_help_does_not_import_numpy() -> None:
    code = ("import sys; from monitor.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('numpy', 'kafka', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LIVE = r'''
import time
from monitor.demo import incidents as I
from monitor.demo.view import View
v = View(["drift.mmd", "ood.knn"], I.available())
assert v.live is not None, "no live view on a terminal"
p = I.Phase("drift", "drift", int(time.time() * 1000))
v.phase(p)
v.alert(I.SeenAlert({"id": "abc", "type": "io.repwatch.alert.drift", "data": {
    "detector": "drift.mmd", "window": {"last_ts_ms": p.start_ms + 5}}}, p.start_ms + 1500))
v.close()
'''


def test_live_view_on_a_terminal_shows_states_and_alert_delays() -> None:
    import os

    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", LIVE], stdout=slave, stderr=slave,
                            env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(30) == 0, out.decode(errors="replace")
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.decode(errors="replace"))
    assert "ALERT" in text and "1.5 s after incident 'drift' started" in text
    assert text.count("not available in this build") >= 3 and "quiet" in text


@pytest.mark.integration
def test_repwatch_report_from_a_running_systems_topics(mon, tmp_path) -> None:
    import dataclasses
    import time

    from monitor.cli import main
    from monitor.config import dump_config

    config = mon.config([
        {"name": "drift.mmd", "params": {"n_permutations": 100, "seed": 0},
         "window": {"kind": "count", "size": 200, "min_records": 50}},
        {"name": "ood.knn", "params": {"k": 5, "fpr": 0.01},
         "window": {"kind": "count", "size": 200}, "min_flagged_fraction": 0.1},
    ])
    t0 = int(time.time() * 1000) - 60_000
    recs = mon.make("digits", 400, seed=3) + mon.make("digits", 400, start=400, shift=1.5)
    mon.produce([dataclasses.replace(r, timestamp_ms=t0 + 10 * i) for i, r in enumerate(recs)])
    worker = mon.worker(config)
    mon.run_until(worker, lambda: worker.processed >= 800)
    worker.stop()
    assert mon.read(mon.alerts_topic, 1)  # the drift alert is on the topic
    path = tmp_path / "repwatch.yaml"
    path.write_text(dump_config(config))
    out = tmp_path / "report.html"
    args = ["report", "--config", str(path), "--since", str(t0), "--until", str(t0 + 8_000),
            "--phase", f"clean={t0}", "--phase", f"drift={t0 + 4_000}", "--out", str(out)]
    assert main(args) == 0
    page = out.read_text()
    charts = re.findall(r'data-chart="([^"]+)"', page)
    assert charts == ["timeline", "drift:drift.mmd", "scores:ood.knn", "roc:drift.mmd",
                      "roc:ood.knn"]
    assert page.count("class=ok>yes<") == 1  # the drift incident, caught
    assert "False alarms in the clean phase: none" in page and "800 records" in page
    # Bad input names the problem: exit 2, nothing written.
    bad = tmp_path / "bad.html"
    assert main([*args[:-1], str(bad), "--phase", "nonsense"]) == 2
    assert main(["report", "--config", str(path), "--since", "yesterday", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_a_per_client_incident_is_caught_only_on_its_own_clients() -> None:
    from monitor.demo.security import pseudonyms
    from serving.core import Pseudonymizer

    phases = [*_phases(), I.Phase("probing", "probing", 5_000, 6_000, 500)]
    key = b"k"
    names = pseudonyms(key, {})  # the benign clients
    names.update(pseudonyms(key, {"p": type("P", (), {"clients": I.PROBE_CLIENTS})()}))
    hashed = Pseudonymizer(key)
    assert {hashed(c): c for c in names.values()} == names  # as the sidecar hashes ids

    def attack(client: str, at: int, i: int) -> I.SeenAlert:
        a = _alert("attack", "adversarial.query", at, at + 100, i)
        a.event["data"]["key"] = hashed(client)
        return a

    benign = [attack("client-3", 5_200, 7)]
    by = {o.incident.key: o for o in I.attribute(phases, benign, None, names)[0]}
    assert not by["probing"].detected  # a benign client alerted during the phase: no catch
    by = {o.incident.key: o for o in I.attribute(phases, benign, None, None)[0]}
    assert by["probing"].detected  # without the names, any attack alert in the phase counts
    alerts = [*benign, attack("client-probe-square", 5_400, 8)]
    by = {o.incident.key: o for o in I.attribute(phases, alerts, None, names)[0]}
    assert by["probing"].alert_id == "attack-8" and by["probing"].client == "client-probe-square"
    assert by["probing"].delay_s == pytest.approx(0.5)


def test_security_traffic_from_the_shipped_assets() -> None:
    from monitor.demo import security as S
    from monitor.demo.assets import load_security
    from monitor.demo.data import load

    data = load(False, 500, security=True)
    a = load_security()
    assert list(data.phases) == ["clean", "drift", "recovery", "ood", "recovery-2",
                                 "adversarial", "probing", "poisoning"]
    adv = data.phases["adversarial"]
    assert adv.attack is not None and adv.clients is not None
    assert [c for c, bad in zip(adv.clients, adv.attack, strict=True) if bad] == \
        [I.ADV_CLIENT] * 250
    assert adv.images is not None and np.array_equal(adv.images[adv.attack], a.pgd)
    probe = data.phases["probing"]
    assert probe.clients is not None and probe.images is not None
    for client, queries in zip(I.PROBE_CLIENTS, (a.probe_hsj, a.probe_square), strict=True):
        mine = np.array([c == client for c in probe.clients])
        assert np.array_equal(probe.images[mine], queries)  # the recorded order, one per row
    fb = data.phases["poisoning"]
    assert fb.feedback is not None and fb.attack is not None and fb.images is not None
    assert int(fb.attack.sum()) == len(a.flip_idx) + len(a.backdoor) and len(fb) >= 2 * 100
    honest = (fb.feedback >= 0) & ~fb.attack
    # honest feedback labels each image once: no repeats for the burst signal to find
    rows = [r.tobytes() for r in fb.images[honest]]
    assert len(set(rows)) == len(rows)
    clean = data.phases["clean"]
    assert clean.feedback is not None and 200 < int((clean.feedback >= 0).sum()) < 500
    assert set(S.DETECTORS) == {"adversarial", "probing", "poisoning"}
