"""The sidecar's HTTP app: Open Inference Protocol v2 REST, record ingest, and ``/metrics``.

``create_app(config)`` loads every configured model (errors surface before the port opens) and
returns a FastAPI app whose lifespan starts the record stream and, on shutdown, flushes it
within ``serving.flush_timeout_seconds``.

The infer path reads the body as bytes and answers with bytes: no pydantic models, no JSON
floats on the record path. With ``dynamic_batching`` off, ``session.run`` is called on the event
loop thread: for models of a fraction of a millisecond that is cheaper than a thread hop; turn
dynamic batching on for heavier models (it also moves inference off the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitor.config import Config
from serving import ingest
from serving.builder import InferenceItem, RecordsItem
from serving.core import Sidecar
from serving.oip import HEADER_LENGTH, OIPError, encode_response, error_body, parse_request

log = logging.getLogger(__name__)

JSON = "application/json"
OCTETS = "application/octet-stream"


def _error(message: str, status: int) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON)


def _json(doc: Any, status: int = 200) -> Response:
    import json

    return Response(json.dumps(doc).encode(), status_code=status, media_type=JSON)


_ERROR_KIND = {400: "bad_request", 404: "not_found", 413: "too_large", 502: "upstream"}


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    producer_factory: Any = None,
    sidecar: Sidecar | None = None,
) -> FastAPI:
    """Build the app. ``producer_factory`` overrides the Kafka producer (tests, benchmarks)."""
    side = sidecar or Sidecar(config, registry or CollectorRegistry(), producer_factory)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        side.start()
        try:
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
    models = side.models

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise OIPError(f"Content-Length {length!r} is not a number")
            if int(length) > limit:
                raise OIPError(
                    f"body of {length} bytes is over serving.max_body_bytes ({limit})", 413
                )
            return await request.body()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise OIPError(f"body is over serving.max_body_bytes ({limit} bytes)", 413)
            chunks.append(chunk)
        return b"".join(chunks)

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
        return _error(exc.message, exc.status)

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
        return _json({"ready": ok}, 200 if ok else 503)

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

    # ---- inference -----------------------------------------------------------------------
    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        start = time.perf_counter()
        model = None
        try:
            model = lookup(name, version)
            body = await read_body(request)
            headers = request.headers
            header_length = headers.get(HEADER_LENGTH)
            client = side.pseudonym(headers.get(side.client_header))
            if model.tap:
                response = await side.tap.infer(model, request, body, header_length, client)
            else:
                response = await _local(model, body, header_length, client)
        except OIPError as exc:
            side.count_error(
                model.name if model else "", _ERROR_KIND.get(exc.status, "bad_request")
            )
            return _error(exc.message, exc.status)
        except Exception as exc:
            log.exception("inference failed for model %r", name)
            side.count_error(model.name if model else "", "runtime")
            return _error(f"inference failed: {exc}", 500)
        side.observe(model, time.perf_counter() - start)
        return response

    async def _local(
        model: Any, body: bytes, header_length: str | None, client: str | None
    ) -> Response:
        req = parse_request(body, header_length)
        feeds = model.prepare(req)
        if model.batcher is not None:
            results = await model.batcher.run(feeds)
        else:
            results = model.run(feeds)
        inference = model.finish(req, feeds, results)
        if not side.streaming:
            out, hlen = encode_response(model.name, model.version, req.id, inference.outputs)
            if hlen is None:
                return Response(out, media_type=JSON)
            return Response(out, media_type=OCTETS, headers={HEADER_LENGTH: str(hlen)})
        record_id = side.new_id()
        out, hlen = encode_response(
            model.name, model.version, req.id, inference.outputs, {"record_id": record_id}
        )
        n = inference.inputs.shape[0] if inference.inputs.ndim else 1
        side.enqueue(
            InferenceItem(model, record_id, time.time_ns() // 1_000_000, inference, client), n
        )
        if hlen is None:
            return Response(out, media_type=JSON, headers={side.RECORD_HEADER: record_id})
        return Response(
            out,
            media_type=OCTETS,
            headers={HEADER_LENGTH: str(hlen), side.RECORD_HEADER: record_id},
        )

    # ---- records and feedback from services that embed themselves ------------------------
    @app.post("/v1/records")
    async def post_records(request: Request) -> Response:
        doc = ingest.load_body(await read_body(request), request.headers.get("content-type"))
        target = side.target(ingest.model_name(doc))
        header_client = request.headers.get(side.client_header)
        records = ingest.parse_records(doc, target, side.new_id, side.pseudonym, header_client)
        if side.streaming:
            side.enqueue(RecordsItem(records), len(records))
        return _json({"accepted": len(records), "ids": [r.record_id for r in records]}, 202)

    @app.post("/v1/feedback")
    async def post_feedback(request: Request) -> Response:
        doc = ingest.load_body(await read_body(request), request.headers.get("content-type"))
        target = side.target(ingest.model_name(doc))
        header_client = request.headers.get(side.client_header)
        items = ingest.parse_feedback(doc, target, side.pseudonym, header_client)
        if side.streaming:
            for item in items:
                side.enqueue(item, 1)
        return _json({"accepted": len(items)}, 202)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(side.registry), media_type=CONTENT_TYPE_LATEST)

    return app
