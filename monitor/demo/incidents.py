"""The demo's incidents, when each started, and which alert (if any) caught it.

Phases run in order: ``clean`` (nothing may alarm), then each incident, with a ``recovery``
stretch of clean traffic after the drift so that the episodes it opened close before the next
incident. An alert belongs to the phase that holds the last record of its window (its event
time); an alert in a recovery phase is a late catch of the incident before it. The delay of a
catch is the alert's arrival (webhook) minus the incident's first request.

Incidents whose monitor stage is not in this build are listed, never faked: their detector
families are probed (:func:`available`) and the reason is shown in the view and the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Incident:
    key: str
    title: str
    alert_type: str  # CloudEvent type suffix: io.repwatch.alert.<alert_type>
    detector: str  # the monitor detector meant to catch it
    what: str
    clients: tuple[str, ...] = ()  # for per-client alerts: the attacking clients' ids


ADV_CLIENT = "client-adversarial"
PROBE_CLIENTS = ("client-probe-hsj", "client-probe-square")
POISON_CLIENT = "client-feedback-poisoner"


INCIDENTS = (
    Incident("drift", "gradual corruption drift", "drift", "drift.mmd",
             "held-out digits 0-7 with pixel noise ramping from 0 to s.d. 5"),
    Incident("ood", "out-of-distribution inputs", "ood", "ood.knn",
             "60% held-out digits 8-9 and uniform-noise images, 40% clean"),
    Incident("adversarial", "adversarial client", "adversarial", "adversarial.combined",
             "PGD-Linf inputs (eps 0.2, made at model-build time with ART) from one client, "
             "between clean traffic"),
    Incident("probing", "probing client", "attack", "adversarial.query",
             "recorded black-box query sequences (ART HopSkipJump and SquareAttack on the ONNX "
             "model), one client each, between clean traffic", PROBE_CLIENTS),
    Incident("poisoning", "poisoned feedback", "poisoning", "poisoning.feedback",
             "POST /v1/feedback with label flips and ART's pixel-pattern backdoor (labelled 0) "
             "from one client, beside honest feedback"),
)
# The scripted phases, in order, and the incident each one is (None: clean traffic). The
# security phases follow a second recovery, and run only where this build has their stage.
BASE_PHASES: tuple[tuple[str, str | None], ...] = (
    ("clean", None), ("drift", "drift"), ("recovery", None), ("ood", "ood"),
)
SECURITY_PHASES: tuple[tuple[str, str | None], ...] = (
    ("adversarial", "adversarial"), ("probing", "probing"), ("poisoning", "poisoning"),
)


def phases_for(security: set[str]) -> tuple[tuple[str, str | None], ...]:
    """The phases to play when the security incidents in ``security`` can run."""
    sec = tuple(p for p in SECURITY_PHASES if p[1] in security)
    return BASE_PHASES + ((("recovery-2", None), *sec) if sec else ())


def available(reasons: dict[str, str | None] | None = None,
              ran: set[str] | None = None) -> dict[str, str | None]:
    """Incident key -> None when it can run (or ran), else the reason it cannot.

    ``reasons``: the demo's plan for the security incidents (:func:`monitor.demo.security.plan`);
    ``ran``: incidents that have a phase (``repwatch report``'s ``--phase``).
    """
    out: dict[str, str | None] = {}
    for inc in INCIDENTS:
        if ran is not None and inc.key in ran:
            out[inc.key] = None
        elif reasons is not None and inc.key in reasons:
            out[inc.key] = reasons[inc.key]
        elif inc.key in ("drift", "ood"):
            out[inc.key] = None if ran is None else "no phase marked for it"
        else:
            out[inc.key] = (
                f"not available in this build: the monitor has no {inc.detector} stage fed "
                "with what this incident needs yet, so the demo does not script it")
    return out


@dataclass
class Phase:
    name: str
    incident: str | None
    start_ms: int
    end_ms: int | None = None
    sent: int = 0
    feedback: int = 0  # labels POSTed to /v1/feedback for this phase's records
    record_ids: list[str] = field(default_factory=list)
    attack_ids: list[str] = field(default_factory=list)  # the incident's own rows (ROC positives)


@dataclass(frozen=True)
class SeenAlert:
    """An alert CloudEvent and when the demo received it."""

    event: dict[str, Any]
    arrived_ms: int

    @property
    def kind(self) -> str:
        return str(self.event["type"]).rsplit(".", 1)[-1]

    @property
    def detector(self) -> str:
        return str(self.event["data"]["detector"])

    @property
    def key(self) -> str | None:
        """The client pseudonym of a per-client alert."""
        key = self.event["data"].get("key")
        return None if key is None else str(key)

    @property
    def event_ms(self) -> int | None:
        last = self.event["data"].get("window", {}).get("last_ts_ms")
        return None if last is None else int(last)


@dataclass(frozen=True)
class Outcome:
    """What happened to one incident (a row of the report's table)."""

    incident: Incident
    available: bool
    reason: str | None
    start_ms: int | None
    detected: bool
    delay_s: float | None
    alert_id: str | None
    detector: str | None
    evidence: tuple[str, ...]
    client: str | None = None  # the alerted client (per-client alerts, when it is known)


def phase_of(phases: list[Phase], t_ms: int | None) -> Phase | None:
    """The phase whose time span holds ``t_ms`` (the last phase when it ran past the end)."""
    if t_ms is None or not phases:
        return None
    for p in reversed(phases):
        if t_ms >= p.start_ms:
            return p
    return None


def attribute(phases: list[Phase], alerts: list[SeenAlert],
              reasons: dict[str, str | None] | None = None,
              clients: dict[str, str] | None = None) -> tuple[list[Outcome], list[SeenAlert]]:
    """Outcome per incident, and the clean phase's false alarms (``reasons``: as for
    :func:`available`; by default, the incidents that have a phase are available).

    ``clients`` maps client pseudonyms to the ids the demo sent: a per-client incident is then
    caught only by an alert on one of its own clients (not on a benign one in its phase).
    """
    owner: dict[int, str | None] = {}  # alert index -> incident it belongs to
    last_incident: str | None = None
    false_alarms: list[SeenAlert] = []
    for i, a in enumerate(alerts):
        p = phase_of(phases, a.event_ms)
        if p is None or p.name == "clean":
            false_alarms.append(a)
            continue
        last_incident = p.incident
        if p.incident is None:  # recovery: the incident before it
            names = [q.name for q in phases]
            before = [q for q in phases[:names.index(p.name)] if q.incident]
            last_incident = before[-1].incident if before else None
        owner[i] = last_incident
    reasons = available(reasons, None if reasons is not None else
                        {p.incident for p in phases if p.incident})
    outcomes = []
    for inc in INCIDENTS:
        phase = next((p for p in phases if p.incident == inc.key), None)
        hit = next((a for i, a in enumerate(alerts)
                    if owner.get(i) == inc.key and a.kind == inc.alert_type
                    and _theirs(inc, a, clients)), None)
        outcomes.append(Outcome(
            incident=inc, available=reasons[inc.key] is None, reason=reasons[inc.key],
            start_ms=phase.start_ms if phase else None, detected=hit is not None,
            delay_s=(hit.arrived_ms - phase.start_ms) / 1000 if hit and phase else None,
            alert_id=str(hit.event["id"]) if hit else None,
            detector=hit.detector if hit else None,
            evidence=tuple(hit.event["data"]["evidence"]["record_ids"]) if hit else (),
            client=None if hit is None or hit.key is None else
            (clients or {}).get(hit.key, hit.key),
        ))
    return outcomes, false_alarms


def _theirs(inc: Incident, a: SeenAlert, clients: dict[str, str] | None) -> bool:
    """Whether a per-client alert is on one of the incident's own clients (when known)."""
    if not inc.clients or clients is None:
        return True
    return clients.get(a.key or "") in inc.clients


def verdict(outcomes: list[Outcome], false_alarms: list[SeenAlert],
            ran: set[str] | None = None) -> tuple[bool, list[str]]:
    """(passed, problems): every incident that ran was caught and the clean phase was quiet."""
    problems = [f"missed: {o.incident.title}" for o in outcomes
                if o.available and not o.detected and (ran is None or o.incident.key in ran)]
    problems += [f"false alarm in the clean phase: {a.kind} by {a.detector} ({a.event['id']})"
                 for a in false_alarms]
    return not problems, problems
