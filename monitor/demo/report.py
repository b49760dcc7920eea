"""``repwatch-demo-report.html``: one self-contained page (inline SVG, inline CSS, no scripts).

Sections: the verdict, a table per incident (detected, delay, evidence ids, the alert), false
alarms in the clean phase, the alert timeline, each drift detector's statistic per window with
its threshold, OOD score histograms clean vs incident, and each detector's ROC per incident.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

from monitor.demo import svg
from monitor.demo.analysis import Analysis
from monitor.demo.incidents import Outcome, Phase, SeenAlert

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.ok{color:#2a7a2a;font-weight:bold}
.bad{color:#b22;font-weight:bold}.na{color:#888}code{font-size:.85em}
figure{display:inline-block;margin:.5em}pre{background:#f7f7f7;padding:.6em;overflow:auto;
max-height:20em;font-size:.8em}"""


@dataclass(frozen=True)
class ReportInput:
    title: str
    conditions: str  # how the data were made, machine, versions
    phases: tuple[Phase, ...]
    alerts: tuple[SeenAlert, ...]
    outcomes: tuple[Outcome, ...]
    false_alarms: tuple[SeenAlert, ...]
    problems: tuple[str, ...]
    analysis: Analysis
    links: dict[str, str]  # alert id -> extra page (e.g. the Evidently drift report)


def _incident_table(r: ReportInput) -> str:
    rows = []
    for o in r.outcomes:
        if not o.available:
            rows.append(f"<tr><td>{escape(o.incident.title)}</td><td class=na colspan=5>"
                        f"{escape(o.reason or '')}</td></tr>")
            continue
        if o.start_ms is None:
            state = "<td class=na>not run</td>"
        else:
            state = "<td class=ok>yes</td>" if o.detected else "<td class=bad>MISSED</td>"
        delay = f"{o.delay_s:.1f} s" if o.delay_s is not None else "-"
        link = r.links.get(o.alert_id or "")
        alert = escape(o.alert_id or "-") + (
            f' (<a href="{escape(link)}">drifted window report</a>)' if link else "")
        ev = ", ".join(o.evidence[:10]) or "-"
        rows.append(f"<tr><td>{escape(o.incident.title)}<br><small>{escape(o.incident.what)}"
                    f"</small></td>{state}<td>{delay}</td><td>{escape(o.detector or '-')}"
                    + (f"<br><small>on {escape(o.client)}</small>" if o.client else "") + "</td>"
                    f"<td><code>{alert}</code></td><td><code>{escape(ev)}</code></td></tr>")
    return ("<table><tr><th>incident</th><th>detected</th><th>delay (incident start to alert)"
            "</th><th>detector</th><th>alert id</th><th>evidence record ids</th></tr>"
            + "".join(rows) + "</table>")


def _charts(r: ReportInput) -> list[str]:
    a = r.analysis
    t0 = min((p.start_ms for p in r.phases), default=0)
    spans = [((p.start_ms - t0) / 1000, ((p.end_ms or p.start_ms) - t0) / 1000, p.name)
             for p in r.phases]
    kinds = {"drift": "#1f77b4", "ood": "#ff7f0e", "adversarial": "#d62728",
             "attack": "#9467bd", "poisoning": "#8c564b"}
    events = [((al.arrived_ms - t0) / 1000, f"{al.kind} ({al.detector})",
               kinds.get(al.kind, "#000")) for al in r.alerts]
    out = [svg.timeline("timeline", "alert timeline (arrival at the webhook)", spans, events)]
    for det, pts in a.drift.items():
        bounds: list[tuple[float, float, str]] = []
        for w in pts:  # phase bands, in records
            if bounds and bounds[-1][2] == w.phase:
                bounds[-1] = (bounds[-1][0], float(w.end), w.phase)
            else:
                bounds.append((float(bounds[-1][1]) if bounds else 0.0, float(w.end), w.phase))
        out.append(svg.lines(
            f"drift:{det}", f"{det}: statistic per window and its threshold", "records",
            "statistic", {"statistic": [(w.end, w.statistic) for w in pts],
                          "threshold": [(w.end, w.threshold) for w in pts]}, bands=bounds,
            marks=[(w.end, "drift") for w in pts if w.detected][:1]))
    for det, by_phase in a.scores.items():
        clean = by_phase.get("clean", ())
        groups: dict[str, Sequence[float]] = {f"clean ({len(clean)})": clean}
        for p in r.phases:
            if p.incident and by_phase.get(p.name):
                groups[f"{p.name} ({len(by_phase[p.name])})"] = by_phase[p.name]
        out.append(svg.histograms(f"scores:{det}", f"{det}: score, clean vs incident",
                                  "score (higher: more anomalous)", groups,
                                  a.score_threshold.get(det)))
    for det in sorted({c.detector for c in a.rocs}):
        curves = [c for c in a.rocs if c.detector == det]
        out.append(svg.lines(
            f"roc:{det}", f"{det}: ROC, clean vs each incident ({curves[0].units})",
            "false-positive rate", "true-positive rate",
            {f"{c.incident} (AUC {c.auc:.3f})": list(zip(c.fpr, c.tpr, strict=True))
             for c in curves}, diagonal=True))
    return out


def render(r: ReportInput) -> str:
    verdict = ('<p class=ok>Every incident that ran was detected and the clean phase raised '
               'nothing.</p>' if not r.problems else
               "<p class=bad>" + "<br>".join(escape(p) for p in r.problems) + "</p>")
    fa = ("none" if not r.false_alarms else
          ", ".join(f"{escape(a.kind)} by {escape(a.detector)} ({escape(str(a.event['id']))})"
                    for a in r.false_alarms))
    phases = "".join(
        f"<tr><td>{escape(p.name)}</td><td>{escape(p.incident or 'clean')}</td><td>{p.sent}"
        + (f" + {p.feedback} feedback" if p.feedback else "") + "</td>"
        f"<td>{time.strftime('%H:%M:%S', time.gmtime(p.start_ms / 1000))}</td></tr>"
        for p in r.phases)
    events = json.dumps([a.event for a in r.alerts], indent=1)
    figures = "".join(f"<figure>{c}</figure>" for c in _charts(r))
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(r.title)}"
        f"</title><style>{CSS}</style></head><body><h1>{escape(r.title)}</h1>{verdict}"
        f"<h2>Incidents</h2>{_incident_table(r)}<p>False alarms in the clean phase: {fa}</p>"
        f"<h2>Phases</h2><table><tr><th>phase</th><th>traffic</th><th>records</th>"
        f"<th>start (UTC)</th></tr>{phases}</table><h2>Plots</h2>{figures}"
        f"<h2>Alerts ({len(r.alerts)})</h2><pre>{escape(events)}</pre>"
        f"<h2>Conditions</h2><p>{escape(r.conditions)}</p><p>Statistics, scores and ROC are "
        f"recomputed from the {r.analysis.records} records the monitor consumed, with detectors "
        "fitted on the same reference and configuration as the worker's.</p></body></html>"
    )


def write(r: ReportInput, path: Path) -> Path:
    path = Path(path)
    path.write_text(render(r), encoding="utf-8")
    return path
