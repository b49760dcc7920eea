"""The stages of a pipeline: what each consumes, and what it reports (frozen results).

Every stage declares :class:`Consumes` — the record kind (``inference`` | ``feedback``), the input
(``embedding`` | ``logits`` | ``prediction`` | ``label`` | a named feature vector) and the key
(``none`` | ``client``) — and receives the whole :class:`~monitor.batch.RecordBatch` of its
model version; it takes its rows and its input from it. The stage class follows from the
detector's typed contract (:mod:`detectors.base`), never from attribute probing:

* :class:`WindowStage` — a :class:`~detectors.drift.base.DriftDetector` tested per closed window;
* :class:`SequentialStage` — a :class:`~detectors.base.StreamingDetector` fed every record;
* :class:`RecordStage` — a :class:`~detectors.base.RecordDetector` (OOD, adversarial…) scoring
  every record, flags aggregated per window;
* :class:`~monitor.keyed.KeyedStage` — per client (``key: client``), in :mod:`monitor.keyed`.
* the security stages (adversarial inputs, query attacks per client, poisoned feedback), chosen
  by the detector's family, in :mod:`monitor.security`; they report :class:`SecurityCounts`.

Alerts follow *episodes*: a finding is raised when a stage goes from clean to detecting; while
the change persists the metrics keep showing it but no new alert is raised. The episode flag is
part of the checkpointed state. Stages report :class:`WindowTest` / :class:`RecordScores`
observations (frozen) that the runtime turns into metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from monitor.alerts import Finding
from monitor.batch import RecordBatch, RecordKind
from monitor.config import DetectorConfig
from monitor.windows import ClosedWindow, Window, WindowState

if TYPE_CHECKING:
    from monitor.pipeline import Pipeline

log = logging.getLogger(__name__)
EVIDENCE_IDS = 10
DEFAULT_RECORD_WINDOW = Window("count", 1000)


@dataclass(frozen=True)
class Consumes:
    """What a stage reads: record kind, input and key."""

    kind: RecordKind = "inference"
    input: str = "embedding"
    key: Literal["none", "client"] = "none"


@dataclass(frozen=True)
class WindowTest:
    """One test of a window (batch drift) or one update of a sequential detector."""

    detector: str
    stage: str
    seconds: float
    records: int
    statistic: float
    threshold: float
    effect_size: float
    detected: bool
    p_value: float | None = None


@dataclass(frozen=True)
class RecordScores:
    """Per-record scores of one batch (OOD, adversarial, keyed stages)."""

    detector: str
    stage: str
    seconds: float
    records: int
    flagged: int
    scores: NDArray[np.float64] = field(repr=False)


@dataclass(frozen=True)
class SecurityCounts:
    """One update of a security stage (:mod:`monitor.security`): records judged and flagged,
    and, per family, clients (``attack``) or the window's poisoning rate (``poisoning``)."""

    detector: str
    stage: str
    family: str  # adversarial | attack | poisoning
    seconds: float
    records: int
    flagged: int
    duplicates: int = 0  # attack: exact repeats skipped
    clients_alerted: int = 0
    clients_tracked: int = 0
    clients_evicted: int = 0  # attack: clients evicted in this update
    state_bytes: int = 0
    poison_rate: float | None = None
    p_value: float | None = None


Observation = WindowTest | RecordScores | SecurityCounts


@dataclass
class StepReport:
    findings: list[Finding] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    missing_input: dict[str, int] = field(default_factory=dict)  # detector -> records


def evidence(ids: list[str], badness: NDArray[Any], k: int = EVIDENCE_IDS) -> list[str]:
    if not ids:
        return []
    k = min(k, len(ids))
    top = np.argpartition(-badness, k - 1)[:k]
    top = top[np.argsort(-badness[top], kind="stable")]
    return [ids[i] for i in top]


@dataclass(frozen=True)
class Inputs:
    """The rows of a batch one stage reads, and its input values for them."""

    values: NDArray[Any]
    ids: list[str]
    ts: NDArray[np.int64]
    batch: RecordBatch  # the rows, as a batch (clients, offsets…)


class Stage:
    kind = "stage"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        self.id, self.det, self.cfg, self.pipe, self.consumes = det_id, det, cfg, pipe, consumes
        self.episode = False  # a change is ongoing: alerted at its onset, not again

    def inputs(self, batch: RecordBatch, report: StepReport) -> Inputs | None:
        b = batch.of_kind(self.consumes.kind)
        if not len(b):
            return None
        values, rows = b.input(self.consumes.input)
        if rows is not None:
            report.missing_input[self.id] = report.missing_input.get(self.id, 0) + len(b) - len(
                rows)
            if not rows.size:
                return None
            b = b.take(rows)
        return Inputs(values, b.ids, b.ts, b)

    def onset(self, detected: bool) -> bool:
        """Track the episode; True when this detection starts a new one (raise an alert)."""
        new = detected and not self.episode
        self.episode = detected
        return new

    def finding(self, kind: Any, **kw: Any) -> Finding:
        return Finding(kind=kind, model=self.pipe.model, model_version=self.pipe.version,
                       detector=self.id, severity=self.cfg.severity, alert=self.cfg.alert, **kw)

    def badness(self, values: NDArray[Any]) -> NDArray[Any]:
        """How unusual each row is, to pick evidence: distance to the reference on embeddings."""
        if self.consumes.input == "embedding":
            return self.pipe.reference.deviation(values)
        return np.zeros(values.shape[0])

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        raise NotImplementedError

    def tick(self, now: float, report: StepReport) -> None:
        """Called every loop turn (wall clock, monotonic seconds): idle time windows close."""
        return None

    def checkpoint(self, offset: int) -> None:
        """Save state kept outside :meth:`get_state` (keyed stores); before the model file."""
        return None

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        return {}, {}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        return None


