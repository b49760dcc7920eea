"""The infer endpoint as a plain ASGI handler, in front of the FastAPI app.

FastAPI's routing, dependency solving and middleware stack cost ~130 µs a request on these
machines, four times everything the sidecar itself does for a small model (parse ~10 µs, checks
~4 µs, response ~12 µs, record ~3 µs). ``POST /v2/models/{name}[/versions/{v}]/infer`` is the
one endpoint where that matters, so it is served here straight from ASGI messages; every other
path (metadata, health, ingest, metrics) goes to FastAPI unchanged.

The event loop only receives bodies and sends responses. Decompression, parsing, validation,
``session.run`` and response encoding run on the sidecar's thread pool
(``serving.inference_threads``), so one large request never stalls health probes or other
requests. The body must arrive within ``serving.body_timeout_seconds`` (408 otherwise: a
slow-loris client cannot hold a connection's memory forever), and inference must finish within
``serving.request_timeout_seconds`` (or the request's own ``parameters.timeout``, Triton's
microseconds): past it the run is terminated and the client gets 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from serving.builder import InferenceItem
from serving.core import Sidecar
from serving.limits import LimitError
from serving.models import Inference, ServedModel
from serving.oip import (
    HEADER_LENGTH,
    InferRequest,
    OIPError,
    encode_response,
    error_body,
    parse_request,
)
from serving.session import RunControl, is_client_error, release_memory

log = logging.getLogger(__name__)

_PREFIX = "/v2/models/"
_SUFFIX = "/infer"
_HL = HEADER_LENGTH.encode()
_JSON = [(b"content-type", b"application/json")]
_ERROR_KIND = {
    400: "bad_request",
    404: "not_found",
    408: "bad_request",
    413: "too_large",
    415: "bad_request",
    502: "upstream",
    503: "timeout",
}
# Requests with bodies at least this large hand freed memory back to the OS afterwards.
RELEASE_AFTER_BYTES = 1 << 20

Headers = list[tuple[bytes, bytes]]


class SidecarApp:
    """ASGI app: the fast infer path, and the FastAPI app ``api`` for everything else."""

    def __init__(self, api: Any, side: Sidecar) -> None:
        self.api = api
        self.state = api.state
        self.side = side
        s = side.config.serving
        self.limit = s.max_body_bytes
        self.body_timeout = s.body_timeout_seconds
        self.request_timeout = s.request_timeout_seconds
        self._client_header = side.client_header.encode()
        self._record_header = side.RECORD_HEADER.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                parts = path[len(_PREFIX) : -len(_SUFFIX)].split("/")
                if len(parts) == 1 and parts[0]:
                    await self._infer(scope, receive, send, parts[0], None)
                    return
                if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    await self._infer(scope, receive, send, parts[0], parts[2])
                    return
        await self.api(scope, receive, send)

    async def _infer(
        self, scope: Any, receive: Any, send: Any, name: str, version: str | None
    ) -> None:
        start = time.perf_counter()
        side = self.side
        model = side.models.get(name)
        try:
            if model is None:
                known = sorted(side.models)
                raise OIPError(f"unknown model {name!r}; this server has {known}", 404)
            if version is not None and version != model.version and not model.tap:
                raise OIPError(
                    f"model {name!r} has no version {version!r}; it serves {model.version!r}", 404
                )
            length = header_length = client = ctype = encoding = None
            for key, value in scope["headers"]:
                if key == b"content-length":
                    length = value
                elif key == _HL:
                    header_length = value.decode("latin-1")
                elif key == self._client_header:
                    client = value.decode("latin-1")
                elif key == b"content-type":
                    ctype = value.decode("latin-1")
                elif key == b"content-encoding":
                    encoding = value.decode("latin-1")
            body = await read_body(receive, length, self.limit, self.body_timeout)
            if body is None:
                return  # the client went away
            if client:
                client = side.limits.text(client, "the client id header", "max_client_id_bytes")
            pseudonym = side.pseudonym(client) if client else None
            if model.tap:
                if encoding is not None:
                    body = await self._offload(side.limits.decode_body, body, encoding)
                status, headers, out = await side.tap.infer(
                    model, scope, ctype, body, header_length, pseudonym
                )
            else:
                status, headers, out = await self._local(
                    model, body, encoding, header_length, pseudonym
                )
        except OIPError as exc:
            side.rejected(exc)
            side.count_error(name, _ERROR_KIND.get(exc.status, "bad_request"))
            await _respond(send, exc.status, _JSON, error_body(exc.message))
            return
        except Exception as exc:
            if is_client_error(exc):  # onnxruntime refused the input values: no stack trace
                side.count_error(name, "bad_request")
                await _respond(send, 400, _JSON, error_body(f"model rejected the input: {exc}"))
                return
            log.exception("inference failed for model %r", name)
            side.count_error(name, "runtime")
            await _respond(send, 500, _JSON, error_body(f"inference failed: {exc}"))
            return
        await _respond(send, status, headers, out)
        if status == 200:
            side.observe(model, time.perf_counter() - start)

    async def _offload(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.side.pool, fn, *args)

    async def _local(
        self,
        model: ServedModel,
        body: bytes,
        encoding: str | None,
        header_length: str | None,
        client: str | None,
    ) -> tuple[int, Headers, bytes]:
        side = self.side
        control = RunControl()
        record_id = side.new_id() if side.streaming else None
        loop = asyncio.get_running_loop()
        pool = side.pool
        timeout = self.request_timeout
        try:
            async with asyncio.timeout(timeout):
                if model.batcher is None:
                    done = await loop.run_in_executor(
                        pool, self._work, model, body, encoding, header_length, record_id, control
                    )
                else:  # dynamic batching: the batcher's thread runs the model
                    req, feeds = await loop.run_in_executor(
                        pool, self._prepare, model, body, encoding, header_length, control
                    )
                    results = await model.batcher.run(feeds)
                    done = await loop.run_in_executor(
                        pool, self._finish, model, req, feeds, results, record_id, len(body)
                    )
        except TimeoutError:
            control.terminate()
            raise LimitError(
                f"inference did not finish within {control.timeout or timeout:g} s "
                "(serving.request_timeout_seconds or parameters.timeout); try a smaller batch",
                "timeout",
                503,
            ) from None
        out, hlen, inference = done
        headers: Headers
        if record_id is not None:
            n = inference.inputs.shape[0] if inference.inputs.ndim else 1
            item = InferenceItem.of(
                model, record_id, time.time_ns() // 1_000_000, inference, client
            )
            side.enqueue(item, n)
            headers = [(self._record_header, record_id.encode())]
        else:
            headers = []
        if hlen is None:
            headers.append((b"content-type", b"application/json"))
        else:
            headers.append((b"content-type", b"application/octet-stream"))
            headers.append((_HL, str(hlen).encode()))
        return 200, headers, out

    # ---- on the pool ---------------------------------------------------------------------
    def _prepare(
        self,
        model: ServedModel,
        body: bytes,
        encoding: str | None,
        header_length: str | None,
        control: RunControl,
    ) -> tuple[InferRequest, dict[str, Any]]:
        limits = self.side.limits
        if encoding is not None:
            body = limits.decode_body(body, encoding)
        req = parse_request(body, header_length, limits)
        return req, self.side.feeds(model, req, control)

    def _work(
        self,
        model: ServedModel,
        body: bytes,
        encoding: str | None,
        header_length: str | None,
        record_id: str | None,
        control: RunControl,
    ) -> tuple[bytes, int | None, Inference]:
        req, feeds = self._prepare(model, body, encoding, header_length, control)
        large = len(body) >= RELEASE_AFTER_BYTES
        assert model.session is not None
        results = control.run(model.session, feeds, shrink=large)
        return self._finish(model, req, feeds, results, record_id, len(body))

    def _finish(
        self,
        model: ServedModel,
        req: InferRequest,
        feeds: dict[str, Any],
        results: list[Any],
        record_id: str | None,
        body_size: int,
    ) -> tuple[bytes, int | None, Inference]:
        inference = model.finish(req, feeds, results)
        extra = None if record_id is None else {"record_id": record_id}
        out, hlen = encode_response(model.name, model.version, req.id, inference.outputs, extra)
        if body_size >= RELEASE_AFTER_BYTES or len(out) >= RELEASE_AFTER_BYTES:
            release_memory()
        return out, hlen, inference


async def read_body(
    receive: Any, length: bytes | str | None, limit: int, timeout: float
) -> bytes | None:
    """The whole request body, bounded in size and in time; None if the client went away."""
    if length is not None:
        text = length.decode("latin-1") if isinstance(length, bytes) else length
        if not text.isdigit():
            raise OIPError(f"Content-Length {text!r} is not a number")
        if int(text) > limit:
            raise LimitError(
                f"body of {int(text)} bytes is over serving.max_body_bytes ({limit})",
                "body_size",
                413,
            )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await receive()
                if msg["type"] != "http.request":
                    return None
                chunk: bytes = msg.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise LimitError(
                        f"body is over serving.max_body_bytes ({limit} bytes)", "body_size", 413
                    )
                if not msg.get("more_body", False):
                    if not chunks:
                        return chunk
                    chunks.append(chunk)
                    return b"".join(chunks)
                chunks.append(chunk)
    except TimeoutError:
        raise LimitError(
            f"the request body did not arrive within serving.body_timeout_seconds ({timeout:g} s)",
            "body_timeout",
            408,
        ) from None


async def _respond(send: Any, status: int, headers: Headers, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
