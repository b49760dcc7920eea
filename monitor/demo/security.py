"""The security incidents: what the sidecar and the monitor need for them, whether this build
runs them (:func:`plan`), and their traffic from the shipped assets (:func:`phases`).

An incident runs only when this build's monitor has a stage for its detector: :func:`plan`
validates the configuration the demo would use, fits the reference and builds the pipeline the
worker will build, and keeps an incident only if its detector became a stage. Otherwise the
incident is listed with the reason ("not available in this build"), never faked.

Traffic, all through the sidecar's HTTP API, pixels on its 0..16 scale:

* adversarial client: the shipped PGD inputs from one client, interleaved with clean traffic
  from the benign clients;
* probing client: the recorded HopSkipJump query sequence from one client and the SquareAttack
  sequence from another, one query per request, interleaved with benign traffic;
* poisoned feedback: images sent for inference, then ``POST /v1/feedback`` with label flips and
  backdoored images labelled as the target class, beside honest feedback. The clean and
  recovery phases send honest feedback (true labels) for their records, so the poisoning stage
  has clean windows that must stay quiet.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from monitor.demo.incidents import ADV_CLIENT, POISON_CLIENT, PROBE_CLIENTS

if TYPE_CHECKING:
    from monitor.demo.data import PhaseInputs

# Feedback records per poisoning test: a phase's honest feedback (each image labelled once,
# ~240 of 500 rows) closes two windows, so the clean phase's windows must stay quiet.
POISON_WINDOW = 100
#: What the sidecar streams for the security stages (model config fields).
MODEL_EXTRAS: dict[str, Any] = {"penultimate_output": "penultimate",
                                "input_hashes": {"value_range": [0, 16]}}
#: incident -> the monitor detector that catches it
DETECTORS: dict[str, dict[str, Any]] = {
    "adversarial": {"name": "adversarial.combined", "params": {"fpr": 0.01},
                    "window": {"kind": "count", "size": 100, "min_records": 20},
                    "min_flagged_fraction": 0.1},
    "probing": {"name": "adversarial.query", "key": "client",
                "params": {"max_clients": 200, "index_size": 1 << 14}},
    "poisoning": {"name": "poisoning.feedback", "records": "feedback",
                  "params": {"window_size": POISON_WINDOW, "fpr": 0.03}},
}


@dataclass(frozen=True)
class Plan:
    """What the run uses: the model's extra sidecar fields, every detector, the reference."""

    model_extras: dict[str, Any]
    detectors: list[dict[str, Any]]
    reference: Path  # a saved reference directory (fitted once, loaded by worker and report)
    reasons: dict[str, str | None] = field(default_factory=dict)  # incident -> None | why not

    def runs(self, incident: str) -> bool:
        return incident in self.reasons and self.reasons[incident] is None


def _unavailable(detector: str, why: str) -> str:
    return (f"not available in this build: the monitor has no {detector} stage fed with what "
            f"this incident needs ({why}), so the demo does not script it")


def plan(base_model: dict[str, Any], base_detectors: list[dict[str, Any]], X: NDArray[Any],
         y: NDArray[Any], ref_rows: NDArray[Any], work: Path) -> Plan:
    """Fit the reference of every detector this build can run, save it, and say which
    security incidents run (``X``, ``y``: the digits pixels and labels; ``ref_rows``: the
    trusted rows, train + validation of digits 0-7)."""
    from pydantic import ValidationError

    from monitor.config import Config
    from monitor.pipeline import check_inputs

    reasons: dict[str, str | None] = {}
    chosen: list[str] = []
    for incident, det in DETECTORS.items():
        doc = {"models": [{**base_model, **MODEL_EXTRAS, "reference": str(work / "ref.npz"),
                           "detectors": [*base_detectors, det]}]}
        try:
            errors = check_inputs(Config.model_validate(doc))
        except ValidationError as exc:
            errors = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        if errors:
            reasons[incident] = _unavailable(det["name"], errors[0][:200])
        else:
            chosen.append(incident)
    while True:
        extras = MODEL_EXTRAS if chosen else {}
        detectors = [*base_detectors, *(copy.deepcopy(DETECTORS[k]) for k in chosen)]
        ref, stages = _fit({**base_model, **extras, "detectors": detectors}, X[ref_rows],
                           y[ref_rows], work)
        missing = [k for k in chosen if DETECTORS[k]["name"] not in stages]
        for k in missing:  # configured and fitted, but the pipeline runs no stage for it
            reasons[k] = _unavailable(DETECTORS[k]["name"], "the pipeline builds no stage for it")
        reasons.update({k: None for k in chosen if k not in missing})
        if not missing:
            from monitor.reference import save_reference

            return Plan(extras, detectors, save_reference(ref, work / "reference"), reasons)
        chosen = [k for k in chosen if k not in missing]


