"""``repwatch demo``: the monitor end to end on a local stack, in one command.

The driver lives in :mod:`monitor.demo_monitor` (local stack, in-process worker, clean then
drifted phase, alert CloudEvent, PromQL, Alertmanager); this module keeps the name that
``monitor/cli.py`` registers, so the demo can grow (e.g. the serving sidecar in front) without
touching the CLI.
"""

from __future__ import annotations

from monitor.demo_monitor import register, run

__all__ = ["register", "run"]
