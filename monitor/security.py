"""Security stages: adversarial inputs per record, query attacks per client, poisoned feedback.

Three stages, chosen by the detector's family (:func:`security_stage`):

* :class:`AdversarialStage` — an :class:`~detectors.adversarial.AdversarialDetector`
  (``adversarial.combined``, ``adversarial.disagreement``, ``adversarial.lid``) on inference
  records. It reads the SSL embedding, the model's prediction (an integer class) and, when the
  detector needs the task model's features, the named feature ``penultimate`` (``input``
  names another). Flags are aggregated per window like a :class:`~monitor.stages.RecordStage`;
  a finding's evidence names the records, the class their SSL neighbours vote for against the
  prediction, and each signal's clean-data tail probability.
* :class:`AttackStage` — the :class:`~detectors.adversarial.QueryAttackDetector`
  (``adversarial.query``, ``key: client``). It reads the client pseudonym, the embedding, the
  sidecar's ``input_hashes`` and the ``input_digest``. One finding per attacking client and
  episode (``Finding.key`` = the pseudonym, so its dedupe key and CloudEvent id are per client).
* :class:`PoisoningStage` — a :class:`~detectors.poisoning.PoisoningDetector`
  (``poisoning.feedback`` …) per closed window of feedback records with integer labels: a
  suspicion per record, the window's poisoning rate, and a finding (binomial p-value at most
  :data:`POISON_ALPHA`) naming the records and the class the trusted reference votes for
  against the label each came with.

Why the attack stage checkpoints the detector's own bounded state instead of running as a
:class:`~detectors.base.KeyedDetector` on the keyed store: the detector's global hash index
links *clients to each other* — a query of one pseudonym matches, and is attributed to, the
earlier queries of another (that is how an attack split over pseudonyms is caught), and an
evicted client's index entries are invalidated by an epoch kept beside its slot. Split over a
per-key store, the index would live in the stage's checkpoint and the clients in the store's,
written at different times: after a crash the two could disagree (index entries pointing at
client slots that were never saved). The detector already keeps everything as bounded arrays
(at most ``max_clients`` clients with ``history`` float16 embeddings each, and an
``index_size``-slot table), so the stage saves it whole with the model's checkpoint: one
atomic file, restored exactly, at a fixed size known from the parameters (the cost: every
checkpoint rewrites it; size the detector with ``max_clients``/``index_size``).

Malformed input never stops the stream: a record without the view a stage needs (no
prediction, no penultimate feature or one of another width, no client, no or wrong-length
hashes, a label that is not a reference class) is counted as missing input for that stage.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from detectors.adversarial import AdversarialDetector, QueryAttackDetector, Views
from detectors.adversarial.combined import SIGNALS, CombinedAdversarialDetector
from detectors.adversarial.hashing import content_digest
from detectors.adversarial.lid import LIDDetector
from detectors.poisoning import FeedbackPoisoningDetector, PoisoningDetector
from monitor.batch import RecordBatch
from monitor.config import DetectorConfig
from monitor.stages import (
    EVIDENCE_IDS,
    Consumes,
    RecordStage,
    SecurityCounts,
    Stage,
    StepReport,
    WindowedStage,
    evidence,
)
from monitor.windows import ClosedWindow, Window

if TYPE_CHECKING:
    from monitor.pipeline import Pipeline

PENULTIMATE = "penultimate"
POISON_ALPHA = 1e-3  # binomial p-value of a feedback window's flags at which it is a finding
SECURITY_TYPES = (AdversarialDetector, QueryAttackDetector, PoisoningDetector)


def needs_features(det: Any) -> bool:
    """Whether an adversarial detector reads the task model's features view."""
    if isinstance(det, CombinedAdversarialDetector):
        return any(SIGNALS[s][0] == "features" for s in det.signals if s in SIGNALS)
    if isinstance(det, LIDDetector):
        return det.view == "features"
    return False


