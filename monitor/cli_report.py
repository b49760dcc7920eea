"""``repwatch report``: the demo's HTML report from a running system.

Reads the alerts topic and a window of one model's records, scores the records with that
model's reference detectors, and writes the same self-contained page as ``repwatch demo``:
alert timeline, drift statistic per window with its threshold, score histograms and, when
``--phase`` marks a clean stretch and incidents, each detector's ROC and a table per incident.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from typing import Any

_RELATIVE = re.compile(r"^-(\d+)([smhd])$")


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch ms from ISO 8601 (``2026-12-02T14:00:00Z``), epoch ms, or ``-30m`` (ago)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now_ms - int(m.group(1)) * unit * 1000
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is not ISO 8601 (2026-12-02T14:00:00Z), epoch "
                         "milliseconds or a relative '-30m'") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone; add Z or +00:00")
    return int(dt.timestamp() * 1000)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write the HTML report (as repwatch demo does) from a running system's alerts "
        "topic and a window of records",
        description="Read the alerts topic and a window of one model's records from the "
        "configured Kafka, score the records with the model's reference detectors and write a "
        "self-contained HTML report. --phase NAME=TIME marks phases (NAME clean, or an incident: "
        "drift, ood, adversarial, probing, poisoning) for the incident table and the ROC plots.",
    )
    p.add_argument("--config", required=True, help="repwatch YAML configuration (monitor's)")
    p.add_argument("--model", default=None, help="model name (default: the only configured one)")
    p.add_argument("--since", default="-1h",
                   help="window start: ISO 8601, epoch ms or relative like -30m")
    p.add_argument("--until", default=None, help="window end (default: now)")
    p.add_argument("--phase", action="append", default=[], metavar="NAME=TIME",
                   help="a phase starting at TIME (repeat; each ends where the next starts)")
    p.add_argument("--max-records", type=int, default=200_000,
                   help="read at most this many records")
    p.add_argument("--out", default="repwatch-report.html", help="where to write the report")
    p.set_defaults(func=run)


def _phases(specs: list[str], since: int, until: int) -> list[Any]:
    from monitor.demo.incidents import INCIDENTS, Phase

    keys = {i.key for i in INCIDENTS}
    parsed = []
    for spec in specs:
        name, sep, when = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--phase {spec!r}: expected NAME=TIME, e.g. clean=-30m")
        parsed.append((parse_time(when), name))
    parsed.sort()
    if not parsed:
        return [Phase("observed", None, since, until)]
    out = []
    for i, (start, name) in enumerate(parsed):
        end = parsed[i + 1][0] if i + 1 < len(parsed) else until
        out.append(Phase(name, name if name in keys else None, start, end))
    return out


def run(args: argparse.Namespace) -> int:
    from monitor.config import ConfigError, load_config
    from monitor.demo import incidents as I
    from monitor.demo.finish import write_report
    from monitor.demo.topics import read_alerts, read_records
    from monitor.reference import load_reference

    try:
        config = load_config(args.config)
        names = [m.name for m in config.models]
        if args.model is None and len(names) != 1:
            raise ValueError(f"the configuration has models {names}; choose one with --model")
        model = config.model(args.model or names[0])
        if model.reference is None:
            raise ValueError(f"model {model.name!r} has no reference in {args.config}")
        until = parse_time(args.until) if args.until else int(time.time() * 1000)
        since = parse_time(args.since)
        if since >= until:
            raise ValueError(f"--since ({since}) must be before --until ({until})")
        if args.max_records <= 0:
            raise ValueError("--max-records must be positive")
        phases = _phases(args.phase, since, until)
        ref = load_reference(model, model.reference)
    except (ConfigError, ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    events, bad = read_alerts(config.kafka, config.topics.alerts, since, until)
    alerts = [I.SeenAlert(e, ts) for e, ts in events if e.get("subject") == model.name]
    window = read_records(config.kafka, config.topics.records, model.name, since, until,
                          args.max_records)
    if not len(window.ids):
        print(f"error: no records of model {model.name!r} on {config.topics.records} between "
              f"{since} and {until}; widen --since/--until", file=sys.stderr)
        return 2
    out = write_report(args.out, model, ref, phases, alerts, window,
                       f"records from {config.topics.records}, alerts from "
                       f"{config.topics.alerts} ({bad} undecodable skipped)")
    print(f"{len(window.ids)} records, {len(alerts)} alerts -> {out}")
    return 0
