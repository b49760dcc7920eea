"""The sidecar's HTTP app: Open Inference Protocol v2 REST, record ingest, and ``/metrics``.

``create_app(config)`` loads every configured model (errors surface before the port opens) and
returns an ASGI app: ``POST .../infer`` is served by :mod:`serving.fastpath` straight from ASGI
messages, everything else by the FastAPI app built here. Its lifespan starts the record stream
and, on shutdown, flushes it within ``serving.flush_timeout_seconds``.

Endpoints: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``,
``/v2/models/{name}/ready`` (both also under ``/versions/{v}``), ``POST
/v2/models/{name}[/versions/{v}]/infer``, ``POST /v1/records``, ``POST /v1/feedback``,
``GET /metrics``. Every error is ``{"error": "..."}`` with a 4xx/5xx status; client errors
are not logged with stack traces, unexpected ones are (once) and still answer JSON.

``/v2/health/ready`` answers 200 once the models are loaded, with the record stream's state in
its detail: ``stream.state`` is ``degraded`` while records wait and none has been delivered for
``serving.stream_stall_seconds`` (also the gauge ``repwatch_serving_record_stream_degraded``).
Predictions never fail because of it; an orchestrator that should restart the sidecar on a stuck
stream can read the detail.

Ingest bodies are parsed on the sidecar's thread pool, bounded by ``serving.limits``, and may be
gzip/deflate-compressed (``Content-Encoding``) like infer bodies.

Each prediction's record id comes back in the ``X-Repwatch-Record-Id`` header (and in the
response ``parameters.record_id`` when the sidecar runs the model itself): feedback joins on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.config import Config
from serving import ingest
from serving.builder import RecordsItem
from serving.core import Sidecar
from serving.fastpath import SidecarApp, read_body
from serving.oip import OIPError, error_body

log = logging.getLogger(__name__)

JSON = "application/json"


def _error(message: str, status: int) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON)


def _json(doc: Any, status: int = 200) -> Response:
    import json

    return Response(json.dumps(doc).encode(), status_code=status, media_type=JSON)


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    producer_factory: Any = None,
    producer_options: dict[str, Any] | None = None,
    sidecar: Sidecar | None = None,
) -> SidecarApp:
    """Build the app.

    By default records go to Kafka through a producer child process configured from
    ``config.kafka`` (``producer_options`` override its kafka-python settings);
    ``producer_factory`` replaces it with an in-process producer (tests, stand-ins).
    """
    side = sidecar or Sidecar(
        config, registry or CollectorRegistry(), producer_factory, producer_options
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        side.start()
        try:
            from serving.grpc_server import serving as grpc_serving  # with serving.grpc_port

            async with grpc_serving(side):
                yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, side.close)
            await side.aclose()

    app = FastAPI(
        title="repwatch serving sidecar",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.sidecar = side
    limit = config.serving.max_body_bytes
    body_timeout = config.serving.body_timeout_seconds
    models = side.models
    limits = side.limits

    async def body_of(request: Request) -> bytes:
        body = await read_body(
            request.receive, request.headers.get("content-length"), limit, body_timeout
        )
        if body is None:
            raise OIPError("the client closed the connection before the body arrived")
        return body

    async def offload(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(side.pool, fn, *args)

    def parse_ingest(request: Request, body: bytes, feedback: bool) -> tuple[Any, list[Any]]:
        body = limits.decode_body(body, request.headers.get("content-encoding"))
        doc = ingest.load_body(body, request.headers.get("content-type"), limits)
        target = side.target(ingest.model_name(doc))
        header_client = request.headers.get(side.client_header)
        if feedback:
            return target, ingest.parse_feedback(doc, target, side.pseudonym, header_client, limits)
        records = ingest.parse_records(
            doc, target, side.new_id, side.pseudonym, header_client, limits
        )
        return target, records

    def lookup(name: str, version: str | None) -> Any:
        model = models.get(name)
        if model is None:
            raise OIPError(f"unknown model {name!r}; this server has {sorted(models)}", 404)
        # In tap mode the upstream decides which versions exist.
        if version is not None and version != model.version and not model.tap:
            raise OIPError(
                f"model {name!r} has no version {version!r}; it serves {model.version!r}", 404
            )
        return model

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(str(exc.detail), exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _error(f"invalid request: {exc.errors()}", 400)

    @app.exception_handler(OIPError)
    async def _oip_error(_: Request, exc: OIPError) -> Response:
        side.rejected(exc)
        return _error(exc.message, exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Starlette re-raises after answering, so the server logs the stack trace once.
        return _error(f"internal error on {request.url.path}: {type(exc).__name__}: {exc}", 500)

    # ---- health and metadata ------------------------------------------------------------------
    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(
            {"name": "repwatch", "version": side.version, "extensions": ["binary_tensor_data"]}
        )

    @app.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = side.ready()
        return _json({"ready": ok, "stream": side.stream_health()}, 200 if ok else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str, version: str | None = None) -> Response:
        model = lookup(name, version)
        if model.tap:
            return await side.tap.forward_get(model, request)
        return _json(model.metadata())

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
        model = lookup(name, version)
        if model.tap:
            return await side.tap.forward_get(model, request)
        return _json({"name": name, "ready": True})

    # ---- records and feedback from services that embed themselves ------------------------
    @app.post("/v1/records")
    async def post_records(request: Request) -> Response:
        _, records = await offload(parse_ingest, request, await body_of(request), False)
        if side.streaming:
            side.enqueue(RecordsItem(records), len(records))
        return _json({"accepted": len(records), "ids": [r.record_id for r in records]}, 202)

    @app.post("/v1/feedback")
    async def post_feedback(request: Request) -> Response:
        _, items = await offload(parse_ingest, request, await body_of(request), True)
        if side.streaming:
            for item in items:
                side.enqueue(item, 1)
        return _json({"accepted": len(items)}, 202)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        # OpenMetrics when the scraper asks for it (exemplars, _created), text format otherwise.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(side.registry), media_type=content_type)

    return SidecarApp(app, side)
