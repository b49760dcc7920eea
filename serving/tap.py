"""Tap (proxy) mode: forward OIP requests to an upstream server, return its answer unchanged.

The request body goes upstream as it came (JSON or binary, same path, same
``Inference-Header-Content-Length``); the upstream status, body and content headers come back
byte for byte, with one added header: the record id. The record (SSL embedding of the request's
input tensor, prediction from the upstream's logits output when it has one) is built from the raw
request and response bytes on the record stream's thread, never on the request path.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response

from serving.builder import TapItem
from serving.oip import HEADER_LENGTH, OIPError

if TYPE_CHECKING:
    from serving.core import Sidecar
    from serving.models import ServedModel

log = logging.getLogger(__name__)

# Response headers passed back from the upstream (hop-by-hop ones are not).
PASS_HEADERS = ("content-type", HEADER_LENGTH)


class TapClient:
    def __init__(self, sidecar: Sidecar, timeout: float = 30.0) -> None:
        self.sidecar = sidecar
        self.timeout = timeout
        self._client: Any = None

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                trust_env=False,  # never route loopback traffic through an environment proxy
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(self, model: ServedModel, method: str, path: str, query: str, **kw: Any) -> Any:
        assert model.config.upstream_url is not None
        url = model.config.upstream_url.rstrip("/") + path
        if query:
            url += "?" + query
        try:
            return await self._http().request(method, url, **kw)
        except Exception as exc:
            raise OIPError(
                f"upstream {model.config.upstream_url} is unreachable: {exc}", 502
            ) from None

    async def forward_get(self, model: ServedModel, request: Request) -> Response:
        upstream = await self._send(model, "GET", request.url.path, request.url.query)
        headers = {h: upstream.headers[h] for h in PASS_HEADERS if h in upstream.headers}
        return Response(upstream.content, upstream.status_code, headers)

    async def infer(
        self,
        model: ServedModel,
        scope: Any,
        content_type: str | None,
        body: bytes,
        header_length: str | None,
        client: str | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Forward one infer request; returns the upstream's (status, headers, body)."""
        headers = {"content-type": content_type or "application/json"}
        if header_length is not None:
            headers[HEADER_LENGTH] = header_length
        query = scope.get("query_string", b"").decode("latin-1")
        upstream = await self._send(
            model, "POST", scope["path"], query, content=body, headers=headers
        )
        side = self.sidecar
        out = [
            (h.encode(), upstream.headers[h].encode())
            for h in PASS_HEADERS
            if h in upstream.headers
        ]
        if upstream.status_code == 200:
            record_id = side.new_id()
            out.append((side.RECORD_HEADER.encode(), record_id.encode()))
            if side.streaming:
                item = TapItem(
                    model,
                    record_id,
                    time.time_ns() // 1_000_000,
                    body,
                    header_length,
                    upstream.content,
                    upstream.headers.get(HEADER_LENGTH),
                    client,
                )
                side.enqueue(item, 1)
        else:
            side.count_error(model.name, "upstream")
        return upstream.status_code, out, upstream.content