def _fit(model_doc: dict[str, Any], X: NDArray[Any], y: NDArray[Any],
         work: Path) -> tuple[Any, set[str]]:
    """The fitted reference of ``model_doc`` and the ids of the stages its pipeline builds."""
    from monitor.config import Config
    from monitor.pipeline import Pipeline
    from monitor.reference import load_reference

    path = work / "ref.npz"
    model = Config.model_validate({"models": [{**model_doc, "reference": str(path)}]}).models[0]
    np.savez(path, **reference_arrays(model, X, y))  # type: ignore[arg-type]
    ref = load_reference(model, path)
    return ref, {s.id for s in Pipeline(model, "1", ref).stages}


def reference_arrays(model: Any, X: NDArray[Any], y: NDArray[Any]) -> dict[str, NDArray[Any]]:
    """The reference ``.npz`` arrays: the sidecar's own builder when this build has it (labels,
    predictions, logits, penultimate features, input hashes), else the SSL embeddings alone."""
    try:
        from serving.reference import reference_arrays as build
    except ImportError:
        from monitor.demo.data import embed

        return {"X": embed(X)}
    return dict(build(model, X, y))


# --- traffic ---------------------------------------------------------------------------------
class _Rows:
    """Rows of one phase in send order, with their client, feedback label and truth."""

    def __init__(self) -> None:
        self.rows: list[NDArray[Any]] = []
        self.clients: list[str] = []
        self.labels: list[int] = []
        self.attack: list[bool] = []

    def add(self, x: NDArray[Any], client: str, attack: bool, label: int = -1) -> None:
        self.rows.append(x)
        self.clients.append(client)
        self.attack.append(attack)
        self.labels.append(label)

    def benign(self, x: NDArray[Any], label: int = -1) -> None:
        self.add(x, f"client-{len(self.rows) % 7}", False, label)

    def phase(self, name: str) -> PhaseInputs:
        from monitor.demo.data import PhaseInputs

        labels = np.asarray(self.labels, np.int64)
        return PhaseInputs(name, np.asarray(self.rows, np.float32), None, tuple(self.clients),
                           labels if (labels >= 0).any() else None,
                           np.asarray(self.attack, dtype=bool))


def phases(clean: NDArray[np.float32], clean_labels: NDArray[np.int64], X: NDArray[Any],
           n: int) -> dict[str, PhaseInputs]:
    """The three phases, about ``n`` rows each (``clean``: a pool of clean test images and
    their labels; ``X``: the digits pixels)."""
    from monitor.demo.assets import load_security

    a = load_security()
    pool = iter(range(10**9))

    def clean_row() -> tuple[NDArray[Any], int]:
        """The next clean image, with its feedback label (-1 where it repeats an image)."""
        i = next(pool) % len(clean)
        return clean[i], int(clean_labels[i])

    # adversarial: the PGD inputs from one client on every other row
    adv = _Rows()
    for i in range(n):
        if i % 2 and i // 2 < len(a.pgd):
            adv.add(a.pgd[i // 2], ADV_CLIENT, True)
        else:
            adv.benign(clean_row()[0])
    # probing: the two query sequences, one query per request, between benign rows
    probe = _Rows()
    for i in range(max(len(a.probe_hsj), len(a.probe_square), n // 2)):
        for client, queries in zip(PROBE_CLIENTS, (a.probe_hsj, a.probe_square), strict=True):
            if i < len(queries):
                probe.add(queries[i], client, True)
        if i < n // 2:
            probe.benign(clean_row()[0])
    # poisoning: label flips and backdoors from one client, honest feedback from the others
    poison_x = np.concatenate([X[a.flip_idx], a.backdoor])
    poison_y = np.concatenate([a.flip_label, a.backdoor_label])
    m = max(n, 2 * POISON_WINDOW)  # a whole feedback window of it, wherever windows fall
    fb = _Rows()
    for slot in np.random.default_rng(3).permutation(m):  # where each poisoned row goes
        if slot < len(poison_x):
            fb.add(poison_x[slot], POISON_CLIENT, True, int(poison_y[slot]))
        else:
            fb.benign(*clean_row())
    return {"adversarial": adv.phase("adversarial"), "probing": probe.phase("probing"),
            "poisoning": fb.phase("poisoning")}


def pseudonyms(key: bytes, phases: Any) -> dict[str, str]:
    """Client pseudonym -> the id the demo sent, as the sidecar hashes ids (HMAC-SHA256 with
    its ``client_id_key``, first 16 bytes), for every client of ``phases``."""
    import hmac

    names = {f"client-{i}" for i in range(7)}
    for p in phases.values():
        names.update(p.clients or ())
    return {hmac.digest(key, c.encode(), "sha256")[:16].hex(): c for c in sorted(names)}
