"""After the phases: the verdict per incident, the HTML report, the Prometheus/Alertmanager view.

:func:`write_report` is shared with ``repwatch report`` (a running system's topics).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from monitor.demo import incidents as I
from monitor.demo.stack import promql, wait


def summarise(outcomes: list[I.Outcome], false_alarms: list[I.SeenAlert],
              alerts: list[I.SeenAlert], problems: list[str]) -> None:
    print("\nincidents:")
    for o in outcomes:
        if not o.available:
            print(f"  {o.incident.title}: {o.reason}")
        elif o.start_ms is None:
            print(f"  {o.incident.title}: not run")
        elif o.detected:
            who = f", client {o.client}" if o.client else ""
            print(f"  {o.incident.title}: DETECTED by {o.detector} {o.delay_s:.1f} s after it "
                  f"started (alert {o.alert_id}{who}, evidence {', '.join(o.evidence[:3])}, "
                  "...)")
        else:
            print(f"  {o.incident.title}: MISSED")
    print(f"clean phase: {len(false_alarms)} false alarm(s)")
    print(f"alerts: {[(a.kind, a.detector) for a in alerts]}")
    for p in problems:
        print(f"PROBLEM: {p}")


def write_report(path: str | Path, model: Any, ref: Any, phases: list[I.Phase],
                 alerts: list[I.SeenAlert], window: Any, source: str,
                 reasons: dict[str, str | None] | None = None,
                 clients: dict[str, str] | None = None) -> Path:
    """Score ``window`` (:class:`monitor.demo.topics.RecordWindow`) and write the report
    (``reasons``, ``clients``: as for :func:`incidents.attribute`)."""
    from monitor.demo.analysis import analyse
    from monitor.demo.report import ReportInput, write
    from monitor.version import version

    outcomes, false_alarms = I.attribute(phases, alerts, reasons, clients)
    _, problems = I.verdict(outcomes, false_alarms, {p.incident for p in phases if p.incident})
    sizes = {d.name: int(d.window.size) for d in model.detectors if d.window is not None}
    sizes.update({d.name: int(d.params["window_size"]) for d in model.detectors
                  if d.window is None and "window_size" in d.params})
    analysis = analyse(ref, sizes, phases, window)
    path = Path(path)
    links: dict[str, str] = {}  # alert id -> a page linked from its row (none in this build)
    conditions = (f"repwatch {version()} on {platform.node()} ({platform.machine()}, "
                  f"Python {platform.python_version()}); {source}; detectors "
                  + "; ".join(f"{d.name} {json.dumps(d.params)} window "
                              f"{d.window.size if d.window else 'default'}"
                              for d in model.detectors)
                  + f"; {window.undecodable} undecodable record(s) skipped")
    out = write(ReportInput(
        title=f"repwatch report: {model.name}", conditions=conditions, phases=tuple(phases),
        alerts=tuple(alerts), outcomes=tuple(outcomes), false_alarms=tuple(false_alarms),
        problems=tuple(problems), analysis=analysis, links=links), path)
    return out


def report(path: str, config: Any, data: Any, phases: list[I.Phase],
           alerts: list[I.SeenAlert], reasons: dict[str, str | None] | None = None,
           clients: dict[str, str] | None = None) -> Path:
    """The demo's report, from the records the monitor consumed (and the worker's reference)."""
    from monitor.demo.topics import read_records
    from monitor.reference import load_reference

    model = config.models[0]
    window = read_records(config.kafka, config.topics.records, model.name,
                          since_ms=phases[0].start_ms if phases else None)
    ref = load_reference(model, Path(model.reference))
    out = write_report(path, model, ref, phases, alerts, window, data.description, reasons,
                       clients)
    print(f"report: {out.resolve()}")
    return out


def platform_checks(prom_url: str, receiver: Any, processed: int) -> None:
    """What Prometheus and Alertmanager saw of the same run (once it scraped every record)."""
    queries = ['repwatch_drift_detected{model="digits"}',
               'sum by (model) (repwatch_records_processed_total)',
               'repwatch_ood_records_flagged_total{model="digits"}',
               'sum by (model) (repwatch_serving_records_sent_total)']
    wait(lambda: bool(promql(prom_url, f"sum(repwatch_records_processed_total) >= {processed}")),
         15)
    print("\nPrometheus:")
    for q in queries:
        answer = [(r["metric"].get("detector", r["metric"].get("model")), r["value"][1])
                  for r in promql(prom_url, q)]
        print(f"  {q} -> {answer}")
    posts = receiver.wait("/alertmanager", 20)
    names = sorted({a["labels"]["alertname"] for _, b in posts for a in json.loads(b)["alerts"]})
    print(f"Alertmanager notified: {names or 'nothing yet'}")
