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
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from monitor.pipeline import Observation

SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
                 10.0)
COMPUTE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


class ScoreHistograms(Collector):
    """``repwatch_ood_score`` histograms, accumulated in bulk with numpy."""

    def __init__(self, buckets: tuple[float, ...] = SCORE_BUCKETS) -> None:
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
        fam = HistogramMetricFamily(
            "repwatch_ood_score",
            "Per-record scores of the per-record detectors (higher is more anomalous).",
            labels=["model", "model_version", "detector"],
        )
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
    """Every metric the worker exports (names per ARCHITECTURE.md: ``repwatch_`` prefix)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        mv = ["model", "model_version"]
        det = [*mv, "detector"]
        self.records = Counter("repwatch_records_processed", "Records run through a pipeline.",
                               [*mv, "kind"], registry=registry)
        self.unknown = Counter("repwatch_records_unknown_model",
                               "Records of models that are not configured (skipped or DLQ).",
                               registry=registry)
        self.skipped_replay = Counter(
            "repwatch_records_already_checkpointed",
            "Replayed records skipped because a checkpoint already holds them.", registry=registry)
        self.dlq = Counter("repwatch_dlq_records", "Records sent to the dead-letter topic.",
                           ["reason"], registry=registry)
        self.drift_statistic = Gauge("repwatch_drift_statistic", "Last drift test statistic.",
                                     det, registry=registry)
        self.drift_p_value = Gauge("repwatch_drift_p_value", "Last drift test p-value.", det,
                                   registry=registry)
        self.drift_effect = Gauge("repwatch_drift_effect_size", "Last drift effect size.", det,
                                  registry=registry)
        self.drift_detected = Gauge("repwatch_drift_detected",
                                    "1 if the last test of this detector found drift.", det,
                                    registry=registry)
        self.drift_tests = Counter("repwatch_drift_tests", "Drift tests run.", det,
                                   registry=registry)
        self.ood_scored = Counter("repwatch_ood_records_scored",
                                  "Records scored by per-record detectors.", det,
                                  registry=registry)
        self.ood_flagged = Counter("repwatch_ood_records_flagged",
                                   "Records flagged by per-record detectors.", det,
                                   registry=registry)
        self.scores = ScoreHistograms()
        registry.register(self.scores)
        self.compute = Histogram("repwatch_detector_compute_seconds",
                                 "Detector compute time per call.", ["model", "detector"],
                                 buckets=COMPUTE_BUCKETS, registry=registry)
        self.stage = Counter("repwatch_monitor_stage_seconds",
                             "Worker time by stage (decode, route, detectors, metrics, ...).",
                             ["stage"], registry=registry)
        self.lag = Gauge("repwatch_consumer_lag", "High-water mark minus position.",
                         ["topic", "partition"], registry=registry)
        self.alerts = Counter("repwatch_alerts", "Alerts raised (after de-duplication).",
                              ["model", "type"], registry=registry)
        self.alerts_duplicate = Counter("repwatch_alerts_deduplicated",
                                        "Alerts not sent again because their key was sent before.",
                                        ["model", "type"], registry=registry)
        self.deliveries = Counter("repwatch_alert_deliveries", "Alert deliveries by outcome.",
                                  ["sink", "outcome"], registry=registry)
        self.checkpoints = Counter("repwatch_checkpoints", "Checkpoints written.",
                                   registry=registry)
        self.last_checkpoint = time.time()
        self.checkpoint_age = Gauge("repwatch_checkpoint_age_seconds",
                                    "Seconds since the last checkpoint.", registry=registry)
        self.checkpoint_age.set_function(lambda: time.time() - self.last_checkpoint)
        self.reference_replaced = Counter("repwatch_reference_replacements",
                                          "References replaced at run time by an admin call.",
                                          ["model"], registry=registry)

    def observe(self, model: str, version: str, obs: Observation) -> None:
        self.compute.labels(model, obs.detector).observe(obs.seconds)
        labels = (model, version, obs.detector)
        if obs.test is not None:
            t = obs.test
            self.drift_tests.labels(*labels).inc()
            self.drift_statistic.labels(*labels).set(t["statistic"])
            self.drift_detected.labels(*labels).set(t["detected"])
            if "p_value" in t:
                self.drift_p_value.labels(*labels).set(t["p_value"])
            self.drift_effect.labels(*labels).set(t["effect_size"])
        if obs.scores is not None:
            self.ood_scored.labels(*labels).inc(obs.records)
            if obs.flagged:
                self.ood_flagged.labels(*labels).inc(obs.flagged)
            self.scores.observe(labels, obs.scores)

    def forget_version(self, model: str, version: str, detectors: list[str]) -> None:
        """Drop the series of a model version whose pipeline was evicted (bounded labels)."""
        for metric in (self.drift_statistic, self.drift_p_value, self.drift_effect,
                       self.drift_detected):
            for d in detectors:
                _remove(metric, model, version, d)
        self.scores.forget(model, version)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
