"""The monitor worker: one loop doing all the I/O (poll → decode → route → pipelines → alerts →
checkpoint → commit), around the plain logic of :mod:`monitor.pipeline` and :mod:`monitor.windows`.

Delivery guarantees
-------------------
* Offsets are committed only after every model state they cover is checkpointed, and after the
  producer has flushed the dead-letter and alert messages of those records.
* A checkpoint remembers the partition offset its state covers; after a crash the records
  between the last commit and that offset are replayed by Kafka and skipped for that model, so
  each record enters detector state exactly once (records after the checkpoint are processed
  again, which is the point).
* Alerts are claimed in the ledger (:mod:`monitor.sinks`) before they are sent, keyed by
  model/version/detector/window: a replayed window never notifies twice, and an alert claimed
  but not delivered when the worker died is re-sent on start.
* Alerts are **at least once**: an alert sent to Kafka or a webhook just before a crash, whose
  acknowledgement was not recorded, is sent again on restart with the same CloudEvent ``id``
  (and ``source``). Consumers de-duplicate on ``source`` + ``id``: that is the contract.
* SIGTERM/SIGINT finish the batch in hand, checkpoint, commit, leave the group and return.

The worker never dies on data
-----------------------------
* A record that fails on its own (decode, dimension, unknown model) goes to the DLQ with the
  reason (:mod:`monitor.dlq`; one too large for the DLQ becomes a tombstone).
* A batch that raises anything else is *failed*: its positions do not advance, the state of its
  partitions is reloaded from their checkpoints and the consumer rewinds them to the last
  committed offset, so the batch is retried on the same state it first saw. After
  ``monitor.max_batch_retries`` failures its records are dead-lettered (reason ``batch_failed``)
  and the stream moves on.
* Positions advance only after a batch has been processed, so ``close()`` commits only what the
  saved state covers.
* A model version gets a pipeline only with its first valid record; the cap on live versions
  evicts the least recently valid version, sparing versions whose windows are filling
  (``monitor.model_version_protect_records``) while another can go.
* A checkpoint that fails validation, or whose offset lies past the partition's end, is set aside
  and its model starts fresh from the committed offset.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monitor import records as R
from monitor.alerting import Alerter
from monitor.batch import RecordBatch, route
from monitor.checkpoint import CheckpointStore, ModelCheckpoint, ReferenceOverrides
from monitor.config import Config, ConfigPathError, ModelConfig
from monitor.dlq import DeadLetters
from monitor.kafka_io import TP, Batch, Consumer, Producer
from monitor.memory import release_free_memory
from monitor.pipeline import Pipeline, StepReport, check_inputs
from monitor.prefetch import PrefetchingConsumer
from monitor.reference import ReferenceSet, detector_ids, load_reference
from monitor.sinks import AlertLedger
from monitor.state import StateStoreError
from monitor.state import set_aside as set_aside_store
from monitor.telemetry import MonitorMetrics

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    """Pipelines of one model in one partition, newest version last."""

    pipelines: OrderedDict[str, Pipeline] = field(default_factory=OrderedDict)
    ckpt_offset: int = -1  # records below this offset are already in the state
    dirty: bool = False
    verified: bool = True  # False until a restored offset is checked against the partition end


class Worker:
    """One consumer-group member. ``run()`` blocks; ``step()`` is one loop turn (for tests)."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        *,
        references: dict[str, ReferenceSet] | None = None,
        consumer_settings: dict[str, Any] | None = None,
        producer_settings: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = config
        self.registry = registry or CollectorRegistry()
        self.metrics = MonitorMetrics(self.registry)
        ckpt_dir = Path(config.monitor.checkpoint_dir)
        self.store = CheckpointStore(ckpt_dir)
        self.ledger = AlertLedger(ckpt_dir / "alerts")
        self.alerter = Alerter(config, self.ledger, self.metrics)
        self.overrides = ReferenceOverrides(ckpt_dir)
        self.models_cfg = {m.name: m for m in config.models}
        problems = check_inputs(config)
        if problems:
            raise ConfigPathError(problems[0].split(":", 1)[0], "; ".join(
                p.split(": ", 1)[1] for p in problems))
        self.references = references or self._load_references()
        self.state: dict[TP, dict[str, ModelState]] = {}
        self.positions: dict[TP, int] = {}  # next offset to read, of processed records only
        self._rewind_to: dict[TP, int] = {}  # where a failed batch is re-read from
        self._attempts: dict[tuple[TP, int], int] = {}  # failed tries of a record's batch
        self.dlq = DeadLetters(config.topics.dlq, config.monitor.dlq_max_message_bytes,
                               self.metrics.dlq, self.metrics.dlq_tombstones)
        self.profile: dict[str, float] = {}
        self.processed = 0
        self._stop = threading.Event()
        self._commands: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._consumer_settings = consumer_settings or {}
        self._producer_settings = producer_settings or {}
        self.consumer: Consumer | PrefetchingConsumer | None = None
        self.producer: Producer | None = None
        self._last_ckpt = self._last_lag = time.monotonic()

    # --- setup ---------------------------------------------------------------------------------
    def _load_references(self) -> dict[str, ReferenceSet]:
        refs = {}
        overrides = self.overrides.read()
        for i, m in enumerate(self.cfg.models):
            path = overrides.get(m.name, {}).get("path") or m.reference
            where = f"models[{i}].reference"
            if path is None:
                raise ConfigPathError(where, f"model {m.name!r} has no reference; set it to a "
                                      "reference directory (repwatch reference fit) or an array "
                                      "file")
            if m.name in overrides:
                log.warning("model %r: using the reference %s set by an admin call, not %s",
                            m.name, path, m.reference)
            try:
                refs[m.name] = load_reference(m, Path(path))
            except (OSError, ValueError) as exc:
                raise ConfigPathError(where, f"{path}: {exc}") from None
        return refs

    def start(self) -> None:
        c = self.cfg
        self.producer = Producer(c.kafka, **self._producer_settings)
        self.alerter.start(self.producer)
        settings = {
            "session_timeout_ms": c.monitor.session_timeout_ms,
            "heartbeat_interval_ms": c.monitor.heartbeat_interval_ms,
            "check_crcs": c.monitor.check_crcs,
            **self._consumer_settings,
        }
        def make(on_assign: Any, on_revoke: Any) -> Consumer:
            return Consumer(c.kafka, c.topics.records, c.monitor.group_id, on_assign, on_revoke,
                            **settings)

        if c.monitor.prefetch:
            self.consumer = PrefetchingConsumer(
                make, self._on_assign, self._on_revoke, c.monitor.max_poll_records
            )
        else:
            self.consumer = make(self._on_assign, self._on_revoke)

    # --- rebalance -----------------------------------------------------------------------------
    def _on_assign(self, tps: list[TP]) -> None:
        for tp in tps:
            self.state[tp] = self._restore_partition(tp)
            self._rewind_to.pop(tp, None)
        log.info("assigned %s (restored models: %s)", sorted(tps),
                 {tp[1]: sorted(self.state[tp]) for tp in tps})

    def _restore_partition(self, tp: TP) -> dict[str, ModelState]:
        models: dict[str, ModelState] = {}
        rejected = self.store.rejected
        for ckpt in self.store.load_partition(*tp):
            ms = self._restore(ckpt)
            if ms is not None:
                models[ckpt.model] = ms
        self.metrics.checkpoints_rejected.inc(self.store.rejected - rejected)
        return models

    def _restore(self, ckpt: ModelCheckpoint) -> ModelState | None:
        mcfg = self.models_cfg.get(ckpt.model)
        if mcfg is None:
            log.warning("checkpoint of unconfigured model %r ignored", ckpt.model)
            return None
        ms = ModelState(ckpt_offset=ckpt.offset, verified=False)
        ref = self.references[ckpt.model]
        try:
            for arrays, meta in ckpt.versions:
                pipe = self._new_pipeline(mcfg, str(meta["version"]), ref,
                                          (ckpt.topic, ckpt.partition))
                pipe.set_state(arrays, meta)
                ms.pipelines[pipe.version] = pipe
        except Exception as exc:  # a checkpoint is input too: never crash start-up on it
            self.store.set_aside(self.store.path(ckpt.topic, ckpt.partition, ckpt.model),
                                 f"its state does not fit the configuration ({exc!r})")
            return None
        return ms

    def _on_revoke(self, tps: list[TP]) -> dict[TP, int]:
        """Checkpoint what is handed over; the boundary commits the returned offsets."""
        mine = [tp for tp in tps if tp in self.state]
        self.checkpoint(mine)
        offsets = {tp: self.positions[tp] for tp in mine if tp in self.positions}
        for tp in tps:
            self.state.pop(tp, None)
            self.positions.pop(tp, None)
            self._rewind_to.pop(tp, None)
        if tps:
            log.info("revoked %s", sorted(tps))
        return offsets

    # --- the loop ------------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None, install_signals: bool = True) -> None:
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        if self.consumer is None:
            self.start()
        end = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._stop.is_set() and (end is None or time.monotonic() < end):
                self.step()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def step(self, poll_timeout_s: float = 0.2) -> int:
        assert self.consumer is not None
        self._run_commands()
        t0 = time.perf_counter()
        batch = self.consumer.poll(poll_timeout_s, self.cfg.monitor.max_poll_records)
        self._time("poll", t0)
        if len(batch):
            self.process(batch)
        self._tick()
        now = time.monotonic()
        if now - self._last_ckpt >= self.cfg.monitor.checkpoint_interval_seconds:
            self.checkpoint_and_commit()
            t = time.perf_counter()
            release_free_memory()  # the batches' freed temporaries (see monitor.memory)
            self._time("memory", t)
        if now - self._last_lag >= 1.0:
            self._last_lag = now
            for (topic, part), lag in self.consumer.lag(self.positions).items():
                self.metrics.lag.labels(topic, str(part)).set(lag)
        return len(batch)

    def _time(self, stage: str, t0: float) -> float:
        dt = time.perf_counter() - t0
        self.profile[stage] = self.profile.get(stage, 0.0) + dt
        self.metrics.stage.labels(stage).inc(dt)
        return time.perf_counter()

    def process(self, batch: Batch) -> None:
        """Process one polled batch; a failure is retried, never raised (module docstring)."""
        ends: dict[TP, int] = {}
        for i in range(len(batch)):
            tp = (batch.topics[i], batch.partitions[i])
            self._rewind_to.setdefault(tp, batch.offsets[i])
            ends[tp] = batch.offsets[i] + 1
        try:
            self._process(batch)
        except Exception as exc:
            self._failed(batch, ends, exc)
            return
        for tp, end in ends.items():
            self.positions[tp] = max(self.positions.get(tp, 0), end)
        if self._attempts:
            self._attempts = {k: v for k, v in self._attempts.items()
                              if k[1] >= self.positions.get(k[0], 0)}
        self.processed += len(batch)

    def _failed(self, batch: Batch, ends: dict[TP, int], exc: Exception) -> None:
        """Roll the batch's partitions back to their checkpoints and re-read them."""
        tries = 0
        for i in range(len(batch)):
            key = ((batch.topics[i], batch.partitions[i]), batch.offsets[i])
            tries = max(tries, self._attempts.get(key, 0) + 1)
            self._attempts[key] = self._attempts.get(key, 0) + 1
        last = tries > self.cfg.monitor.max_batch_retries
        self.metrics.batch_failures.labels("dead_lettered" if last else "retried").inc()
        log.error("batch of %d records (%s) failed on try %d: %r; %s", len(batch),
                  ", ".join(f"{t}/{p} to {e - 1}" for (t, p), e in sorted(ends.items())), tries,
                  exc, "its records go to the DLQ next" if last else "retrying from the "
                  "last checkpoint", exc_info=exc)
        for tp in ends:
            self.state[tp] = self._restore_partition(tp)
            start = self._rewind_to[tp]
            self.positions[tp] = start
            seek = getattr(self.consumer, "seek", None)
            if callable(seek):
                seek(tp, start)

    def _process(self, batch: Batch) -> None:
        t = time.perf_counter()
        if batch.decoded is not None:  # decoded ahead on the fetcher thread
            decoded = batch.decoded
            self.profile["decode"] = self.profile.get("decode", 0.0) + batch.decode_seconds
        else:
            decoded = R.decode_many(batch.values)
            t = self._time("decode", t)
        for i, err in decoded.errors:
            self._dead_letter(batch, i, "decode", str(err))
        bad = {i for i, _ in decoded.errors}
        ok = [i for i in range(len(batch)) if i not in bad]
        if self._attempts:  # records of a batch that failed every retry: dead-letter them
            limit = self.cfg.monitor.max_batch_retries
            give_up = {i for i in ok if self._attempts.get(
                ((batch.topics[i], batch.partitions[i]), batch.offsets[i]), 0) > limit}
            for i in sorted(give_up):
                self._dead_letter(batch, i, "batch_failed",
                                  f"its batch failed {limit + 1} times; see the worker log")
        else:
            give_up = set()
        groups: dict[tuple[TP, str], list[int]] = {}
        for j, i in enumerate(ok):
            if i in give_up:
                continue
            tp = (batch.topics[i], batch.partitions[i])
            groups.setdefault((tp, decoded.records[j].model), []).append(j)
        t = self._time("route", t)
        for (tp, model), js in groups.items():
            self._process_model(tp, model, [(ok[j], decoded.records[j]) for j in js], batch)

    def _check_restored(self, tp: TP, model: str, ms: ModelState) -> ModelState:
        """A restored offset past the partition's end is forged or from another topic."""
        ms.verified = True
        hw = self.consumer.highwaters().get(tp) if self.consumer is not None and hasattr(
            self.consumer, "highwaters") else None
        if hw is None or ms.ckpt_offset <= hw:
            return ms
        self.store.set_aside(self.store.path(tp[0], tp[1], model),
                             f"its offset {ms.ckpt_offset} is past the end of partition "
                             f"{tp[0]}/{tp[1]} ({hw})")
        self.metrics.checkpoints_rejected.inc()
        fresh = self.state[tp][model] = ModelState()
        return fresh

    def _process_model(self, tp: TP, model: str, items: list[tuple[int, R.Record]],
                       batch: Batch) -> None:
        mcfg = self.models_cfg.get(model)
        if mcfg is None:
            self.metrics.unknown.inc(len(items))
            if self.cfg.monitor.unknown_models == "dlq":
                for i, _ in items:
                    self._dead_letter(batch, i, "unknown_model",
                                      f"model {model[:255]!r} is not configured in this monitor")
            return
        models = self.state.setdefault(tp, {})
        ms = models.get(model)
        if ms is None:
            others = sorted(p for (t, p), m in self.state.items() if model in m and (t, p) != tp)
            if others:
                log.warning("model %r arrives on partitions %s and %d: producers must key records "
                            "by model name, otherwise each partition holds its own windows",
                            model, others, tp[1])
            ms = models[model] = ModelState()
        elif not ms.verified:
            ms = self._check_restored(tp, model, ms)
        if ms.ckpt_offset >= 0:
            fresh = [(i, r) for i, r in items if batch.offsets[i] >= ms.ckpt_offset]
            if len(fresh) < len(items):
                self.metrics.skipped_replay.inc(len(items) - len(fresh))
            items = fresh
        batches, rejects = route(model, items, batch.offsets, self.references[model].dim)
        for rej in rejects:
            self._dead_letter(batch, rej.index, rej.reason, rej.message)
        for _, r in items:
            if r.kind == "reference":  # reference records feed `repwatch reference fit`
                self.metrics.records.labels(model, r.model_version, r.kind).inc()
        for version, rb in batches.items():
            pipe = self._pipeline(ms, mcfg, version, tp)  # only now: a valid record came
            n_fb = int(rb.kinds.sum())  # feedback = 1 (reference records are not routed)
            if len(rb) - n_fb:
                self.metrics.records.labels(model, version, "inference").inc(len(rb) - n_fb)
            if n_fb:
                self.metrics.records.labels(model, version, "feedback").inc(n_fb)
            self._run_pipeline(pipe, rb)
            ms.dirty = True

    def _state_dir(self, tp: TP, model: str, version: str) -> Path:
        """Where a version's keyed stores live (the version is hashed: it is user input)."""
        digest = hashlib.sha256(version.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return self.store.dir / tp[0] / f"p{tp[1]}" / f"{model}.keyed" / f"v-{digest}"

    def _new_pipeline(self, mcfg: ModelConfig, version: str, ref: ReferenceSet,
                      tp: TP) -> Pipeline:
        state_dir = self._state_dir(tp, mcfg.name, version)
        try:
            return Pipeline(mcfg, version, ref, tp[1], state_dir)
        except StateStoreError as exc:  # keyed state is input too: set it aside, start fresh
            moved = set_aside_store(state_dir)
            log.error("keyed state of model %r version %r is unusable (%s); moved to %s, its "
                      "clients start fresh", mcfg.name, version[:64], exc, moved)
            self.metrics.checkpoints_rejected.inc()
            return Pipeline(mcfg, version, ref, tp[1], state_dir)

    def _drop_keyed(self, tp: TP, model: str, version: str) -> None:
        shutil.rmtree(self._state_dir(tp, model, version), ignore_errors=True)

    def _pipeline(self, ms: ModelState, mcfg: ModelConfig, version: str, tp: TP) -> Pipeline:
        pipe = ms.pipelines.get(version)
        if pipe is not None:
            ms.pipelines.move_to_end(version)  # most recently valid last
            return pipe
        log.info("model %r version %r: new pipeline (fresh windows and detector state)",
                 mcfg.name, version[:64])
        self._drop_keyed(tp, mcfg.name, version)  # left over from an evicted pipeline
        pipe = ms.pipelines[version] = self._new_pipeline(mcfg, version,
                                                          self.references[mcfg.name], tp)
        self.metrics.versions_created.labels(mcfg.name).inc()
        while len(ms.pipelines) > self.cfg.monitor.model_versions_kept:
            old = self._eviction_victim(ms, version)
            del ms.pipelines[old]
            self._drop_keyed(tp, mcfg.name, old)
            self.metrics.versions_evicted.labels(mcfg.name).inc()
            self.metrics.forget_version(mcfg.name, old, detector_ids(mcfg.detectors))
            log.warning("model %r: version %r evicted (more than %d live versions)", mcfg.name,
                        old[:64], self.cfg.monitor.model_versions_kept)
        return pipe

    def _eviction_victim(self, ms: ModelState, keep: str) -> str:
        """Least recently valid version, sparing those whose windows are filling."""
        protect = self.cfg.monitor.model_version_protect_records
        candidates = [v for v in ms.pipelines if v != keep]
        for v in candidates:  # oldest first
            if ms.pipelines[v].buffered() < protect:
                return v
        log.warning("every kept version of model %r has a filling window: evicting the least "
                    "recently valid one, %r", ms.pipelines[keep].model, candidates[0][:64])
        return candidates[0]

    def _run_pipeline(self, pipe: Pipeline, batch: RecordBatch) -> None:
        t = time.perf_counter()
        report = pipe.process(batch)
        t = self._time("detectors", t)
        self._report(pipe, report, t)

    def _report(self, pipe: Pipeline, report: StepReport, t: float) -> None:
        for obs in report.observations:
            self.metrics.observe(pipe.model, pipe.version, obs)
        for det, n in report.missing_input.items():
            self.metrics.missing_input.labels(pipe.model, det).inc(n)
        for stage in pipe.keyed:
            for reason, n in stage.evictions_since().items():
                self.metrics.keyed_evictions.labels(pipe.model, stage.id, reason).inc(n)
            self.metrics.keyed_keys.labels(pipe.model, pipe.version, stage.id).set(
                len(stage.store))
        t = self._time("metrics", t)
        for f in report.findings:
            self.alerter.emit(f)
        self._time("alerts", t)

    def _tick(self) -> None:
        """Idle timers: close time windows no record has closed (findings as usual)."""
        now = time.monotonic()
        for models in self.state.values():
            for ms in models.values():
                for pipe in ms.pipelines.values():
                    report = pipe.tick(now)
                    if report.findings or report.observations:
                        self._report(pipe, report, time.perf_counter())
                        ms.dirty = True

    # --- outputs -------------------------------------------------------------------------------
    def _dead_letter(self, batch: Batch, i: int, reason: str, message: str) -> None:
        assert self.producer is not None
        self.dlq.send(self.producer, batch, i, reason, message)

    # --- checkpoint and commit -----------------------------------------------------------------
    def checkpoint_and_commit(self, tps: list[TP] | None = None) -> None:
        if self.consumer is None or self.producer is None:
            return
        tps = list(self.state) if tps is None else tps
        self.checkpoint(tps)
        t = time.perf_counter()
        offsets = {tp: self.positions[tp] for tp in tps if tp in self.positions}
        self.consumer.commit(offsets)
        self._rewind_to.update(offsets)
        self._time("commit", t)
        self._last_ckpt = time.monotonic()

    def checkpoint(self, tps: list[TP]) -> None:
        """Save every changed model state of ``tps`` and flush the producer (DLQ, alerts)."""
        if self.producer is None:
            return
        t = time.perf_counter()
        wrote = 0
        for tp in tps:
            offset = self.positions.get(tp)
            if offset is None:
                continue
            for model, ms in self.state.get(tp, {}).items():
                if not ms.dirty:
                    continue
                for p in ms.pipelines.values():
                    p.checkpoint_keyed(offset)  # keyed stores first: the model file covers them
                versions = [p.get_state() for p in ms.pipelines.values()]
                self.store.save(ModelCheckpoint(model, tp[0], tp[1], offset, versions))
                self.metrics.checkpoint_bytes.labels(model).set(self.store.last_bytes)
                ms.ckpt_offset, ms.dirty = offset, False
                wrote += 1
        self.metrics.last_checkpoint = time.time()
        if wrote:
            self.metrics.checkpoints.inc(wrote)
        self.producer.flush()  # DLQ and alert messages of these records are on the broker
        self._time("checkpoint", t)

    def close(self) -> None:
        """Drain: checkpoint, commit, flush alerts, leave the group."""
        try:
            self.checkpoint_and_commit()
        finally:
            self.alerter.close(timeout=5.0)
            if self.producer is not None:
                self.producer.flush()
                self.producer.close()
            if self.consumer is not None:
                self.consumer.close()
            self.consumer = self.producer = None

    # --- admin commands, applied on the loop thread ----------------------------------------------
    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        self._commands.put((fn, fut))
        return fut

    def _run_commands(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except Exception as exc:  # the caller gets the error; the loop goes on
                fut.set_exception(exc)

    def replace_reference(self, model: str, path: str, actor: str) -> dict[str, Any]:
        """Swap a model's reference (loop thread): pipelines restart fresh; logged, persisted."""
        mcfg = self.models_cfg.get(model)
        if mcfg is None:
            raise KeyError(f"model {model!r} is not configured; known: {sorted(self.models_cfg)}")
        new = load_reference(mcfg, Path(path))
        self.references[model] = new
        for tp, models in self.state.items():
            ms = models.get(model)
            if ms is not None:
                for version in list(ms.pipelines):
                    self._drop_keyed(tp, model, version)
                    ms.pipelines[version] = self._new_pipeline(mcfg, version, new, tp)
                ms.dirty = True
        self.overrides.set(model, str(path), actor)
        self.metrics.reference_replaced.labels(model).inc()
        log.warning("reference of model %r replaced by %s (admin call from %s); its pipelines "
                    "restart with fresh state", model, path, actor)
        return {"model": model, "reference": str(path), "rows": new.rows, "dim": new.dim}
