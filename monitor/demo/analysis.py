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


def _names(phases: list[Phase], ts_ms: NDArray[np.int64]) -> NDArray[np.str_]:
    return np.array([(p.name if (p := phase_of(phases, int(t))) else "") for t in ts_ms], dtype=str)


def _positives(phases: list[Phase], names: NDArray[Any],
               ids: tuple[str, ...]) -> dict[str, NDArray[np.bool_]]:
    """Per phase, its rows that are the incident: :attr:`Phase.attack_ids` where the phase
    knows them, else every row of the phase."""
    out = {p.name: names == p.name for p in phases}
    for p in phases:
        if p.attack_ids and len(ids) == len(names):
            mine = set(p.attack_ids)
            out[p.name] = out[p.name] & np.array([i in mine for i in ids], dtype=bool)
    return out


def analyse(reference: Any, windows: dict[str, int], phases: list[Phase], window: Any) -> Analysis:
    """``reference`` a :class:`monitor.reference.ReferenceSet`; ``windows`` detector -> size;
    ``window`` the consumed records (:class:`monitor.demo.topics.RecordWindow`).

    Per-record scores (OOD, adversarial) and per-feedback-record scores (poisoning) give ROC
    points over records, drift statistics over sliding windows; the query-attack detector
    judges clients, not records, and has no per-record score to plot.
    """
    X, ids = window.X, window.ids
    names = _names(phases, window.ts_ms)
    positive = _positives(phases, names, ids)
    incidents = [p for p in phases if p.incident]
    drift: dict[str, tuple[WindowPoint, ...]] = {}
    scores: dict[str, dict[str, tuple[float, ...]]] = {}
    thresholds: dict[str, float] = {}
    rocs: list[Roc] = []

    def record_scores(det_id: str, s: NDArray[Any], names: NDArray[Any],
                      positive: dict[str, NDArray[np.bool_]], threshold: float) -> None:
        scores[det_id] = {p.name: tuple(float(v) for v in s[names == p.name]) for p in phases
                          if (names == p.name).any()}
        thresholds[det_id] = threshold
        for inc in incidents:
            if positive[inc.name].any():
                rocs.append(_roc(det_id, inc.name, s[names == "clean"], s[positive[inc.name]],
                                 "records"))

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
        elif family == "ood":
            record_scores(det_id, np.asarray(det.score(X), dtype=float), names, positive,
                          float(getattr(det, "threshold_", np.nan)))
        elif family == "adversarial" and hasattr(det, "classes_") and len(X):
            s = _adversarial_scores(det, window)
            if s is not None:
                record_scores(det_id, s, names, positive, float(getattr(det, "threshold_",
                                                                        np.nan)))
        elif family == "poisoning" and window.feedback is not None:
            fb = window.feedback
            s = _poisoning_scores(det, fb, windows.get(det_id, 500))
            fnames = _names(phases, fb.ts_ms)
            record_scores(det_id, s, fnames, _positives(phases, fnames, fb.ids), np.nan)
    return Analysis(drift, scores, thresholds, tuple(rocs), len(X))


def _adversarial_scores(det: Any, window: Any) -> NDArray[np.float64] | None:
    """Scores of every inference record (NaN where its prediction is not a known class)."""
    from detectors.adversarial import Views

    pred = window.predictions
    if pred is None:
        return None
    ok = np.isin(pred, np.asarray(det.classes_))
    needs = getattr(det, "signals", ())
    if window.penultimate is None and any(n in ("mahalanobis", "lid") for n in needs):
        return None  # the records carry no features view
    out = np.full(len(pred), np.nan)
    if ok.any():
        F = None if window.penultimate is None else window.penultimate[ok]
        out[ok] = np.asarray(det.predict(Views(window.X[ok], pred[ok], F)).scores, dtype=float)
    return out


def _poisoning_scores(det: Any, fb: Any, size: int) -> NDArray[np.float64]:
    """Suspicion of every feedback record, judged per window of ``size`` as the stage does
    (a last partial window: with the records before it)."""
    known = np.isin(fb.labels, np.asarray(det.classes_))
    out = np.full(len(fb.labels), np.nan)
    idx = np.flatnonzero(known)
    for lo in range(0, len(idx), size):
        rows = idx[max(0, min(lo, len(idx) - size)):lo + size]
        res = det.predict(fb.X[rows], fb.labels[rows])
        out[rows] = np.asarray(res.scores, dtype=float)
    return out
