"""Open Inference Protocol v2 (REST) codec: JSON tensors and the binary tensor data extension.

The binary extension is the one Triton clients use: the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of every input
whose ``parameters.binary_data_size`` is set, in the order the inputs are listed. Outputs come
back the same way when the request asks for ``binary_data`` (per output) or
``binary_data_output`` (whole request).

Everything here is pure (bytes in, arrays out) and raises :class:`OIPError` with an HTTP status
and a message naming the problem, which the app returns as ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from serving.limits import Limits

HEADER_LENGTH = "inference-header-content-length"

# Parameters this server implements; any other is refused (400) rather than silently ignored.
# ``timeout`` is Triton's per-request timeout in microseconds (capped by the server's own).
REQUEST_PARAMETERS = ("binary_data_output", "timeout")
INPUT_PARAMETERS = ("binary_data_size",)
OUTPUT_PARAMETERS = ("binary_data",)
# Sane bounds for declared shapes where no configured limits apply (tap-mode records).
_DEFAULT_RANK = 32
_DEFAULT_ELEMENTS = 1 << 40

# OIP datatype <-> numpy dtype (little-endian on the wire). BYTES (strings) is read by
# serving.text_io for text models; BF16 is not served.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPE_OF: dict[np.dtype[Any], str] = {v: k for k, v in DATATYPES.items()}
DATATYPE_OF.update({np.dtype(v.type): k for k, v in DATATYPES.items()})

# onnxruntime's type strings for the same element types.
ORT_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OIPError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: NDArray[Any]


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    # Requested outputs: name -> wants binary (None = all outputs, with ``binary_default``).
    outputs: dict[str, bool] | None = None
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


_json_loads: Callable[[Any], Any]
try:  # optional: ~3x faster parsing of large JSON tensors; same results
    from orjson import loads as _orjson_loads

    _json_loads = _orjson_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads


def _loads(raw: bytes | memoryview, what: str) -> Any:
    try:
        return _json_loads(bytes(raw) if isinstance(raw, memoryview) else raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OIPError(f"malformed JSON in {what}: {exc}") from None
    except RecursionError:
        raise OIPError(f"JSON in {what} is nested too deep for the parser") from None


def _shape(value: Any, name: str, limits: Limits | None) -> tuple[list[int], int]:
    """The declared shape and its element count, validated before anything is allocated."""
    if limits is not None:
        return value, limits.shape(value, name)
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise OIPError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = nonzero = 1
    for d in value:
        count *= d
        nonzero *= max(d, 1)
    if len(value) > _DEFAULT_RANK or nonzero > _DEFAULT_ELEMENTS:
        raise OIPError(f"input {name!r}: shape {value} is too large")
    return value, count


def _known(params: Any, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(params, dict):
        raise OIPError(f"{where} 'parameters' must be an object")
    unknown = sorted(str(k) for k in params if k not in allowed)
    if unknown:
        from serving.limits import LimitError

        raise LimitError(
            f"{where} parameters {unknown} are not implemented by this server; it knows "
            f"{list(allowed)}",
            "parameter",
        )


def parse_request(
    body: bytes, header_length: str | None, limits: Limits | None = None
) -> InferRequest:
    """Parse an infer request body; ``header_length`` is the Inference-Header-Content-Length.

    With ``limits`` (the sidecar's own requests), declared shapes, JSON depth and the element
    budget are checked against them and unknown parameters are refused; without (re-reading a
    request a tap-mode upstream already answered), only what keeps parsing safe.
    """
    view = memoryview(body)
    if header_length is None:
        if limits is not None:
            limits.json_depth(body)
        header: Any = _loads(body, "the request body")
        binary = view[len(body) :]
    else:
        try:
            hlen = int(header_length)
        except ValueError:
            raise OIPError(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < hlen <= len(body):
            raise OIPError(
                f"Inference-Header-Content-Length {hlen} is outside the body of {len(body)} bytes"
            )
        if limits is not None:
            limits.json_depth(view[:hlen])
        header = _loads(view[:hlen], "the inference header")
        binary = view[hlen:]
    if not isinstance(header, dict):
        raise OIPError("the inference request must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OIPError("the inference request needs a non-empty 'inputs' list")
    inputs: list[Tensor] = []
    offset = 0
    total = 0
    for i, spec in enumerate(raw_inputs):
        if not isinstance(spec, dict):
            raise OIPError(f"inputs[{i}] must be an object")
        tensor, used = _parse_input(spec, i, binary, offset, limits)
        offset += used
        total += tensor.array.size
        if limits is not None:
            limits.elements(total)
        inputs.append(tensor)
    if offset != len(binary):
        raise OIPError(
            f"binary data is {len(binary)} bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise OIPError("'parameters' must be an object")
    if limits is not None:
        _known(params, REQUEST_PARAMETERS, "request")
        timeout = params.get("timeout")
        if timeout is not None and (
            not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0
        ):
            raise OIPError("parameters.timeout must be a positive number of microseconds")
    binary_default = bool(params.get("binary_data_output", False))
    outputs: dict[str, bool] | None = None
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise OIPError("'outputs' must be a list")
        outputs = {}
        for j, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise OIPError(f"outputs[{j}] must be an object with a 'name'")
            oparams = out.get("parameters") or {}
            if limits is not None:
                _known(oparams, OUTPUT_PARAMETERS, f"outputs[{j}]")
            elif not isinstance(oparams, dict):
                raise OIPError(f"outputs[{j}] 'parameters' must be an object")
            outputs[out["name"]] = bool(oparams.get("binary_data", binary_default))
    rid = header.get("id")
    return InferRequest(
        id=None if rid is None else str(rid),
        inputs=inputs,
        outputs=outputs,
        binary_default=binary_default,
        parameters=params,
    )


def _parse_input(
    spec: dict[str, Any], i: int, binary: memoryview, offset: int, limits: Limits | None = None
) -> tuple[Tensor, int]:
    name = spec.get("name")
    if not isinstance(name, str):
        raise OIPError(f"inputs[{i}] needs a string 'name'")
    datatype = spec.get("datatype")
    if datatype == "BYTES":  # strings, for text models: parsed (and bounded) in text_io
        from serving.text_io import parse_bytes

        shape, _ = _shape(spec.get("shape"), name, limits)
        params = spec.get("parameters")
        if limits is not None and params is not None:
            _known(params, INPUT_PARAMETERS, f"input {name!r}")
        return parse_bytes(spec, name, shape, binary, offset)
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or not isinstance(datatype, str):
        raise OIPError(
            f"input {name!r}: datatype {datatype!r} is not supported; "
            f"use one of {sorted(DATATYPES)}"
        )
    shape, count = _shape(spec.get("shape"), name, limits)
    params = spec.get("parameters")
    if limits is not None and params is not None:
        _known(params, INPUT_PARAMETERS, f"input {name!r}")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if type(size) is not int or size < 0:
            raise OIPError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise OIPError(
                f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                f"{datatype} ({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise OIPError(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes left)"
            )
        arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return Tensor(name, datatype, shape, arr), size
    data = spec.get("data")
    if data is None:
        raise OIPError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    try:
        arr = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise OIPError(f"input {name!r}: data cannot be read as {datatype}: {exc}") from None
    if arr.size != count:
        raise OIPError(
            f"input {name!r}: data has {arr.size} elements but shape {shape} needs {count}"
        )
    return Tensor(name, datatype, shape, arr.reshape(shape)), 0


def parse_response_outputs(body: bytes, header_length: str | None) -> list[Tensor]:
    """Read the outputs of an infer *response* (JSON or binary), e.g. an upstream's in tap mode."""
    view = memoryview(body)
    hlen = len(body) if header_length is None else int(header_length)
    header = _loads(view[:hlen], "the inference response")
    binary = view[hlen:]
    if not isinstance(header, dict) or not isinstance(header.get("outputs"), list):
        raise OIPError("the inference response has no 'outputs' list")
    tensors: list[Tensor] = []
    offset = 0
    for i, spec in enumerate(header["outputs"]):
        if not isinstance(spec, dict):
            raise OIPError(f"outputs[{i}] must be an object")
        tensor, used = _parse_input(spec, i, binary, offset)
        offset += used
        tensors.append(tensor)
    return tensors


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, NDArray[Any], bool]],
    extra: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Serialise outputs ``(name, array, binary)``; returns (body, header length or None)."""
    header_outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, arr, binary in outputs:
        datatype = DATATYPE_OF.get(arr.dtype)
        if datatype is None:
            raise OIPError(f"output {name!r} has dtype {arr.dtype}, which OIP cannot carry", 500)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.ravel().tolist()
        header_outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if extra:
        doc["parameters"] = extra
    doc["outputs"] = header_outputs
    head = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
