"""Bounds on what one request may carry, checked at intake before anything large is allocated.

Every limit comes from ``serving.limits`` (:class:`monitor.config.ServingLimits`). A violation
raises :class:`LimitError`: an :class:`~serving.oip.OIPError` (so a 4xx naming the field and
the limit) that also carries a ``reason`` from the bounded set :data:`REASONS`, which the app
counts in ``repwatch_serving_rejected_total{reason}``.

Also here: request bodies sent with ``Content-Encoding: gzip`` or ``deflate`` (Triton's client
compresses on request), decompressed with the decompressed size bounded by
``serving.max_body_bytes``, and a JSON nesting-depth check that runs in C-speed passes over the
bytes (the parsers themselves only stop at ~1000 levels, and the standard library's then raises
``RecursionError``).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from monitor.config import ServingLimits
from serving.oip import OIPError

# Why a request was refused (the label set of repwatch_serving_rejected_total).
REASONS = (
    "body_size",  # body (or decompressed body) over serving.max_body_bytes
    "body_timeout",  # body not received within serving.body_timeout_seconds
    "encoding",  # Content-Encoding not supported or not decodable
    "json_depth",  # JSON nested deeper than limits.max_json_depth
    "rows",  # more rows than limits.max_rows (or serving.queue_size)
    "elements",  # declared tensor elements over limits.max_elements
    "shape",  # declared shape with too many dimensions
    "field_size",  # id, version, client id, prediction or label over its byte limit
    "record_size",  # an encoded record over limits.max_record_bytes
    "timestamp",  # timestamp_ms outside [min_timestamp_ms, now + max_future_ms]
    "parameter",  # an OIP parameter this server does not implement
    "timeout",  # inference did not finish within serving.request_timeout_seconds
)


class LimitError(OIPError):
    """A request over one of the configured bounds; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, message: str, reason: str, status: int = 400) -> None:
        super().__init__(message, status)
        assert reason in REASONS, reason
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """The effective bounds: ``serving.limits`` with rows capped by the queue's capacity."""

    config: ServingLimits
    max_rows: int
    max_body_bytes: int

    @classmethod
    def of(cls, config: ServingLimits, queue_size: int, max_body_bytes: int) -> Limits:
        return cls(config, min(config.max_rows, queue_size), max_body_bytes)

    # ---- sizes and counts --------------------------------------------------------------------
    def rows(self, n: int, what: str) -> None:
        if n > self.max_rows:
            raise LimitError(
                f"{what} has {n} rows, over the limit of {self.max_rows} per request "
                "(serving.limits.max_rows, capped by serving.queue_size): split the request",
                "rows",
                413,
            )

    def text(self, value: str, what: str, limit_name: str) -> str:
        limit: int = getattr(self.config, limit_name)
        # len(str) <= bytes <= 4 * len(str): encode only when it could matter.
        if len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise LimitError(
                f"{what} is over {limit} bytes (serving.limits.{limit_name})", "field_size", 413
            )
        return value

    def packed(self, value: Any, what: str, limit_name: str) -> None:
        limit: int = getattr(self.config, limit_name)
        try:
            size = len(msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:
            raise OIPError(f"{what} cannot be encoded: {exc}") from None
        if size > limit:
            raise LimitError(
                f"{what} is {size} bytes encoded, over {limit} (serving.limits.{limit_name})",
                "field_size",
                413,
            )

    def record_size(self, size: int, what: str) -> None:
        if size > self.config.max_record_bytes:
            raise LimitError(
                f"{what} encodes to {size} bytes, over serving.limits.max_record_bytes "
                f"({self.config.max_record_bytes}, below the Kafka producer's maximum request "
                "size)",
                "record_size",
                413,
            )

    def timestamp(self, ts: Any, what: str, now_ms: int | None = None) -> int:
        if type(ts) is not int:
            raise OIPError(f"{what} must be an integer (milliseconds)")
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        lo, hi = self.config.min_timestamp_ms, now + self.config.max_future_ms
        if not lo <= ts <= hi:
            raise LimitError(
                f"{what} {ts} is outside [{lo}, {hi}] (serving.limits.min_timestamp_ms .. "
                "now + serving.limits.max_future_ms): send Unix milliseconds",
                "timestamp",
            )
        return ts

    # ---- declared tensor shapes --------------------------------------------------------------
    def shape(self, shape: Any, name: str) -> int:
        """Validate a declared shape before anything is allocated; returns its element count."""
        if isinstance(shape, list) and any(type(d) is float and d >= 2**63 for d in shape):
            # orjson (when installed) reads integers past 64 bits as floats: same answer as json
            raise LimitError(
                f"input {name!r}: shape {shape} is over serving.limits.max_elements "
                f"({self.config.max_elements} elements per request)",
                "elements",
                413,
            )
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise OIPError(f"input {name!r}: 'shape' must be a list of non-negative integers")
        rank = self.config.max_rank
        if len(shape) > rank:
            raise LimitError(
                f"input {name!r}: shape has {len(shape)} dimensions, over "
                f"serving.limits.max_rank ({rank})",
                "shape",
            )
        limit = self.config.max_elements
        count = nonzero = 1
        for d in shape:
            count *= d
            nonzero *= max(d, 1)
        # The non-zero dimensions too: [0, 10**30] has no elements, but no array has its shape.
        if count > limit or nonzero > limit:
            raise LimitError(
                f"input {name!r}: shape {shape} is over serving.limits.max_elements ({limit} "
                "elements per request)",
                "elements",
                413,
            )
        return count

    def elements(self, total: int) -> None:
        limit = self.config.max_elements
        if total > limit:
            raise LimitError(
                f"the inputs have {total} elements together, over serving.limits.max_elements "
                f"({limit}) per request",
                "elements",
                413,
            )

    # ---- bodies ------------------------------------------------------------------------------
    def json_depth(self, raw: bytes | memoryview) -> None:
        check_json_depth(raw, self.config.max_json_depth)

    def decode_body(self, body: bytes, encoding: str | None) -> bytes:
        return decode_body(body, encoding, self.max_body_bytes)


_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


def json_depth(raw: bytes | memoryview) -> int:
    """Maximum nesting depth of a JSON text, brackets inside strings not counted."""
    a = np.frombuffer(bytes(raw), np.uint8)
    steps = _OPEN[a]
    quotes = np.flatnonzero(a == ord('"'))
    if quotes.size:
        # A quote is escaped when an odd number of backslashes precede it.
        backslash = a == ord("\\")
        if backslash.any():
            idx = np.arange(a.size)
            last_plain = np.maximum.accumulate(np.where(backslash, -1, idx))
            before = quotes - 1
            run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)
            quotes = quotes[run % 2 == 0]
        # Bytes between an opening and a closing quote are inside a string.
        toggles = np.zeros(a.size + 1, np.int8)
        toggles[quotes] = 1
        inside = (np.cumsum(toggles[:-1], dtype=np.int64) % 2).astype(bool)
        steps = np.where(inside, 0, steps)
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def check_json_depth(raw: bytes | memoryview, limit: int) -> None:
    # Cheap bound first: depth <= number of openers (most requests have a handful).
    data = raw if isinstance(raw, bytes) else bytes(raw)
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    depth = json_depth(data)
    if depth > limit:
        raise LimitError(
            f"JSON is nested {depth} levels deep, over serving.limits.max_json_depth ({limit})",
            "json_depth",
        )


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip, deflate, identity) with the decoded size bounded."""
    if encoding is None:
        return body
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        wbits = [31]
    elif coding == "deflate":  # zlib-wrapped per RFC 9110; raw deflate from some clients
        wbits = [15, -15]
    else:
        raise LimitError(
            f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or identity",
            "encoding",
            415,
        )
    for i, bits in enumerate(wbits):
        d = zlib.decompressobj(bits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as exc:
            if i + 1 < len(wbits):
                continue
            raise LimitError(f"{coding} body cannot be decompressed: {exc}", "encoding") from None
        if len(out) > limit or d.unconsumed_tail:
            raise LimitError(
                f"{coding} body decompresses to over serving.max_body_bytes ({limit} bytes)",
                "body_size",
                413,
            )
        if not d.eof:
            raise LimitError(f"{coding} body is truncated", "encoding")
        return out
    raise AssertionError("unreachable")
