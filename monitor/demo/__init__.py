"""``repwatch demo``: the platform end to end on a local stack, with scripted incidents.

Starts Tansu, Prometheus (with the shipped alert rules) and Alertmanager on loopback, the serving
sidecar (``repwatch serve``) on the bundled digits classifier and a monitor worker in-process.
After a clean phase it scripts incidents through the sidecar's HTTP API, each from a known
time (:mod:`monitor.demo.incidents`), shows traffic, detector states and alerts as they fire
(:mod:`monitor.demo.view`), and writes ``repwatch-demo-report.html`` (:mod:`monitor.demo.report`)
from the records and alerts topics. It exits non-zero when an incident is missed or the clean
phase alarms. Everything it started is stopped on exit, Ctrl-C included.

This module only registers the command: numpy, Kafka and the rest load when it runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo: scripted incidents through the sidecar -> Kafka -> "
        "monitor -> alerts, Prometheus, Alertmanager, and an HTML report (loopback only)",
        description="Start a broker, Prometheus and Alertmanager on loopback (or use --kafka), "
        "send a clean phase and then scripted incidents (gradual drift, OOD inputs, and where "
        "this build's monitor has their stages an adversarial client, probing clients and "
        "poisoned feedback) through the serving sidecar, show the detectors and alerts live, "
        "and write an HTML report. Exits 1 when an incident is missed or the clean phase raises "
        "an alert.",
    )
    p.add_argument("--records", type=int, default=750,
                   help="records per phase (at least 250: one detector window)")
    p.add_argument("--synthetic", action="store_true",
                   help="send synthetic embeddings straight to Kafka instead of images through "
                   "the bundled digits models")
    p.add_argument("--rate", type=float, default=250.0,
                   help="records per second sent through the sidecar (paces each phase)")
    p.add_argument("--kafka", metavar="HOST:PORT", default=None,
                   help="use this existing broker, with topics and a consumer group of this run "
                   "only (default: start the bundled Tansu broker)")
    p.add_argument("--report", default="repwatch-demo-report.html",
                   help="where to write the HTML report")
    p.add_argument("--plain", action="store_true",
                   help="plain log lines even on a terminal (the default when stdout is not one)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from monitor.demo.scenario import run

    return run(args)


def __getattr__(name: str) -> Any:
    # tests/dashboards feeds its live Prometheus with the demo's embeddings.
    if name == "_embeddings":
        from monitor.demo.data import _embeddings

        return _embeddings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
