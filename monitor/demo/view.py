"""The live view: phases and their traffic, each detector's state, alerts as they fire.

On a terminal it is a ``rich`` live table redrawn a few times a second; when stdout is not a
terminal (CI, a pipe) or ``--plain`` is given, the same events are plain lines, one each.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from monitor.demo.incidents import INCIDENTS, Phase, SeenAlert, phase_of


class View:
    def __init__(self, detectors: list[str], unavailable: dict[str, str | None],
                 plain: bool = False, clients: dict[str, str] | None = None) -> None:
        self.detectors = detectors
        self.clients = clients or {}  # pseudonym -> the client id the demo sent
        self.unavailable = {k: v for k, v in unavailable.items() if v}
        self.phases: list[Phase] = []
        self.alerts: list[SeenAlert] = []
        self.processed = 0
        self.live: Any = None
        if not plain and sys.stdout.isatty():
            try:
                from rich.live import Live
            except ImportError:  # rich comes with the serving extra; lines without it
                pass
            else:
                self.live = Live(self._render(), refresh_per_second=4, transient=False)
                self.live.start()

    # --- events ------------------------------------------------------------------------------
    def phase(self, phase: Phase) -> None:
        self.phases.append(phase)
        if self.live is None:
            what = f"incident '{phase.incident}'" if phase.incident else "clean traffic"
            print(f"[{phase.name}] starts: {what}", flush=True)
        self._refresh()

    def phase_done(self, phase: Phase) -> None:
        if self.live is None:
            fb = f" and {phase.feedback} feedback labels" if phase.feedback else ""
            print(f"[{phase.name}] {phase.sent} records sent{fb}", flush=True)
        self._refresh()

    def progress(self, processed: int) -> None:
        self.processed = processed
        self._refresh()

    def alert(self, seen: SeenAlert) -> None:
        self.alerts.append(seen)
        if self.live is None:
            print(f"ALERT {seen.kind} by {seen.detector}{self._who(seen)}: {self._when(seen)} "
                  f"(id {seen.event['id']})", flush=True)
        self._refresh()

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None

    # --- rendering ---------------------------------------------------------------------------
    def _who(self, seen: SeenAlert) -> str:
        return "" if seen.key is None else f" on {self.clients.get(seen.key, seen.key)}"

    def _when(self, seen: SeenAlert) -> str:
        p = phase_of(self.phases, seen.event_ms)
        if p is None:
            return "before the first phase"
        incident = p if p.incident else next(
            (q for q in reversed(self.phases[:self.phases.index(p)]) if q.incident), None)
        if incident is None or p.name == "clean":
            return f"during '{p.name}' (false alarm)"
        return (f"{(seen.arrived_ms - incident.start_ms) / 1000:.1f} s after incident "
                f"'{incident.incident}' started")

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        now = int(time.time() * 1000)
        phases = Table(title="repwatch demo: phases", expand=True)
        for col in ("phase", "incident", "records sent", "running for"):
            phases.add_column(col)
        for p in self.phases:
            end = p.end_ms or now
            phases.add_row(p.name, p.incident or "-", str(p.sent),
                           f"{(end - p.start_ms) / 1000:.1f} s")
        for inc in INCIDENTS:
            if inc.key in self.unavailable:
                phases.add_row("-", inc.key, "-", "not available in this build", style="dim")
        dets = Table(title=f"detectors ({self.processed} records processed)", expand=True)
        for col in ("detector", "state", "last alert"):
            dets.add_column(col)
        for d in self.detectors:
            mine = [a for a in self.alerts if a.detector == d]
            dets.add_row(d, "[bold red]ALERT[/]" if mine else "[green]quiet[/]",
                         self._when(mine[-1]) if mine else "-")
        alerts = Table(title="alerts", expand=True)
        for col in ("type", "detector", "when", "id"):
            alerts.add_column(col)
        for a in self.alerts:
            alerts.add_row(a.kind, a.detector + self._who(a), self._when(a),
                           str(a.event["id"])[:16])
        return Group(phases, dets, alerts)