def _feature_dim(det: Any) -> int | None:
    """Width of the features view the detector was fitted on (None: not known)."""
    if isinstance(det, CombinedAdversarialDetector):
        for name, comp in zip(det.signals, getattr(det, "_components", []), strict=False):
            if SIGNALS.get(name, ("",))[0] == "features":
                n = getattr(comp, "n_features_in_", None)
                if n is not None:
                    return int(n)
    if isinstance(det, LIDDetector) and det.view == "features":
        return getattr(det, "n_features_in_", None)
    return None


def _miss(report: StepReport, det_id: str, n: int) -> None:
    if n:
        report.missing_input[det_id] = report.missing_input.get(det_id, 0) + n


def _class_ids(values: list[Any], classes: NDArray[Any]) -> NDArray[np.int64]:
    """Each value as a class id of ``classes``, or -1 (not an int, or a class never seen)."""
    out = np.full(len(values), -1, dtype=np.int64)
    known = {int(c) for c in classes}
    for i, v in enumerate(values):
        if type(v) is int and v in known:
            out[i] = v
    return out


class AdversarialStage(RecordStage):
    """Per-record adversarial scores on inference records; flags aggregated per window."""

    kind = "adversarial"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        super().__init__(det_id, det, cfg, pipe, consumes)
        self.signals = list(det.signals) if isinstance(det, CombinedAdversarialDetector) else []
        self.features = needs_features(det)
        self.fdim = _feature_dim(det) if self.features else None
        # columns: score, flagged, prediction, SSL class, one tail probability per signal
        self.state = self.window.initialize(4 + len(self.signals), np.float64)

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        b = batch.of_kind("inference")
        if not len(b):
            return
        pred = _class_ids(b.predictions, self.det.classes_)
        ok = pred >= 0
        F = None
        if self.features:
            values, rows = b.input(self.consumes.input)
            idx = np.arange(len(b)) if rows is None else rows
            if self.fdim is not None and values.shape[1] != self.fdim:
                idx = idx[:0]  # the rows that carry it have another width than at fit
            have = np.zeros(len(b), dtype=bool)
            have[idx] = True
            ok &= have
            F = np.zeros((len(b), values.shape[1]), dtype=np.float64)
            if idx.size:
                F[idx] = values
        keep = np.flatnonzero(ok)
        _miss(report, self.id, len(b) - keep.size)
        if not keep.size:
            return
        views = Views(b.X[keep].astype(np.float64), pred[keep], None if F is None else F[keep])
        t0 = time.perf_counter()
        res = self.det.predict(views)
        seconds = time.perf_counter() - t0
        flags = np.asarray(res.is_adversarial, dtype=bool)
        scores = np.asarray(res.scores, dtype=np.float64)
        self.last = {"threshold": float(res.threshold), "fpr": float(res.fpr)}
        report.observations.append(SecurityCounts(self.id, self.kind, "adversarial", seconds,
                                                  keep.size, int(flags.sum())))
        ssl = np.full(keep.size, -1.0) if res.ssl_class is None else res.ssl_class
        cols = [scores, flags.astype(np.float64), pred[keep].astype(np.float64),
                np.asarray(ssl, dtype=np.float64)]
        cols += [np.asarray(res.signals.get(s, np.ones(keep.size)), np.float64)
                 for s in self.signals]
        closed = self.window.agg(self.state, np.column_stack(cols), [b.ids[i] for i in keep],
                                 b.ts[keep])
        self.added()
        for w in closed:
            self.closed(w, report)

    def closed(self, w: ClosedWindow, report: StepReport) -> None:
        onset = self.flag_onset(w)
        if onset is None:
            return
        flagged, frac, fpr, p_value = onset
        badness = np.where(w.X[:, 1] > 0, w.X[:, 0], -np.inf)
        ids = evidence(w.ids, badness)
        where = {rid: i for i, rid in enumerate(w.ids)}
        records = []
        for rid in ids:
            row = w.X[where[rid]]
            records.append({
                "id": rid, "score": float(row[0]), "prediction": int(row[2]),
                "ssl_class": None if row[3] < 0 else int(row[3]),
                "signal_tails": {s: float(row[4 + j]) for j, s in enumerate(self.signals)},
            })
        disagree = (w.X[:, 1] > 0) & (w.X[:, 3] >= 0) & (w.X[:, 3] != w.X[:, 2])
        report.findings.append(self.finding(
            "adversarial", statistic=frac, threshold=self.cfg.min_flagged_fraction,
            p_value=p_value, window=w.bounds(), evidence=ids,
            details={"flagged": flagged, "records": w.n, "fpr": fpr,
                     "score_threshold": self.last["threshold"],
                     "flagged_ssl_disagrees": int(disagree.sum()), "evidence_records": records,
                     "signals": self.signals, "window_spec": self.window.describe()}))


