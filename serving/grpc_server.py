"""The Open Inference Protocol over gRPC: KServe v2's ``inference.GRPCInferenceService``.

With ``serving.grpc_port`` set, the app's lifespan runs :func:`serving` around the REST app: a
``grpc.aio`` server on ``serving.host:grpc_port`` in the same event loop, so REST and gRPC share
the models, the dynamic batcher, the thread pool, the limits and the record stream. It serves
``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``, ``ModelMetadata`` and
``ModelInfer``; anything else (Triton's repository, statistics or shared-memory methods) answers
``UNIMPLEMENTED``. Tap-mode models are served over REST only.

``ModelInfer`` takes typed contents or ``raw_input_contents`` (:mod:`serving.grpc.codec`),
validated as REST requests are; parsing, ``session.run`` and encoding run on the sidecar's pool
under ``serving.request_timeout_seconds``. Each prediction's record id comes back in the
response parameter ``record_id`` and the ``x-repwatch-record-id`` initial metadata; the client
id is read from the metadata key named by ``serving.client_id_header``. A message over
``serving.max_body_bytes`` is refused by gRPC itself (``RESOURCE_EXHAUSTED``).

Errors map as REST statuses do: 400 -> ``INVALID_ARGUMENT``, 404 -> ``NOT_FOUND``, 413 ->
``RESOURCE_EXHAUSTED``, 503 -> ``UNAVAILABLE``, anything unexpected -> ``INTERNAL``. Metrics:
``repwatch_serving_grpc_requests_total{method, code}`` and
``repwatch_serving_grpc_request_duration_seconds{model, model_version}`` beside the REST
request histogram; errors also count in ``repwatch_serving_inference_errors_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from serving.builder import InferenceItem
from serving.core import Sidecar
from serving.grpc import codec
from serving.grpc import grpc_predict_v2_pb2 as pb
from serving.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from serving.limits import LimitError
from serving.models import Inference, ServedModel
from serving.oip import INPUT_PARAMETERS, OUTPUT_PARAMETERS, REQUEST_PARAMETERS, OIPError
from serving.session import RunControl, is_client_error, release_memory

log = logging.getLogger(__name__)

METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
           "ModelInfer")
_CODE = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 501: grpc.StatusCode.UNIMPLEMENTED,
         502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE}
_ERROR_KIND = {400: "bad_request", 404: "not_found", 413: "too_large", 501: "bad_request",
               503: "timeout"}
RELEASE_AFTER_BYTES = 1 << 20  # as on the REST path: give large batches' memory back
RECORD_METADATA = "x-repwatch-record-id"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The OIP gRPC methods over a :class:`~serving.core.Sidecar`."""

    def __init__(self, side: Sidecar) -> None:
        self.side = side
        self.requests = side.metrics.grpc_requests
        self.seconds = side.metrics.grpc_seconds
        for m in METHODS:
            self.requests.labels(m, "OK")
        for model in side.models.values():  # present from the first scrape, so rate() sees calls
            if not model.tap:
                self.seconds.labels(model.name, model.version)
        self.request_timeout = side.config.serving.request_timeout_seconds
        self._client_key = side.client_header.lower()

    # ---- health and metadata -----------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        self._count("ServerLive", "OK")
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        self._count("ServerReady", "OK")
        return pb.ServerReadyResponse(ready=self.side.ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        await self._lookup("ModelReady", request.name, request.version, context)
        self._count("ModelReady", "OK")
        return pb.ModelReadyResponse(ready=self.side.ready())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        self._count("ServerMetadata", "OK")
        return pb.ServerMetadataResponse(name="repwatch", version=self.side.version)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        model = await self._lookup("ModelMetadata", request.name, request.version, context)
        self._count("ModelMetadata", "OK")
        return codec.model_metadata(model.metadata())

    # ---- inference ---------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        start = time.perf_counter()
        side = self.side
        name = request.model_name
        model = await self._lookup("ModelInfer", name, request.model_version, context)
        try:
            client = None
            for key, value in context.invocation_metadata() or ():
                if key == self._client_key and isinstance(value, str):
                    client = side.limits.text(value, "the client id metadata",
                                              "max_client_id_bytes")
            pseudonym = side.pseudonym(client) if client else None
            response, inference, record_id = await self._run(model, request)
        except OIPError as exc:
            side.rejected(exc)
            side.count_error(name, _ERROR_KIND.get(exc.status, "bad_request"))
            await self._abort(context, "ModelInfer", exc.status, exc.message)
        except Exception as exc:
            if is_client_error(exc):  # onnxruntime refused the values: the client's error
                side.count_error(name, "bad_request")
                await self._abort(context, "ModelInfer", 400, f"model rejected the input: {exc}")
            log.exception("gRPC inference failed for model %r", name)
            side.count_error(name, "runtime")
            await self._abort(context, "ModelInfer", 500, f"inference failed: {exc}")
        if record_id is not None:
            n = inference.inputs.shape[0] if inference.inputs.ndim else 1
            side.enqueue(InferenceItem.of(model, record_id, time.time_ns() // 1_000_000,
                                          inference, pseudonym), n)
            await context.send_initial_metadata(((RECORD_METADATA, record_id),))
        self._count("ModelInfer", "OK")
        self.seconds.labels(model.name, model.version).observe(
            time.perf_counter() - start)
        return response

    async def _run(
        self, model: ServedModel, request: Any
    ) -> tuple[pb.ModelInferResponse, Inference, str | None]:
        side = self.side
        control = RunControl()
        record_id = side.new_id() if side.streaming else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.request_timeout):
                if model.batcher is None:  # one hop to the pool, as on the REST path
                    done = await loop.run_in_executor(
                        side.pool, self._work, model, request, record_id, control)
                else:  # dynamic batching: the batcher's thread runs the model
                    req, feeds = await loop.run_in_executor(
                        side.pool, self._prepare, model, request, control)
                    results = await model.batcher.run(feeds)
                    done = await loop.run_in_executor(
                        side.pool, self._finish, model, req, feeds, results, record_id,
                        request.ByteSize())
        except TimeoutError:
            control.terminate()
            raise LimitError(
                f"inference did not finish within {control.timeout or self.request_timeout:g} s "
                "(serving.request_timeout_seconds or parameters.timeout); try a smaller batch",
                "timeout",
                503,
            ) from None
        response, inference = done
        return response, inference, record_id

    # ---- on the pool ---------------------------------------------------------------------
    def _work(self, model: ServedModel, request: Any, record_id: str | None,
              control: RunControl) -> tuple[pb.ModelInferResponse, Inference]:
        req, feeds = self._prepare(model, request, control)
        size = request.ByteSize()
        assert model.session is not None
        results = control.run(model.session, feeds, shrink=size >= RELEASE_AFTER_BYTES)
        return self._finish(model, req, feeds, results, record_id, size)

    def _finish(self, model: ServedModel, req: Any, feeds: dict[str, Any], results: list[Any],
                record_id: str | None, size: int) -> tuple[pb.ModelInferResponse, Inference]:
        inference = model.finish(req, feeds, results)
        extra = None if record_id is None else {"record_id": record_id}
        response = codec.to_infer_response(model.name, model.version, req.id, inference.outputs,
                                           extra)
        if size >= RELEASE_AFTER_BYTES:
            release_memory()
        return response, inference

    def _prepare(
        self, model: ServedModel, request: Any, control: RunControl
    ) -> tuple[Any, dict[str, Any]]:
        limits = self.side.limits
        req = codec.to_infer_request(request, limits, REQUEST_PARAMETERS, INPUT_PARAMETERS,
                                     OUTPUT_PARAMETERS)
        return req, self.side.feeds(model, req, control)

    # ---- helpers -----------------------------------------------------------------------------
    async def _lookup(self, method: str, name: str, version: str, context: Any) -> ServedModel:
        side = self.side
        model = side.models.get(name)
        if model is None:
            side.count_error(name, "not_found")
            await self._abort(context, method, 404,
                              f"unknown model {name!r}; this server has {sorted(side.models)}")
        if version and version != model.version and not model.tap:
            side.count_error(name, "not_found")
            await self._abort(context, method, 404, f"model {name!r} has no version "
                              f"{version!r}; it serves {model.version!r}")
        if model.tap:
            await self._abort(context, method, 501, f"model {name!r} is in tap mode, which is "
                              "served over REST only")
        return model

    async def _abort(self, context: Any, method: str, status: int, message: str) -> NoReturn:
        code = _CODE.get(status, grpc.StatusCode.INTERNAL)
        self._count(method, code.name)
        await context.abort(code, message)  # raises: ends the call
        raise AssertionError("unreachable")

    def _count(self, method: str, code: str) -> None:
        self.requests.labels(method, code).inc()


@contextlib.asynccontextmanager
async def serving(side: Sidecar) -> AsyncIterator[grpc.aio.Server | None]:
    """Run the OIP gRPC server while the block runs (nothing when serving.grpc_port is unset)."""
    s = side.config.serving
    if s.grpc_port is None:
        yield None
        return
    limit = s.max_body_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),  # a second sidecar on the same port must fail, not share it
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(side), server)
    address = f"{s.host}:{s.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {address} for gRPC (serving.grpc_port): {exc}") \
            from None
    await server.start()
    log.info("OIP gRPC on %s", address)
    try:
        yield server
    finally:
        await server.stop(s.flush_timeout_seconds)
