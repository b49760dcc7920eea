"""Open Inference Protocol gRPC messages <-> the sidecar's :class:`~serving.oip.InferRequest`.

Pure functions, like :mod:`serving.oip` for REST, with the same checks: declared shapes are
validated by the sidecar's :class:`~serving.limits.Limits` (rank, element budget) *before*
anything is allocated, the data must match the declared shape exactly, and unknown parameters
are refused. Inputs come either as typed ``contents`` or, all of them, as
``raw_input_contents`` (little-endian bytes, what Triton's client sends); outputs always go back
as ``raw_output_contents`` (what Triton answers; Triton's and KServe's clients both read them).
FP16 has no typed field in the protocol: it travels raw only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from serving.grpc import grpc_predict_v2_pb2 as pb
from serving.oip import DATATYPE_OF, DATATYPES, InferRequest, OIPError, Tensor

if TYPE_CHECKING:
    from serving.limits import Limits

# The typed-contents field of each datatype, and the element type the protocol gives it.
CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype("?")),
    "INT8": ("int_contents", np.dtype("<i4")),
    "INT16": ("int_contents", np.dtype("<i4")),
    "INT32": ("int_contents", np.dtype("<i4")),
    "INT64": ("int64_contents", np.dtype("<i8")),
    "UINT8": ("uint_contents", np.dtype("<u4")),
    "UINT16": ("uint_contents", np.dtype("<u4")),
    "UINT32": ("uint_contents", np.dtype("<u4")),
    "UINT64": ("uint64_contents", np.dtype("<u8")),
    "FP32": ("fp32_contents", np.dtype("<f4")),
    "FP64": ("fp64_contents", np.dtype("<f8")),
}
_ALL_CONTENTS = sorted({f for f, _ in CONTENTS.values()} | {"bytes_contents"})


def parameter_value(p: pb.InferParameter) -> Any:
    """The Python value of an ``InferParameter`` (None when no choice is set)."""
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def parameters(params: Any) -> dict[str, Any]:
    return {k: parameter_value(v) for k, v in params.items()}


def set_parameter(params: Any, key: str, value: Any) -> None:
    """Store a Python value in a ``map<string, InferParameter>``."""
    p = params[key]
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)


def _typed(tensor: Any, datatype: str, dtype: np.dtype[Any], count: int) -> NDArray[Any]:
    name = tensor.name
    if datatype not in CONTENTS:
        raise OIPError(f"input {name!r}: {datatype} has no typed contents; send it in "
                       "raw_input_contents")
    field, wire = CONTENTS[datatype]
    contents = tensor.contents
    others = [f for f in _ALL_CONTENTS if f != field and len(getattr(contents, f))]
    if others:
        raise OIPError(f"input {name!r} is {datatype}, whose data belongs in contents.{field}, "
                       f"but it has {others}")
    values = getattr(contents, field)
    if len(values) != count:
        raise OIPError(f"input {name!r}: contents.{field} has {len(values)} elements but "
                       f"shape {list(tensor.shape)} needs {count}")
    arr = np.fromiter(values, dtype=wire, count=count)
    if dtype != wire:  # INT8/16, UINT8/16 arrive widened: refuse values that do not fit
        info = np.iinfo(dtype)
        if count and (arr.min() < info.min or arr.max() > info.max):
            raise OIPError(f"input {name!r}: values outside the range of {datatype} "
                           f"[{info.min}, {info.max}]")
        arr = arr.astype(dtype)
    return arr


def to_infer_request(
    msg: pb.ModelInferRequest,
    limits: Limits | None,
    request_parameters: tuple[str, ...] = ("timeout",),
    input_parameters: tuple[str, ...] = (),
    output_parameters: tuple[str, ...] = (),
) -> InferRequest:
    """Validate a ``ModelInferRequest`` and turn it into the sidecar's request."""
    if not msg.inputs:
        raise OIPError("the inference request needs at least one input")
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise OIPError(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs: "
                       "give every input's bytes, in the order of 'inputs', or none")
    params = parameters(msg.parameters)
    _known(params, request_parameters, "request")
    timeout = params.get("timeout")
    if timeout is not None and (isinstance(timeout, bool | str) or timeout <= 0):
        raise OIPError("parameters.timeout must be a positive number of microseconds")
    inputs: list[Tensor] = []
    total = 0
    for i, t in enumerate(msg.inputs):
        name = t.name
        if not name:
            raise OIPError(f"inputs[{i}] needs a name")
        dtype = DATATYPES.get(t.datatype)
        if dtype is None or dtype.kind == "O":  # BYTES (variable length) is REST-only
            raise OIPError(f"input {name!r}: datatype {t.datatype!r} is not supported; "
                           f"use one of {sorted(DATATYPES)}")
        _known(parameters(t.parameters), input_parameters, f"input {name!r}")
        shape = list(t.shape)
        count = _count(shape, name, limits)
        total += count
        if limits is not None:
            limits.elements(total)
        if raw:
            data = raw[i]
            if t.contents.ByteSize():
                raise OIPError(f"input {name!r} has typed contents and raw_input_contents: "
                               "send one or the other")
            if len(data) != count * dtype.itemsize:
                raise OIPError(f"input {name!r}: raw_input_contents[{i}] is {len(data)} bytes but "
                               f"shape {shape} of {t.datatype} needs {count * dtype.itemsize}")
            arr = np.frombuffer(data, dtype=dtype, count=count)
        else:
            arr = _typed(t, t.datatype, dtype, count)
        inputs.append(Tensor(name, t.datatype, shape, arr.reshape(shape)))
    outputs: dict[str, bool] | None = None
    if msg.outputs:
        outputs = {}
        for j, o in enumerate(msg.outputs):
            if not o.name:
                raise OIPError(f"outputs[{j}] needs a name")
            _known(parameters(o.parameters), output_parameters, f"output {o.name!r}")
            outputs[o.name] = True
    return InferRequest(id=msg.id or None, inputs=inputs, outputs=outputs, binary_default=True,
                        parameters=params)


def _count(shape: list[int], name: str, limits: Limits | None) -> int:
    if limits is not None:
        return limits.shape(shape, name)
    if any(d < 0 for d in shape):
        raise OIPError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = 1
    for d in shape:
        count *= d
    return count


def _known(params: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(k for k in params if k not in allowed)
    if unknown:
        raise OIPError(f"{where} parameters {unknown} are not implemented by this server; it "
                       f"knows {list(allowed)}")


def to_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, NDArray[Any], bool]],
    extra: dict[str, Any] | None = None,
) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` for the model's outputs (raw little-endian contents)."""
    resp = pb.ModelInferResponse(model_name=model_name, model_version=model_version,
                                 id=request_id or "")
    for key, value in (extra or {}).items():
        set_parameter(resp.parameters, key, value)
    for name, arr, _binary in outputs:
        datatype = DATATYPE_OF.get(arr.dtype)
        if datatype is None:
            raise OIPError(f"output {name!r} has dtype {arr.dtype}, which OIP cannot carry", 500)
        resp.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        resp.raw_output_contents.append(
            np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        )
    return resp


def model_metadata(doc: dict[str, Any]) -> pb.ModelMetadataResponse:
    """``ModelMetadataResponse`` from the REST metadata document of a model."""
    def tensors(specs: list[dict[str, Any]]) -> list[Any]:
        return [pb.ModelMetadataResponse.TensorMetadata(
            name=s["name"], datatype=s["datatype"], shape=s["shape"]) for s in specs]

    return pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"],
                                    platform=doc["platform"], inputs=tensors(doc["inputs"]),
                                    outputs=tensors(doc["outputs"]))
