"""The monitor's Prometheus metrics, declared on a registry passed in (never the global one).

Labels come from bounded sets only: model (configured names), model version (at most
``model_versions_kept`` live per model), detector id, record kind, stage, partition. Per-record
OOD scores are bucketed with numpy and exported at scrape time by a custom collector: one
``Histogram.observe`` per record would cost more than the detector at 10k records/s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from monitor import metric_catalog as catalog
from monitor.metrics import declare, register_standard
from monitor.stages import Observation, RecordScores, SecurityCounts, WindowTest

SCORE = catalog.get("repwatch_ood_score")


class ScoreHistograms(Collector):
    """``repwatch_ood_score`` histograms, accumulated in bulk with numpy."""

    def __init__(self, buckets: tuple[float, ...] = SCORE.buckets or ()) -> None:
        self.edges = np.asarray(buckets, dtype=np.float64)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], NDArray[np.int64]] = {}
        self._sums: dict[tuple[str, str, str], float] = {}

    def observe(self, labels: tuple[str, str, str], scores: NDArray[np.float64]) -> None:
        idx = np.searchsorted(self.edges, scores, side="left")  # bucket i: score <= edges[i]
        counts = np.bincount(idx, minlength=self.edges.size + 1).astype(np.int64)
        with self._lock:
            if labels in self._counts:
                self._counts[labels] += counts
                self._sums[labels] += float(scores.sum())
            else:
                self._counts[labels] = counts
                self._sums[labels] = float(scores.sum())

    def forget(self, model: str, version: str) -> None:
        with self._lock:
            for key in [k for k in self._counts if k[:2] == (model, version)]:
                del self._counts[key], self._sums[key]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily(SCORE.name, SCORE.help, labels=list(SCORE.labels))
        with self._lock:
            items = [(k, v.copy(), self._sums[k]) for k, v in self._counts.items()]
        for labels, counts, total in items:
            cum = np.cumsum(counts)
            pairs = zip(self.edges, cum[:-1], strict=True)
            buckets = [(repr(float(e)), float(c)) for e, c in pairs]
            buckets.append(("+Inf", float(cum[-1])))
            fam.add_metric(list(labels), buckets, total)
        yield fam


class MonitorMetrics:
    """Every metric the worker exports, registered from :mod:`monitor.metric_catalog`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def m(name: str) -> Any:
            return declare(name, registry)

        register_standard(registry, "monitor")
        self.records = m("repwatch_records_processed_total")
        self.unknown = m("repwatch_records_unknown_model_total")
        self.skipped_replay = m("repwatch_records_already_checkpointed_total")
        self.dlq = m("repwatch_dlq_records_total")
        self.drift_statistic = m("repwatch_drift_statistic")
        self.drift_threshold = m("repwatch_drift_threshold")
        self.drift_p_value = m("repwatch_drift_p_value")
        self.drift_effect = m("repwatch_drift_effect_size")
        self.drift_detected = m("repwatch_drift_detected")
        self.drift_tests = m("repwatch_drift_tests_total")
        self.ood_scored = m("repwatch_ood_records_scored_total")
        self.ood_flagged = m("repwatch_ood_records_flagged_total")
        self.dlq_tombstones = m("repwatch_dlq_tombstones_total")
        self.batch_failures = m("repwatch_batch_failures_total")
        self.versions_created = m("repwatch_model_versions_created_total")
        self.versions_evicted = m("repwatch_model_versions_evicted_total")
        self.checkpoints_rejected = m("repwatch_checkpoints_rejected_total")
        self.checkpoint_bytes = m("repwatch_checkpoint_bytes")
        self.keyed_evictions = m("repwatch_keyed_state_evictions_total")
        self.keyed_keys = m("repwatch_keyed_state_keys")
        self.missing_input = m("repwatch_records_missing_input_total")
        self.scores = ScoreHistograms()
        registry.register(self.scores)
        self.compute = m("repwatch_detector_compute_seconds")
        self.stage = m("repwatch_monitor_stage_seconds_total")
        self.lag = m("repwatch_consumer_lag_records")
        self.alerts = m("repwatch_alerts_total")
        self.alerts_duplicate = m("repwatch_alerts_deduplicated_total")
        self.deliveries = m("repwatch_alert_deliveries_total")
        self.checkpoints = m("repwatch_checkpoints_total")
        self.last_checkpoint = time.time()
        self.checkpoint_age = m("repwatch_checkpoint_age_seconds")
        self.checkpoint_age.set_function(lambda: time.time() - self.last_checkpoint)
        self.reference_replaced = m("repwatch_reference_replacements_total")
        self.sec_scored = m("repwatch_security_records_scored_total")
        self.sec_flagged = m("repwatch_security_records_flagged_total")
        self.attack_duplicates = m("repwatch_attack_records_duplicate_total")
        self.attack_alerted = m("repwatch_attack_clients_alerted_total")
        self.attack_tracked = m("repwatch_attack_clients_tracked")
        self.attack_evicted = m("repwatch_attack_clients_evicted_total")
        self.attack_bytes = m("repwatch_attack_state_bytes")
        self.poison_windows = m("repwatch_poisoning_windows_total")
        self.poison_rate = m("repwatch_poisoning_rate")
        self.poison_p = m("repwatch_poisoning_p_value")

    def observe(self, model: str, version: str, obs: Observation) -> None:
        labels = (model, version, obs.detector)
        self.compute.labels(*labels).observe(obs.seconds)
        if isinstance(obs, WindowTest):
            self.drift_tests.labels(*labels).inc()
            self.drift_statistic.labels(*labels).set(obs.statistic)
            self.drift_threshold.labels(*labels).set(obs.threshold)
            self.drift_detected.labels(*labels).set(float(obs.detected))
            if obs.p_value is not None:
                self.drift_p_value.labels(*labels).set(obs.p_value)
            self.drift_effect.labels(*labels).set(obs.effect_size)
        elif isinstance(obs, RecordScores):
            self.ood_scored.labels(*labels).inc(obs.records)
            if obs.flagged:
                self.ood_flagged.labels(*labels).inc(obs.flagged)
            self.scores.observe(labels, obs.scores)
        elif isinstance(obs, SecurityCounts):
            self._security(labels, obs)

    def _security(self, labels: tuple[str, str, str], obs: SecurityCounts) -> None:
        self.sec_scored.labels(*labels, obs.stage).inc(obs.records)
        self.sec_flagged.labels(*labels, obs.stage).inc(obs.flagged)
        if obs.family == "attack":
            self.attack_duplicates.labels(*labels).inc(obs.duplicates)
            self.attack_alerted.labels(*labels).inc(obs.clients_alerted)
            self.attack_evicted.labels(*labels).inc(obs.clients_evicted)
            self.attack_tracked.labels(*labels).set(obs.clients_tracked)
            self.attack_bytes.labels(*labels).set(obs.state_bytes)
        elif obs.family == "poisoning":
            self.poison_windows.labels(*labels).inc()
            if obs.poison_rate is not None:
                self.poison_rate.labels(*labels).set(obs.poison_rate)
            if obs.p_value is not None:
                self.poison_p.labels(*labels).set(obs.p_value)

    def _security_metrics(self) -> tuple[Any, ...]:
        return (self.attack_duplicates, self.attack_alerted,
                self.attack_tracked, self.attack_evicted, self.attack_bytes, self.poison_windows,
                self.poison_rate, self.poison_p)

    def forget_version(self, model: str, version: str, detectors: list[str]) -> None:
        """Drop the series of a model version whose pipeline was evicted (bounded labels)."""
        for metric in (self.drift_statistic, self.drift_threshold, self.drift_p_value,
                       self.drift_effect, self.drift_detected, self.drift_tests, self.compute,
                       self.ood_scored, self.ood_flagged, *self._security_metrics()):
            for d in detectors:
                _remove(metric, model, version, d)
        for metric in (self.sec_scored, self.sec_flagged):
            for d in detectors:
                for stage in ("adversarial", "attack", "poisoning"):
                    _remove(metric, model, version, d, stage)
        self.scores.forget(model, version)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