class WindowedStage(Stage):
    """A stage whose state is a window (:class:`WindowState`) plus the alert episode."""

    state: WindowState
    window: Window

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays, meta = self.state.get_state()
        return arrays, {**meta, "episode": self.episode}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        meta = dict(meta)
        self.episode = bool(meta.pop("episode", False))
        self.state = WindowState.from_state(arrays, meta)

    last_wall: float | None = None  # monotonic time of the last record (idle timer)
    dropped_logged = 0

    def added(self) -> None:
        """After records went into the window: restart the idle timer, report overflow."""
        self.last_wall = time.monotonic()
        if self.state.dropped > self.dropped_logged:
            log.error("model %r detector %r: the time window is full (max_records=%d); %d "
                      "records dropped so far: raise window.max_records or shorten the window",
                      self.pipe.model, self.id, self.window.max_records, self.state.dropped)
            self.dropped_logged = self.state.dropped

    def tick(self, now: float, report: StepReport) -> None:
        if self.window.kind != "time" or self.last_wall is None:
            return
        idle = self.cfg.window.idle_close_seconds if self.cfg.window else None
        if now - self.last_wall < (idle if idle is not None else float(self.window.size)):
            return
        self.last_wall = None
        for w in self.window.flush(self.state):
            self.closed(w, report)

    def closed(self, w: ClosedWindow, report: StepReport) -> None:
        raise NotImplementedError


def _column(values: NDArray[Any]) -> NDArray[Any]:
    """Labels/predictions as one float column (windows hold 2-D numeric arrays)."""
    return values.astype(np.float64).reshape(-1, 1) if values.ndim == 1 else values


class WindowStage(WindowedStage):
    """Batch drift test per closed window."""

    kind = "window"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        super().__init__(det_id, det, cfg, pipe, consumes)
        self.window = Window.from_config(cfg.window) if cfg.window else Window("count", 1000)
        self.flat = consumes.input in ("prediction", "label")
        self.state = self.window.initialize(1 if self.flat else self._width(pipe))

    def _width(self, pipe: Pipeline) -> int:
        n = getattr(self.det, "n_features_in_", None)
        return int(n) if n is not None else pipe.dim

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        inp = self.inputs(batch, report)
        if inp is None:
            return
        values = inp.values
        if self.flat:
            if values.dtype.kind not in "biuf":
                report.missing_input[self.id] = report.missing_input.get(self.id, 0) + len(values)
                return
            values = _column(values)
        closed = self.window.agg(self.state, values, inp.ids, inp.ts)
        self.added()
        for w in closed:
            self.closed(w, report)

    def closed(self, w: ClosedWindow, report: StepReport) -> None:
        t0 = time.perf_counter()
        res = self.det.predict(w.X[:, 0] if self.flat else w.X)
        seconds = time.perf_counter() - t0
        report.observations.append(WindowTest(
            self.id, self.kind, seconds, w.n, float(res.statistic), float(res.threshold),
            float(res.effect_size), bool(res.is_drift), float(res.p_value)))
        if self.onset(bool(res.is_drift)):
            report.findings.append(self.finding(
                "drift", statistic=res.statistic, threshold=res.threshold, p_value=res.p_value,
                window=w.bounds(), evidence=evidence(w.ids, self.badness(w.X)),
                details={"effect_size": res.effect_size,
                         "effect_size_name": res.effect_size_name, "alpha": res.alpha,
                         "n_ref": res.n_ref, "n_test": res.n_test,
                         "window_spec": self.window.describe(),
                         "records": self.consumes.kind, "input": self.consumes.input}))


