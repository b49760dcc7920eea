"""From findings to delivered alerts: claim in the ledger, then Kafka and webhooks.

The :class:`Alerter` is what the worker calls with each :class:`~monitor.alerts.Finding`. It
builds the CloudEvent, claims its key in the :class:`~monitor.sinks.AlertLedger` (a key seen
before is a replay and is only counted), sends it to ``repwatch.alerts`` (key = model) and hands
it to the webhook threads; each sink's acknowledgement is written back to the ledger. On start it
re-sends what an earlier run claimed but did not get acknowledged.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from monitor.alerts import (
    Finding,
    default_source,
    encode_event,
    instance_id,
    kafka_headers,
    to_cloudevent,
)
from monitor.config import Config, SecretRef, read_secret
from monitor.sinks import AlertLedger, Webhook, WebhookDispatcher
from monitor.telemetry import MonitorMetrics

log = logging.getLogger(__name__)


class _Sender(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = ...,
             headers: list[tuple[str, bytes]] | None = ..., on_success: Any = ...) -> None: ...


def _secrets(refs: list[SecretRef]) -> list[bytes]:
    return [s for s in (read_secret(r) for r in refs) if s is not None]


class Alerter:
    def __init__(self, cfg: Config, ledger: AlertLedger, metrics: MonitorMetrics) -> None:
        self.cfg, self.ledger, self.metrics = cfg, ledger, metrics
        self.source = cfg.alerts.source or default_source(cfg.monitor.group_id)
        self._instance: str | None = None
        self.producer: _Sender | None = None
        self.webhooks: WebhookDispatcher | None = None

    @property
    def instance(self) -> str:
        """This deployment's instance id (created in the checkpoint directory on first use)."""
        if self._instance is None:
            self._instance = instance_id(self.cfg.monitor.checkpoint_dir)
        return self._instance

    def start(self, producer: _Sender) -> None:
        self.producer = producer
        hooks = [
            Webhook(w.url, read_secret(w.secret), w.timeout_seconds, w.max_retries,
                    w.deadline_seconds, tuple(_secrets(w.extra_secrets)))
            for w in self.cfg.alerts.webhooks
        ]
        self.webhooks = WebhookDispatcher(hooks, self.delivery_result)
        for key, event, sinks in self.ledger.pending():
            log.info("re-sending alert %s claimed before a restart to %s", key, sinks)
            self.dispatch(key, event, sinks)

    def sinks(self) -> list[str]:
        hooks = [Webhook(w.url).sink for w in self.cfg.alerts.webhooks]
        return (["kafka"] if self.cfg.alerts.kafka else []) + hooks

    def emit(self, f: Finding) -> None:
        if not f.alert:
            return
        event = to_cloudevent(f, self.source, self.instance)
        key = event["id"]
        sinks = self.sinks()
        if not self.ledger.claim(key, event, sinks):
            self.metrics.alerts_duplicate.labels(f.model, f.kind).inc()
            log.info("alert %s (%s %s window %s) was sent before; not sent again", key, f.model,
                     f.detector, f.window)
            return
        self.metrics.alerts.labels(f.model, f.kind).inc()
        log.warning("ALERT %s model=%s version=%s detector=%s statistic=%.4g window=%s", f.kind,
                    f.model, f.model_version, f.detector, f.statistic, f.window)
        self.dispatch(key, event, sinks)

    def dispatch(self, key: str, event: dict[str, Any], sinks: list[str]) -> None:
        if "kafka" in sinks and self.producer is not None:
            self.producer.send(
                self.cfg.topics.alerts, encode_event(event), str(event["subject"]).encode(),
                kafka_headers(event),
                on_success=lambda: self.delivery_result(key, "kafka", "delivered"),
            )
        if self.webhooks is not None:
            self.webhooks.submit(key, event, sinks)

    def delivery_result(self, key: str, sink: str, outcome: str) -> None:
        self.metrics.deliveries.labels(sink.split(":", 1)[0], outcome).inc()
        if outcome in ("delivered", "rejected"):
            self.ledger.delivered(key, sink)

    def close(self, timeout: float = 5.0) -> None:
        if self.webhooks is not None:
            self.webhooks.close(timeout)
