"""Per-model pipelines: the detectors of one model version, their windows, and their findings.

Plain objects, no Kafka and no Prometheus: :meth:`Pipeline.process` takes a batch of one model
version's records (embeddings, ids, event times) in stream order and returns a
:class:`StepReport` (findings + observations); the runtime turns those into alerts and metrics.

Stages are chosen from the detector's family, found through the registry, never its class:

* **window** (batch drift: ``drift.mmd``, ``drift.ks``…): records go into the detector's window
  (:mod:`monitor.windows`); each closed window is tested with ``predict``.
* **sequential** (anything with ``update_batch``, e.g. ``drift.mmd_online``): every record is fed
  in order; a detection becomes a finding and the detector restarts (``reset`` if it has one).
* **record** (``ood.*``, ``adversarial.*``: ``predict`` returns per-record flags): every record
  is scored; flags and scores are aggregated per window (default: tumbling 1,000 records) and a
  window whose flagged fraction reaches ``min_flagged_fraction`` is a finding whose evidence is
  the ids of its highest-scoring records.

Alerts follow *episodes*: a finding is raised when a stage goes from clean to detecting (the
first drifted window, the first detection after a quiet stretch of ``ert`` records); while the
change persists the metrics keep showing it but no new alert is raised, so a sustained shift
pages once instead of every window. The episode flag is part of the checkpointed state.

A pipeline belongs to one model *version*: a new version gets a fresh pipeline (same
reference, empty windows) instead of alarming on its own change.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.alerts import Finding
from monitor.config import DetectorConfig, ModelConfig
from monitor.reference import ReferenceSet, detector_ids
from monitor.windows import ClosedWindow, Window, WindowState

log = logging.getLogger(__name__)
EVIDENCE_IDS = 10
DEFAULT_RECORD_WINDOW = Window("count", 1000)
RECORD_FAMILIES = ("ood", "adversarial")


@dataclass
class Observation:
    """What one stage did with one batch (for metrics)."""

    detector: str
    stage: str  # "window" | "sequential" | "record"
    seconds: float
    records: int = 0
    flagged: int = 0
    scores: NDArray[np.float64] | None = None
    test: dict[str, float] | None = None  # statistic, p_value, effect_size, detected, threshold


@dataclass
class StepReport:
    findings: list[Finding] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)


def _evidence(ids: list[str], badness: NDArray[Any], k: int = EVIDENCE_IDS) -> list[str]:
    if not ids:
        return []
    k = min(k, len(ids))
    top = np.argpartition(-badness, k - 1)[:k]
    top = top[np.argsort(-badness[top], kind="stable")]
    return [ids[i] for i in top]


class _Stage:
    kind = "stage"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline) -> None:
        self.id, self.det, self.cfg, self.pipe = det_id, det, cfg, pipe
        self.episode = False  # a change is ongoing: alerted at its onset, not again

    def onset(self, detected: bool) -> bool:
        """Track the episode; True when this detection starts a new one (raise an alert)."""
        new = detected and not self.episode
        self.episode = detected
        return new

    def finding(self, kind: Any, **kw: Any) -> Finding:
        return Finding(
            kind=kind,
            model=self.pipe.model,
            model_version=self.pipe.version,
            detector=self.id,
            severity=self.cfg.severity,
            alert=self.cfg.alert,
            **kw,
        )

    def process(self, X: NDArray[Any], ids: list[str], ts: NDArray[np.int64],
                report: StepReport) -> None:
        raise NotImplementedError

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        return {}, {}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        return None


class _WindowedStage(_Stage):
    """A stage whose state is a window (:class:`WindowState`) plus the alert episode."""

    state: WindowState

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays, meta = self.state.get_state()
        return arrays, {**meta, "episode": self.episode}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        meta = dict(meta)
        self.episode = bool(meta.pop("episode", False))
        self.state = WindowState.from_state(arrays, meta)


class WindowStage(_WindowedStage):
    """Batch drift test per closed window."""

    kind = "window"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline) -> None:
        super().__init__(det_id, det, cfg, pipe)
        if getattr(det, "input_kind", "embeddings") != "embeddings":
            raise ValueError(
                f"model {pipe.model!r}: detector {cfg.name!r} tests {det.input_kind}, the monitor "
                "feeds it embeddings only (prediction-based drift is not wired in yet)"
            )
        self.window = Window.from_config(cfg.window) if cfg.window else Window("count", 1000)
        self.state = self.window.initialize(pipe.dim)

    def process(self, X: NDArray[Any], ids: list[str], ts: NDArray[np.int64],
                report: StepReport) -> None:
        for w in self.window.agg(self.state, X, ids, ts):
            t0 = time.perf_counter()
            res = self.det.predict(w.X)
            seconds = time.perf_counter() - t0
            test = {
                "statistic": res.statistic,
                "p_value": res.p_value,
                "effect_size": res.effect_size,
                "threshold": res.threshold,
                "detected": float(res.is_drift),
            }
            report.observations.append(Observation(self.id, self.kind, seconds, w.n, test=test))
            if self.onset(bool(res.is_drift)):
                report.findings.append(self._found(w, res))

    def _found(self, w: ClosedWindow, res: Any) -> Finding:
        return self.finding(
            "drift",
            statistic=res.statistic,
            threshold=res.threshold,
            p_value=res.p_value,
            window=w.bounds(),
            evidence=_evidence(w.ids, self.pipe.reference.deviation(w.X)),
            details={
                "effect_size": res.effect_size,
                "effect_size_name": res.effect_size_name,
                "alpha": res.alpha,
                "n_ref": res.n_ref,
                "n_test": res.n_test,
                "window_spec": self.window.describe(),
            },
        )


class SequentialStage(_Stage):
    """Online change detection fed every record; restarts after a detection."""

    kind = "sequential"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline) -> None:
        super().__init__(det_id, det, cfg, pipe)
        self.initial = det.get_state()  # to restart from after a detection
        self.seq0 = 0  # pipeline sequence number at which the detector's time t started
        self.last_detection = 0  # pipeline sequence number of the last detection
        self.quiet = float(getattr(det, "ert", 0) or 0)  # records without detection: episode over

    def process(self, X: NDArray[Any], ids: list[str], ts: NDArray[np.int64],
                report: StepReport) -> None:
        seq_before = self.pipe.seq
        t0 = time.perf_counter()
        res = self.det.update_batch(X)
        seconds = time.perf_counter() - t0
        test = {"statistic": res.statistic, "threshold": res.threshold,
                "effect_size": res.effect_size, "detected": float(res.is_drift)}
        report.observations.append(Observation(self.id, self.kind, seconds, X.shape[0], test=test))
        if not res.is_drift:
            if self.episode and seq_before + X.shape[0] - self.last_detection >= self.quiet:
                self.episode = False
            return
        at = self.seq0 + int(res.detection_time)  # pipeline sequence number (1-based)
        self.last_detection = at
        if not self.onset(True):
            self._restart(seq_before + X.shape[0])
            return
        j = max(0, min(at - seq_before, X.shape[0]))  # records of this batch up to detection
        start = max(at - int(res.window_size), 0)
        window = {
            "kind": "count",
            "start": start,
            "end": at,
            "first_ts_ms": int(ts[:j].min()) if j else None,
            "last_ts_ms": int(ts[j - 1]) if j else int(ts[0]),
            "records": at - start,
        }
        idx = slice(0, j)
        k = min(max(j - 1, 0), len(res.statistics) - 1)  # the detecting record in this batch
        report.findings.append(self.finding(
            "drift",
            statistic=float(res.statistics[k]),
            threshold=float(res.thresholds[k]),
            window=window,
            evidence=_evidence(ids[idx], self.pipe.reference.deviation(X[idx])),
            details={"effect_size": res.effect_size, "ert": res.ert, "sequential": True},
        ))
        self._restart(seq_before + X.shape[0])

    def _restart(self, seq: int) -> None:
        reset = getattr(self.det, "reset", None)
        if callable(reset):
            reset()
        else:
            self.det = type(self.det).from_state(*self.initial)
        self.seq0 = seq

    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays, meta = self.det.get_state()
        return arrays, {"detector": meta, "seq0": self.seq0, "episode": self.episode,
                        "last_detection": self.last_detection}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self.det = type(self.det).from_state(arrays, meta["detector"])
        self.seq0 = int(meta["seq0"])
        self.episode = bool(meta["episode"])
        self.last_detection = int(meta["last_detection"])


class RecordStage(_WindowedStage):
    """Per-record scores and flags, aggregated per window for alerting."""

    kind = "record"

    def __init__(self, det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline) -> None:
        super().__init__(det_id, det, cfg, pipe)
        self.family = cfg.name.split(".", 1)[0]
        self.window = Window.from_config(cfg.window) if cfg.window else DEFAULT_RECORD_WINDOW
        self.state = self.window.initialize(2, np.float64)  # columns: score, flagged

    def process(self, X: NDArray[Any], ids: list[str], ts: NDArray[np.int64],
                report: StepReport) -> None:
        t0 = time.perf_counter()
        res = self.det.predict(X)
        seconds = time.perf_counter() - t0
        flags = np.asarray(res.is_ood if hasattr(res, "is_ood") else res.is_flagged, dtype=bool)
        scores = np.asarray(res.scores, dtype=np.float64)
        report.observations.append(Observation(
            self.id, self.kind, seconds, X.shape[0], int(flags.sum()), scores
        ))
        cols = np.column_stack([scores, flags.astype(np.float64)])
        for w in self.window.agg(self.state, cols, ids, ts):
            flagged = int(w.X[:, 1].sum())
            frac = flagged / w.n
            if self.onset(bool(flagged) and frac >= self.cfg.min_flagged_fraction):
                report.findings.append(self._found(w, flagged, frac, res))

    def _found(self, w: ClosedWindow, flagged: int, frac: float, res: Any) -> Finding:
        fpr = float(getattr(res, "fpr", np.nan))
        p_value = None
        if 0 < fpr < 1:
            from scipy.stats import binom

            # Chance of at least this many flags in a window of in-distribution records.
            p_value = float(binom.sf(flagged - 1, w.n, fpr))
        return self.finding(
            self.family,
            statistic=frac,
            threshold=self.cfg.min_flagged_fraction,
            p_value=p_value,
            window=w.bounds(),
            evidence=_evidence(w.ids, np.where(w.X[:, 1] > 0, w.X[:, 0], -np.inf)),
            details={
                "flagged": flagged,
                "records": w.n,
                "score_threshold": float(res.threshold),
                "fpr": fpr,
                "max_score": float(w.X[:, 0].max()),
                "window_spec": self.window.describe(),
            },
        )


def stage_for(det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline) -> _Stage | None:
    family = cfg.name.split(".", 1)[0]
    if callable(getattr(det, "update_batch", None)):
        return SequentialStage(det_id, det, cfg, pipe)
    if family in RECORD_FAMILIES:
        return RecordStage(det_id, det, cfg, pipe)
    if family == "drift":
        return WindowStage(det_id, det, cfg, pipe)
    log.warning("model %r: detector %r (family %r) has no monitor stage yet; it is not run",
                pipe.model, cfg.name, family)
    return None


class Pipeline:
    """All stages of one model version, fed in stream order."""

    def __init__(self, cfg: ModelConfig, version: str, reference: ReferenceSet,
                 partition: int | None = None) -> None:
        self.model, self.version, self.reference = cfg.name, version, reference
        # Findings name the partition: were a producer not to key records by model, each
        # partition would hold its own windows, and their alerts must not share dedupe keys.
        self.partition = partition
        self.dim = reference.dim
        self.seq = 0  # records processed by this pipeline
        self.stages: list[_Stage] = []
        for det_id, dc in zip(detector_ids(cfg.detectors), cfg.detectors, strict=True):
            det = reference.detectors[det_id]
            if callable(getattr(det, "update_batch", None)):
                det = type(det).from_state(*det.get_state())  # own copy: it is mutated
            stage = stage_for(det_id, det, dc, self)
            if stage is not None:
                self.stages.append(stage)

    def buffered(self) -> int:
        """Records held by this version's fullest window (an empty version is cheap to drop)."""
        return max((len(s.state) for s in self.stages if isinstance(s, _WindowedStage)),
                   default=0)

    def process(self, X: NDArray[Any], ids: list[str], ts: NDArray[np.int64]) -> StepReport:
        if X.shape[1] != self.dim:
            raise ValueError(
                f"embedding has {X.shape[1]} dims, model {self.model!r} version "
                f"{self.version!r} expects {self.dim}"
            )
        report = StepReport()
        for stage in self.stages:
            stage.process(X, ids, ts, report)
        self.seq += X.shape[0]
        if self.partition is not None:
            report.findings = [
                dataclasses.replace(f, window={**f.window, "partition": self.partition})
                for f in report.findings
            ]
        return report

    # --- checkpoint state: arrays + JSON, never pickle --------------------------------------
    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays: dict[str, NDArray[Any]] = {}
        stages: dict[str, Any] = {}
        for stage in self.stages:
            a, m = stage.get_state()
            arrays.update({f"{stage.id}/{k}": v for k, v in a.items()})
            stages[stage.id] = m
        return arrays, {"model": self.model, "version": self.version, "seq": self.seq,
                        "stages": stages}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        known = {s.id: s for s in self.stages}
        if set(meta["stages"]) != set(known):
            raise ValueError(
                f"checkpoint of model {self.model!r} has detectors {sorted(meta['stages'])}, "
                f"the configuration has {sorted(known)}"
            )
        for sid, m in meta["stages"].items():
            prefix = f"{sid}/"
            known[sid].set_state(
                {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, m
            )
        self.seq = int(meta["seq"])