class AttackStage(Stage):
    """Black-box query attacks per client pseudonym (see the module docstring)."""

    kind = "attack"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        # own copy: the fitted reference detector is shared by the model's version pipelines
        super().__init__(det_id, type(det).from_state(*det.get_state()), cfg, pipe, consumes)
        self.seen = 0  # queries this stage judged (the window bounds of its findings)
        self.evicted = self.det.n_evicted  # reported as a delta

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        b = batch.of_kind("inference")
        if not len(b):
            return
        det: QueryAttackDetector = self.det
        clients = b.clients
        width = det.n_hashes_
        keep = [j for j, (c, r) in enumerate(zip(clients, b.records, strict=True))
                if c and len(c) <= 256 and r.input_hashes is not None
                and r.input_hashes.shape[0] == width]
        _miss(report, self.id, len(b) - len(keep))
        if not keep:
            return
        rows = np.asarray(keep)
        E = b.X[rows].astype(np.float64)
        H = np.stack([b.records[j].input_hashes for j in keep]).astype(np.uint64)  # type: ignore[misc]
        D = content_digest(E)  # for records without a digest: from the embedding's bytes
        for k, j in enumerate(keep):
            dg = b.records[j].input_digest
            if dg is not None and len(dg) >= 8:
                D[k] = np.frombuffer(dg[:8], dtype="<u8")[0]
        who = [clients[j] for j in keep]
        t0 = time.perf_counter()
        res = det.update_batch(who, E, H, D)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        start = self.seen
        self.seen += len(keep)
        evicted, self.evicted = self.evicted, det.n_evicted
        report.observations.append(SecurityCounts(
            self.id, self.kind, "attack", seconds, len(keep), int(res.flagged.sum()),
            duplicates=int(res.duplicate.sum()), clients_alerted=len(res.alerts),
            clients_tracked=det.n_clients, clients_evicted=self.evicted - evicted,
            state_bytes=det.memory_bytes()))
        for a in res.alerts:
            mine = [k for k in range(a.record_index + 1) if who[k] == a.client]
            flagged = [k for k in mine if res.flagged[k]][-EVIDENCE_IDS:][::-1]
            i = a.record_index
            window = {"kind": "count", "start": start, "end": start + i + 1,
                      "first_ts_ms": int(b.ts[rows[mine[0]]]), "last_ts_ms": int(b.ts[rows[i]]),
                      "records": len(mine)}
            dist = float(res.neighbor_distance[i])
            report.findings.append(self.finding(
                "attack", statistic=float(a.count), threshold=float(det.k_), window=window,
                key=a.client, evidence=[b.ids[rows[k]] for k in flagged],
                details={"client": a.client, "flagged_queries": a.count,
                         "last_queries": a.window, "k": det.k_,
                         "linked_clients": list(a.linked),
                         "neighbor_distance": dist if np.isfinite(dist) else None,
                         "tau": det.tau_, "shared_hashes": int(res.shared[i]),
                         "min_shared": det.min_shared_}))

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays, meta = self.det.get_state()
        return arrays, {"detector": meta, "seen": self.seen}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self.det = type(self.det).from_state(arrays, meta["detector"])
        self.seen = int(meta.get("seen", 0))
        self.evicted = self.det.n_evicted


