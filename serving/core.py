"""The sidecar's state: models, record queue and stream, metrics, client-id pseudonyms, intake
limits, and the thread pool that parses and runs requests off the event loop."""

from __future__ import annotations

import hmac
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.config import Config, read_secret
from serving.builder import RecordBuilder
from serving.ingest import Target
from serving.limits import LimitError, Limits
from serving.metrics import ServingMetrics
from serving.models import ServedModel
from serving.oip import OIPError
from serving.stream import ProducerFactory, RecordQueue, RecordStream, kafka_producer_options
from serving.tap import TapClient
from serving.transport import ProcessTransport

log = logging.getLogger(__name__)


def producer_options_for(config: Config, **overrides: Any) -> dict[str, Any]:
    """kafka-python producer settings from the platform configuration."""
    k = config.kafka
    security: dict[str, Any] = {"security_protocol": k.security_protocol}
    if k.sasl_mechanism is not None:
        password = read_secret(k.sasl_password)
        security.update(
            sasl_mechanism=k.sasl_mechanism,
            sasl_plain_username=k.sasl_username,
            sasl_plain_password=None if password is None else password.decode(),
        )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(k, name)
        if value is not None:
            security[name] = str(value)
    options = {"client_id": f"{k.client_id}-serving", "compression": k.compression,
               **security, **overrides}
    return kafka_producer_options(k.bootstrap_servers, **options)


class Pseudonymizer:
    """Keyed hash (HMAC-SHA256) of a client id; the raw id is never kept."""

    def __init__(self, key: bytes | None) -> None:
        if key is None:
            log.warning(
                "serving.client_id_key is not set: client ids are hashed with a random key, so "
                "pseudonyms differ between sidecar replicas and restarts"
            )
            key = os.urandom(32)
        self._key = key

    def __call__(self, client: str | None) -> str | None:
        if not client:
            return None
        return hmac.digest(self._key, client.encode(), "sha256")[:16].hex()


class Sidecar:
    RECORD_HEADER = "x-repwatch-record-id"

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        producer_factory: ProducerFactory | None = None,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            self.version = version("repwatch")
        except PackageNotFoundError:
            self.version = "0"
        s = config.serving
        self.config = config
        self.registry = registry
        self.metrics = ServingMetrics(registry)
        self.models: dict[str, ServedModel] = {}
        for mc in config.models:
            if mc.path is None and mc.upstream_url is None:
                log.info("model %r has neither path nor upstream_url: not served", mc.name)
                continue
            self.models[mc.name] = ServedModel(
                mc,
                intra_op_threads=s.intra_op_threads,
                nan_policy=s.nan_policy,
                dynamic_batching=s.dynamic_batching,
                max_batch_size=s.max_batch_size,
                batch_timeout=s.batch_timeout_ms / 1000.0,
            )
        if not self.models:
            raise ValueError(
                "no model to serve: give at least one model a 'path' or 'upstream_url'"
            )
        self.targets = {m.name: m for m in config.models}
        self.client_header = s.client_id_header.lower()
        self.pseudonym = Pseudonymizer(read_secret(s.client_id_key))
        self.streaming = s.stream_records
        self.limits = Limits.of(s.limits, s.queue_size, s.max_body_bytes)
        # Parsing, onnxruntime and response encoding run here, never on the event loop.
        self.pool = ThreadPoolExecutor(s.inference_threads, thread_name_prefix="repwatch-infer")
        self.queue = RecordQueue(s.queue_size, self.metrics)
        self.stream = RecordStream(
            self.queue,
            RecordBuilder(self.metrics, s.feedback_cache_size, self.limits.max_rows),
            producer_factory
            or ProcessTransport(
                producer_options_for(config, **(producer_options or {})), s.kafka_client
            ),
            config.topics.records,
            self.metrics,
            max_record_bytes=s.limits.max_record_bytes,
            degraded_after=s.stream_stall_seconds,
        )
        self.tap = TapClient(self)
        self._ids = itertools.count()
        self._id_prefix = os.urandom(6).hex() + "-"
        self._latency = {
            m.name: self.metrics.request_seconds.labels(
                m.name, m.version, "tap" if m.tap else "local"
            )
            for m in self.models.values()
        }
        self._enqueued = {m: self.metrics.records_enqueued.labels(m) for m in self.targets}
        self._started = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.streaming and not self._started:
            self.stream.start()
        self._started = True
        log.info(
            "serving models %s; record stream %s",
            {n: m.providers for n, m in self.models.items()},
            f"to {self.config.topics.records}" if self.streaming else "off",
        )

    def close(self) -> None:
        """Flush the record stream within serving.flush_timeout_seconds."""
        if self.streaming and self._started:
            self.stream.close(self.config.serving.flush_timeout_seconds)
        for m in self.models.values():
            m.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("serving sidecar stopped")

    async def aclose(self) -> None:
        await self.tap.aclose()

    def ready(self) -> bool:
        return self._started

    def stream_health(self) -> dict[str, Any]:
        """Readiness detail of the record stream; ``degraded`` never fails predictions."""
        if not self.streaming:
            return {"state": "off"}
        stream = self.stream
        waited = stream.undelivered_seconds
        return {
            "state": "degraded" if waited > stream.degraded_after else "ok",
            "waiting_records": stream.waiting,
            "seconds_without_delivery": round(waited, 3),
            "degraded_after_seconds": stream.degraded_after,
        }

    def rejected(self, exc: Exception) -> None:
        """Count a request refused for going over a configured bound."""
        if isinstance(exc, LimitError):
            self.metrics.rejected.labels(exc.reason).inc()

    # ---- request-path helpers -----------------------------------------------------------
    def feeds(self, model: ServedModel, req: Any, control: Any) -> dict[str, Any]:
        """The model's input feeds for a parsed request (REST or gRPC), its rows bounded, and the
        request's own ``parameters.timeout`` (µs, as Triton sends it) applied to ``control``."""
        feeds: dict[str, Any] = model.prepare(req)
        arr = feeds.get(model.input_name)
        if arr is not None and arr.ndim:
            self.limits.rows(arr.shape[0], "the request")
        timeout = req.parameters.get("timeout")
        if timeout is not None:
            control.timeout = min(self.config.serving.request_timeout_seconds,
                                  float(timeout) / 1e6)
        return feeds

    def new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def enqueue(self, item: Any, n: int) -> None:
        self.queue.put(item, n)
        model = getattr(item, "model", None)
        if model is None:
            model = item.records[0].model
        counter = self._enqueued.get(model if isinstance(model, str) else model.name)
        if counter is not None:
            counter.inc(n)

    def observe(self, model: ServedModel, seconds: float) -> None:
        self._latency[model.name].observe(seconds)

    def count_error(self, model: str, kind: str) -> None:
        # Unknown model names are not a bounded label set: count them under "".
        self.metrics.inference_errors.labels(model if model in self.models else "", kind).inc()

    def target(self, name: str) -> Target:
        mc = self.targets.get(name)
        if mc is None:
            raise OIPError(f"unknown model {name!r}; this server has {sorted(self.targets)}", 404)
        served = self.models.get(name)
        dim = mc.embedding_dim or (served.embedding_dim if served else None)
        return Target(mc.name, mc.version, dim)
