"""The numbers behind the report, recomputed from the records the monitor consumed.

The records (from ``repwatch.records``) are split by phase on their event time and scored with
detectors fitted on the same reference and configuration as the worker's: the drift
statistic of each tumbling window (what the worker tested), per-record OOD scores, and each
detector's ROC of the clean phase against every incident (per-record scores for record
detectors, sliding windows for drift detectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.demo.incidents import Phase, phase_of


@dataclass(frozen=True)
class WindowPoint:
    end: int  # records up to the window's end, in stream order
    statistic: float
    threshold: float
    detected: bool
    phase: str


@dataclass(frozen=True)
class Roc:
    detector: str
    incident: str
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    auc: float
    units: str  # "records" | "windows of N"


@dataclass(frozen=True)
class Analysis:
    drift: dict[str, tuple[WindowPoint, ...]]  # detector -> its windows
    scores: dict[str, dict[str, tuple[float, ...]]]  # record detector -> phase -> scores
    score_threshold: dict[str, float]
    rocs: tuple[Roc, ...]
    records: int


def roc(neg: NDArray[Any], pos: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                                      float]:
    """ROC points (fpr, tpr), from the strictest threshold down, and the area under it."""
    neg, pos = np.asarray(neg, float), np.asarray(pos, float)
    if not len(neg) or not len(pos):
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    fpr = np.concatenate([[0.0], (neg[None, :] >= thr[:, None]).mean(axis=1)])
    tpr = np.concatenate([[0.0], (pos[None, :] >= thr[:, None]).mean(axis=1)])
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def _roc(detector: str, incident: str, neg: NDArray[Any], pos: NDArray[Any], units: str,
         k: int = 200) -> Roc:
    """The ROC of ``neg`` against ``pos``, thinned to at most ``k`` points for the plot."""
    fpr, tpr, auc = roc(neg, pos)
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(k, len(fpr))).astype(int))
    return Roc(detector, incident, tuple(float(v) for v in fpr[idx]),
               tuple(float(v) for v in tpr[idx]), auc, units)


def analyse(reference: Any, windows: dict[str, int], phases: list[Phase],
            X: NDArray[Any], ts_ms: NDArray[np.int64]) -> Analysis:
    """``reference`` a :class:`monitor.reference.ReferenceSet`; ``windows`` detector -> size.

    ``X``/``ts_ms`` are the consumed records in stream order.
    """
    names = np.array([(p.name if (p := phase_of(phases, int(t))) else "") for t in ts_ms])
    incidents = [p for p in phases if p.incident]
    drift: dict[str, tuple[WindowPoint, ...]] = {}
    scores: dict[str, dict[str, tuple[float, ...]]] = {}
    thresholds: dict[str, float] = {}
    rocs: list[Roc] = []
    for det_id, det in reference.detectors.items():
        family = det_id.split(".", 1)[0]
        if family == "drift":
            size = windows.get(det_id, 250)
            pts = []
            for end in range(size, len(X) + 1, size):
                res = det.predict(X[end - size:end])
                pts.append(WindowPoint(end, float(res.statistic), float(res.threshold),
                                       bool(res.is_drift), str(names[end - 1])))
            drift[det_id] = tuple(pts)
            step = max(size // 5, 1)
            starts = range(0, len(X) - size + 1, step)
            stat = {s: float(np.ravel(det.score(X[s:s + size]))[0]) for s in starts}
            pure = {s: names[s] for s in starts if len(set(names[s:s + size])) == 1}
            neg = np.array([stat[s] for s, n in pure.items() if n == "clean"])
            for inc in incidents:
                pos = np.array([stat[s] for s, n in pure.items() if n == inc.name])
                rocs.append(_roc(det_id, inc.name, neg, pos, f"windows of {size}"))
        elif family in ("ood", "adversarial"):
            s = np.asarray(det.score(X), dtype=float)
            scores[det_id] = {p.name: tuple(float(v) for v in s[names == p.name]) for p in phases}
            thresholds[det_id] = float(getattr(det, "threshold_", np.nan))
            for inc in incidents:
                rocs.append(_roc(det_id, inc.name, s[names == "clean"], s[names == inc.name],
                                 "records"))
    return Analysis(drift, scores, thresholds, tuple(rocs), len(X))