class PoisoningStage(WindowedStage):
    """Poisoning checks per closed window of labelled feedback records."""

    kind = "poisoning"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        super().__init__(det_id, det, cfg, pipe, consumes)
        size = int(getattr(det, "window_size", 500))
        self.window = (Window.from_config(cfg.window) if cfg.window
                       else Window("count", size, min_records=min(50, size)))
        self.dim = int(det.n_features_in_)
        self.state = self.window.initialize(self.dim + 1, np.float64)  # features, label

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        b = batch.of_kind("feedback")
        if not len(b):
            return
        values, rows = b.input(self.consumes.input)
        idx = np.arange(len(b)) if rows is None else rows
        if values.shape[1] != self.dim:
            idx, values = idx[:0], values[:0]
        labels = _class_ids([b.labels[i] for i in idx], self.det.classes_)
        ok = labels >= 0
        _miss(report, self.id, len(b) - int(ok.sum()))
        if not ok.any():
            return
        cols = np.column_stack([values[ok], labels[ok].astype(np.float64)])
        sel = idx[ok]
        closed = self.window.agg(self.state, cols, [b.ids[i] for i in sel], b.ts[sel])
        self.added()
        for w in closed:
            self.closed(w, report)

    def closed(self, w: ClosedWindow, report: StepReport) -> None:
        X, labels = w.X[:, :-1], w.X[:, -1].astype(np.int64)
        t0 = time.perf_counter()
        res = self.det.predict(X, labels)
        seconds = time.perf_counter() - t0
        flagged = int(res.is_poisoned.sum())
        report.observations.append(SecurityCounts(
            self.id, self.kind, "poisoning", seconds, w.n, flagged,
            poison_rate=res.poison_rate, p_value=res.p_value))
        if not self.onset(flagged > 0 and res.p_value <= POISON_ALPHA):
            return
        top = [int(i) for i in res.evidence[:EVIDENCE_IDS]]
        by_signal: dict[str, Any] = {}
        if isinstance(self.det, FeedbackPoisoningDetector) and top:
            sig = self.det.signal_flags(X[top], labels[top])
            by_signal = {n: v.tolist() for n, v in sig.items()}
        nc = res.neighbour_class
        records: list[dict[str, Any]] = [
            {"id": w.ids[i], "label": int(labels[i]), "score": float(res.scores[i]),
             "neighbour_class": None if nc is None else int(nc[i])} for i in top]
        for k, r in enumerate(records):
            if by_signal:
                r["signals"] = [n for n, v in by_signal.items() if v[k]]
        disagree = 0 if nc is None else int((res.is_poisoned & (nc != labels)).sum())
        report.findings.append(self.finding(
            "poisoning", statistic=res.poison_rate, threshold=POISON_ALPHA,
            p_value=res.p_value, window=w.bounds(), evidence=[r["id"] for r in records],
            details={"flagged": flagged, "records": w.n, "poison_rate": res.poison_rate,
                     "fpr": res.fpr, "flagged_label_disagrees": disagree,
                     "evidence_records": records, "window_spec": self.window.describe()}))


def security_stage(det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                   consumes: Consumes) -> Stage | None:
    """The stage of a security detector, or ``None`` for any other detector."""
    if isinstance(det, AdversarialDetector):
        return AdversarialStage(det_id, det, cfg, pipe, consumes)
    if isinstance(det, QueryAttackDetector):
        return AttackStage(det_id, det, cfg, pipe, consumes)
    if isinstance(det, PoisoningDetector):
        return PoisoningStage(det_id, det, cfg, pipe, consumes)
    return None
