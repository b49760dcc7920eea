"""Per-model pipelines (v2): the stages of one model version, fed typed record batches.

Plain objects, no Kafka and no Prometheus. :meth:`Pipeline.process` takes the
:class:`~monitor.batch.RecordBatch` of one model version (built by :func:`monitor.batch.route`:
embeddings, offsets, ids, event times, kinds, clients, labels, predictions, logits, features) and
returns a :class:`~monitor.stages.StepReport` (findings + frozen observations); the runtime
turns those into alerts and metrics. :meth:`Pipeline.tick` runs the idle timers of time windows.

Each configured detector becomes one stage (:mod:`monitor.stages`, :mod:`monitor.keyed`),
chosen by the detector's typed contract, and consuming what its configuration says
(:func:`consumes_of`): ``records`` (``inference`` | ``feedback``), ``input`` (``embedding`` |
``logits`` | ``prediction`` | ``label`` | a named feature vector; by default the detector's own
``input_kind``) and ``key`` (``none`` | ``client``). :func:`check_inputs` refuses a detector fed
the wrong input (e.g. ``ood.energy``, which reads logits, on embeddings) with the detector's
config path; ``repwatch config check`` and the worker run it.

A pipeline belongs to one model *version*: a new version gets a fresh pipeline (same reference,
empty windows) instead of alarming on its own change. Keyed stages keep their state in a
:class:`~monitor.state.KeyedStateStore` under ``state_dir`` (checkpointed incrementally by
:meth:`Pipeline.checkpoint_keyed`); everything else round-trips through
:meth:`Pipeline.get_state` / :meth:`Pipeline.set_state` (arrays + JSON, never pickle).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.base import Detector, KeyedDetector, RecordDetector, StreamingDetector
from detectors.drift.base import DriftDetector
from monitor import records as R
from monitor import security_fit
from monitor.batch import BUILTIN_INPUTS, KIND_CODES, RecordBatch
from monitor.config import Config, DetectorConfig, ModelConfig
from monitor.keyed import KeyedStage
from monitor.reference import ReferenceSet, detector_ids
from monitor.security import security_stage
from monitor.stages import (
    Consumes,
    Observation,
    RecordScores,
    RecordStage,
    SequentialStage,
    Stage,
    StepReport,
    WindowedStage,
    WindowStage,
    WindowTest,
)

__all__ = ["Consumes", "Observation", "Pipeline", "RecordScores", "StepReport", "WindowTest",
           "check_inputs", "consumes_of"]
log = logging.getLogger(__name__)
_ALLOWED = {"embeddings": {"embedding"}, "logits": {"logits"}, "labels": {"prediction", "label"}}


def default_input(input_kind: str, records: str) -> str:
    if input_kind == "logits":
        return "logits"
    if input_kind == "labels":
        return "label" if records == "feedback" else "prediction"
    return "embedding"


def consumes_of(dc: DetectorConfig, det_cls: type[Detector]) -> Consumes:
    """What a configured detector's stage consumes (config, else the detector's input kind)."""
    if security_fit.is_security(det_cls):
        return Consumes(kind=dc.records, input=dc.input or security_fit.default_input(det_cls),
                        key=dc.key)
    inp = dc.input or default_input(det_cls.input_kind, dc.records)
    return Consumes(kind=dc.records, input=inp, key=dc.key)


def input_problem(dc: DetectorConfig, det_cls: type[Detector]) -> str | None:
    """Why a detector cannot run as configured, with the fix; ``None`` when it can."""
    if security_fit.is_security(det_cls):
        return security_fit.security_problem(dc, det_cls)
    c = consumes_of(dc, det_cls)
    kind = det_cls.input_kind
    allowed = _ALLOWED.get(kind, {"embedding"})
    named_feature = c.input not in BUILTIN_INPUTS
    if c.input not in allowed and not (named_feature and kind != "labels"):
        fix = " or ".join(sorted(allowed))
        return (f"{dc.name} reads {kind}, but its input is {c.input!r}; set input: {fix} "
                "(or remove input to use the default)")
    if c.input == "label" and c.kind != "feedback":
        return "input: label needs records: feedback (only feedback records carry labels)"
    if c.key == "client" and not issubclass(det_cls, RecordDetector | KeyedDetector):
        return (f"{dc.name} cannot run per client (key: client takes per-record or keyed "
                "detectors); remove key")
    if issubclass(det_cls, KeyedDetector) and c.key != "client":
        return f"{dc.name} keeps state per client; set key: client"
    return None


def check_inputs(config: Config) -> list[str]:
    """Every detector fed the wrong input, as ``models[i].detectors[j]: <problem>`` lines."""
    from detectors.base import registered

    reg = registered()
    errors = []
    for i, m in enumerate(config.models):
        for j, dc in enumerate(m.detectors):
            cls = reg.get(dc.name)
            if cls is None:
                errors.append(f"models[{i}].detectors[{j}].name: detector {dc.name!r} is not "
                              f"registered; known: {', '.join(sorted(reg))}")
                continue
            problem = input_problem(dc, cls)
            if problem is not None:
                errors.append(f"models[{i}].detectors[{j}] ({m.name}): {problem}")
    return errors


def stage_for(det_id: str, det: Any, cfg: DetectorConfig, pipe: Pipeline,
              state_dir: Path | None) -> Stage | None:
    consumes = consumes_of(cfg, type(det))
    secure = security_stage(det_id, det, cfg, pipe, consumes)
    if secure is not None:
        return secure
    if consumes.key == "client":
        return KeyedStage(det_id, det, cfg, pipe, consumes,
                          None if state_dir is None else state_dir / det_id.replace("#", "_"))
    if isinstance(det, StreamingDetector):
        return SequentialStage(det_id, det, cfg, pipe, consumes)
    if isinstance(det, RecordDetector):
        return RecordStage(det_id, det, cfg, pipe, consumes)
    if isinstance(det, DriftDetector):
        return WindowStage(det_id, det, cfg, pipe, consumes)
    log.warning("model %r: detector %r (%s) has no monitor stage yet; it is not run",
                pipe.model, cfg.name, type(det).__name__)
    return None


class Pipeline:
    """All stages of one model version, fed in stream order."""

    def __init__(self, cfg: ModelConfig, version: str, reference: ReferenceSet,
                 partition: int | None = None, state_dir: Path | None = None) -> None:
        self.model, self.version, self.reference = cfg.name, version, reference
        # Findings name the partition: were a producer not to key records by model, each
        # partition would hold its own windows, and their alerts must not share dedupe keys.
        self.partition = partition
        self.dim = reference.dim
        self.seq = 0  # inference records processed by this pipeline
        self.seq_feedback = 0
        self.stages: list[Stage] = []
        for det_id, dc in zip(detector_ids(cfg.detectors), cfg.detectors, strict=True):
            stage = stage_for(det_id, reference.detectors[det_id], dc, self, state_dir)
            if stage is not None:
                self.stages.append(stage)

    @property
    def keyed(self) -> list[KeyedStage]:
        return [s for s in self.stages if isinstance(s, KeyedStage)]

    def buffered(self) -> int:
        """Records held by this version's fullest window (an empty version is cheap to drop)."""
        return max((len(s.state) for s in self.stages if isinstance(s, WindowedStage)),
                   default=0)

    def process(self, batch: RecordBatch) -> StepReport:
        if batch.X.shape[1] != self.dim:
            raise ValueError(
                f"embedding has {batch.X.shape[1]} dims, model {self.model!r} version "
                f"{self.version!r} expects {self.dim}"
            )
        report = StepReport()
        for stage in self.stages:
            stage.process(batch, report)
        n_fb = int((batch.kinds == KIND_CODES["feedback"]).sum())
        self.seq += len(batch) - n_fb
        self.seq_feedback += n_fb
        return self._named(report)

    def process_arrays(self, X: NDArray[Any], ids: list[str], ts: NDArray[np.int64]) -> StepReport:
        """Inference records given as arrays (tests, benchmarks): a batch is built for them."""
        return self.process(batch_of(self.model, self.version, X, ids, ts))

    def tick(self, now: float) -> StepReport:
        report = StepReport()
        for stage in self.stages:
            stage.tick(now, report)
        return self._named(report)

    def _named(self, report: StepReport) -> StepReport:
        if self.partition is not None and report.findings:
            report.findings = [
                dataclasses.replace(f, window={**f.window, "partition": self.partition})
                for f in report.findings
            ]
        return report

    def checkpoint_keyed(self, offset: int) -> None:
        """Save the keyed stores (dirty keys only); before the model checkpoint file."""
        for stage in self.keyed:
            stage.checkpoint(offset)

    # --- checkpoint state: arrays + JSON, never pickle --------------------------------------
    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays: dict[str, NDArray[Any]] = {}
        stages: dict[str, Any] = {}
        for stage in self.stages:
            a, m = stage.get_state()
            arrays.update({f"{stage.id}/{k}": v for k, v in a.items()})
            stages[stage.id] = m
        return arrays, {"model": self.model, "version": self.version, "seq": self.seq,
                        "seq_feedback": self.seq_feedback, "stages": stages}

    def set_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        known = {s.id: s for s in self.stages}
        if set(meta["stages"]) != set(known):
            raise ValueError(
                f"checkpoint of model {self.model!r} has detectors {sorted(meta['stages'])}, "
                f"the configuration has {sorted(known)}"
            )
        self.seq = int(meta["seq"])
        self.seq_feedback = int(meta.get("seq_feedback", 0))
        for sid, m in meta["stages"].items():
            prefix = f"{sid}/"
            known[sid].set_state(
                {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, m
            )


def batch_of(model: str, version: str, X: NDArray[Any], ids: list[str],
             ts: NDArray[np.int64], kind: str = "inference") -> RecordBatch:
    """A :class:`RecordBatch` of plain arrays (no client, label or logits)."""
    X = np.asarray(X, dtype=np.float32)
    ts = np.asarray(ts, dtype=np.int64)
    recs = [R.Record(model=model, record_id=i, timestamp_ms=int(t), embedding=x,
                     model_version=version, kind=kind,  # type: ignore[arg-type]
                     label=0 if kind == "feedback" else None)
            for i, t, x in zip(ids, ts.tolist(), X, strict=True)]
    n = len(recs)
    return RecordBatch(model, version, X, np.arange(n, dtype=np.int64), list(ids), ts,
                       np.full(n, KIND_CODES[kind], dtype=np.uint8), recs)