class SequentialStage(Stage):
    """Online change detection fed every record; restarts after a detection."""

    kind = "sequential"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        super().__init__(det_id, det.clone(), cfg, pipe, consumes)  # own copy: it is mutated
        self.initial = self.det.clone()  # to restart from if it cannot reset
        self.seq0 = 0  # stage sequence number at which the detector's time t started
        self.last_detection = 0
        self.seen = 0  # records this stage consumed
        self.quiet = float(getattr(det, "ert", 0) or 0)  # records without detection: episode over

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        inp = self.inputs(batch, report)
        if inp is None:
            return
        X, ids, ts = inp.values, inp.ids, inp.ts
        seq_before = self.seen
        self.seen += X.shape[0]
        t0 = time.perf_counter()
        res = self.det.update_batch(X)
        seconds = time.perf_counter() - t0
        report.observations.append(WindowTest(
            self.id, self.kind, seconds, X.shape[0], float(res.statistic),
            float(res.threshold), float(res.effect_size), bool(res.is_drift)))
        if not res.is_drift:
            if self.episode and self.seen - self.last_detection >= self.quiet:
                self.episode = False
            return
        at = self.seq0 + int(res.detection_time)  # stage sequence number (1-based)
        self.last_detection = at
        if not self.onset(True):
            self._restart(self.seen)
            return
        j = max(0, min(at - seq_before, X.shape[0]))  # records of this batch up to detection
        start = max(at - int(res.window_size), 0)
        window = {"kind": "count", "start": start, "end": at,
                  "first_ts_ms": int(ts[:j].min()) if j else None,
                  "last_ts_ms": int(ts[j - 1]) if j else int(ts[0]), "records": at - start}
        k = min(max(j - 1, 0), len(res.statistics) - 1)  # the detecting record in this batch
        report.findings.append(self.finding(
            "drift", statistic=float(res.statistics[k]), threshold=float(res.thresholds[k]),
            window=window, evidence=evidence(ids[:j], self.badness(X[:j])),
            details={"effect_size": res.effect_size, "ert": res.ert, "sequential": True}))
        self._restart(self.seen)

    def _restart(self, seq: int) -> None:
        try:
            self.det.reset()
        except NotImplementedError:
            self.det = self.initial.clone()
        self.seq0 = seq

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays, meta = self.det.get_state()
        return arrays, {"detector": meta, "seq0": self.seq0, "episode": self.episode,
                        "last_detection": self.last_detection, "seen": self.seen}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self.det = type(self.det).from_state(arrays, meta["detector"])
        self.seq0 = int(meta["seq0"])
        self.episode = bool(meta["episode"])
        self.last_detection = int(meta["last_detection"])
        self.seen = int(meta.get("seen", self.pipe.seq))


class RecordStage(WindowedStage):
    """Per-record scores and flags, aggregated per window for alerting."""

    kind = "record"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
                 consumes: Consumes) -> None:
        super().__init__(det_id, det, cfg, pipe, consumes)
        self.family = cfg.name.split(".", 1)[0]
        self.window = Window.from_config(cfg.window) if cfg.window else DEFAULT_RECORD_WINDOW
        self.state = self.window.initialize(2, np.float64)  # columns: score, flagged
        self.last: dict[str, float] = {"threshold": float("nan"), "fpr": float("nan")}

    def process(self, batch: RecordBatch, report: StepReport) -> None:
        inp = self.inputs(batch, report)
        if inp is None:
            return
        t0 = time.perf_counter()
        res = self.det.predict(inp.values)
        seconds = time.perf_counter() - t0
        flags = np.asarray(res.flags, dtype=bool)
        scores = np.asarray(res.scores, dtype=np.float64)
        self.last = {"threshold": float(res.threshold), "fpr": float(getattr(res, "fpr", np.nan))}
        report.observations.append(RecordScores(self.id, self.kind, seconds, len(scores),
                                                int(flags.sum()), scores))
        cols = np.column_stack([scores, flags.astype(np.float64)])
        closed = self.window.agg(self.state, cols, inp.ids, inp.ts)
        self.added()
        for w in closed:
            self.closed(w, report)

    def flag_onset(self, w: ClosedWindow) -> tuple[int, float, float, float | None] | None:
        """``(flagged, fraction, fpr, p_value)`` when the window starts an episode, else None.

        Column 1 of ``w.X`` holds the flags; the p-value is the chance of at least this many
        flags in a window of in-distribution records at the calibrated ``fpr``.
        """
        flagged = int(w.X[:, 1].sum())
        frac = flagged / w.n
        if not self.onset(bool(flagged) and frac >= self.cfg.min_flagged_fraction):
            return None
        fpr = self.last["fpr"]
        p_value = None
        if 0 < fpr < 1:
            from scipy.stats import binom

            p_value = float(binom.sf(flagged - 1, w.n, fpr))
        return flagged, frac, fpr, p_value

    def closed(self, w: ClosedWindow, report: StepReport) -> None:
        onset = self.flag_onset(w)
        if onset is None:
            return
        flagged, frac, fpr, p_value = onset
        report.findings.append(self.finding(
            self.family, statistic=frac, threshold=self.cfg.min_flagged_fraction,
            p_value=p_value, window=w.bounds(),
            evidence=evidence(w.ids, np.where(w.X[:, 1] > 0, w.X[:, 0], -np.inf)),
            details={"flagged": flagged, "records": w.n,
                     "score_threshold": self.last["threshold"], "fpr": fpr,
                     "max_score": float(w.X[:, 0].max()), "window_spec": self.window.describe(),
                     "records_kind": self.consumes.kind, "input": self.consumes.input}))
