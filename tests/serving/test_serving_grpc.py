"""The Open Inference Protocol over gRPC, driven by Triton's and KServe's own gRPC clients.

The sidecar runs under a real uvicorn with ``serving.grpc_port`` set. Triton's client runs in
this process; KServe's in a child process, because the two SDKs register the same protobuf
names ('inference.*') in protobuf's default pool and cannot be imported side by side (the
sidecar's own messages live in a private pool, so it can sit beside either).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from monitor.config import Config
from monitor.localstack import free_port
from monitor.records import decode
from serving.app import create_app
from serving.grpc import codec
from serving.grpc import grpc_predict_v2_pb2 as pb

X = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]], dtype=np.float32)


@pytest.fixture
def sidecar(tiny_models: dict[str, Path], capture: Any, live_server: Any) -> Iterator[Any]:
    port = free_port()
    config = Config.model_validate({
        "models": [{"name": "tiny", "path": str(tiny_models["model"]), "version": "3"}],
        "serving": {"intra_op_threads": 1, "grpc_port": port,
                    "limits": {"max_elements": 4096, "max_rank": 8}},
    })
    server = live_server(create_app(config, producer_factory=capture))
    server.grpc = f"127.0.0.1:{port}"
    yield server


def _triton_input(x: np.ndarray, datatype: str = "FP32") -> Any:
    inp = triton.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def test_triton_client_health_metadata_and_infer_with_records(
    sidecar: Any, capture: Any, tiny_expected: Any
) -> None:
    with triton.InferenceServerClient(sidecar.grpc) as c:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("tiny")
        assert c.is_model_ready("tiny", "3")
        meta = c.get_model_metadata("tiny", as_json=True)
        assert meta["name"] == "tiny" and meta["versions"] == ["3"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
        assert c.get_server_metadata(as_json=True)["name"] == "repwatch"
        result = c.infer("tiny", [_triton_input(X)], request_id="req-1",
                         headers={"x-client-id": "alice"})
    logits, emb = tiny_expected[0](X)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("embedding"), emb, rtol=1e-6)
    response = result.get_response()
    assert response.id == "req-1" and response.model_version == "3"
    rid = response.parameters["record_id"].string_param
    # The same record stream as REST: one record per row, the client id pseudonymised.
    records = [decode(v) for _, _, v in capture.wait(2)]
    assert [r.record_id for r in records] == [f"{rid}:0", f"{rid}:1"]
    np.testing.assert_allclose(records[1].embedding, emb[1], rtol=1e-5)
    assert records[0].client_id is not None and "alice" not in records[0].client_id


def test_triton_client_requested_outputs_and_integer_inputs(sidecar: Any) -> None:
    with triton.InferenceServerClient(sidecar.grpc) as c:
        result = c.infer("tiny", [_triton_input(X)],
                         outputs=[triton.InferRequestedOutput("embedding")])
        assert result.as_numpy("logits") is None and result.as_numpy("embedding").shape == (2, 5)
        # An INT32 tensor where the model takes FP32: refused by name, not run.
        with pytest.raises(InferenceServerException) as exc:
            c.infer("tiny", [_triton_input(X.astype(np.int32), "INT32")])
        assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "input" in exc.value.message()


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        (lambda c: c.infer("nope", [_triton_input(X)]), "NOT_FOUND", "unknown model 'nope'"),
        (lambda c: c.infer("tiny", [_triton_input(X)], model_version="9"), "NOT_FOUND",
         "no version '9'"),
        (lambda c: c.get_model_metadata("nope"), "NOT_FOUND", "unknown model"),
        # Triton's classification extension is not implemented: refused, never ignored.
        (lambda c: c.infer("tiny", [_triton_input(X)],
                           outputs=[triton.InferRequestedOutput("logits", class_count=2)]),
         "INVALID_ARGUMENT", "['classification'] are not implemented"),
        (lambda c: c.infer("tiny", [_triton_input(X)], priority=3), "INVALID_ARGUMENT",
         "['priority'] are not implemented"),
        (lambda c: c.infer("tiny", [_triton_input(np.zeros((2, 4, 1, 1, 1, 1, 1, 1, 1),
                                                            np.float32))]),
         "INVALID_ARGUMENT", "max_rank"),
    ],
)
def test_triton_client_errors_name_the_problem(
    sidecar: Any, call: Any, code: str, fragment: str
) -> None:
    with triton.InferenceServerClient(sidecar.grpc) as c:
        with pytest.raises(InferenceServerException) as exc:
            call(c)
        assert exc.value.status() == f"StatusCode.{code}", exc.value.message()
        assert fragment in exc.value.message()
        assert c.is_server_live()  # and the server answers the next call


def _stub(address: str) -> Any:
    from serving.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    return GRPCInferenceServiceStub(grpc.insecure_channel(address))


def _request(shape: list[int], raw: list[bytes] | None = None, **typed: Any) -> Any:
    req = pb.ModelInferRequest(model_name="tiny")
    t = req.inputs.add(name="input", datatype="FP32", shape=shape)
    for field, values in typed.items():
        getattr(t.contents, field).extend(values)
    if raw is not None:
        req.raw_input_contents.extend(raw)
    return req


@pytest.mark.parametrize(
    ("req", "code", "fragment"),
    [
        # Declared shapes are checked before anything is allocated.
        (_request([0, 2**62], raw=[b""]), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_elements"),
        (_request([-1, 4], raw=[b""]), grpc.StatusCode.INVALID_ARGUMENT, "non-negative"),
        (_request([2, 4], raw=[b"\0" * 31]), grpc.StatusCode.INVALID_ARGUMENT,
         "is 31 bytes but shape [2, 4] of FP32 needs 32"),
        (_request([2, 4], fp32_contents=[1.0] * 7), grpc.StatusCode.INVALID_ARGUMENT,
         "has 7 elements but shape [2, 4] needs 8"),
        (_request([2, 4], int_contents=[1] * 8), grpc.StatusCode.INVALID_ARGUMENT,
         "belongs in contents.fp32_contents"),
        (_request([2, 4], fp32_contents=[float("nan")] * 8), grpc.StatusCode.INVALID_ARGUMENT,
         "NaN"),
        (_request([2, 4], raw=[X.tobytes(), b""]), grpc.StatusCode.INVALID_ARGUMENT,
         "2 entries for 1 inputs"),
        (pb.ModelInferRequest(model_name="tiny"), grpc.StatusCode.INVALID_ARGUMENT,
         "at least one input"),
    ],
)
def test_bad_messages_are_client_errors(sidecar: Any, req: Any, code: Any, fragment: str) -> None:
    stub = _stub(sidecar.grpc)
    with pytest.raises(grpc.RpcError) as exc:
        stub.ModelInfer(req, timeout=10)
    assert exc.value.code() == code and fragment in exc.value.details()
    ok = stub.ModelInfer(_request([2, 4], fp32_contents=X.ravel().tolist()), timeout=10)
    assert [o.name for o in ok.outputs] == ["logits", "embedding"]


def test_a_message_over_max_body_bytes_is_refused_by_grpc(
    tiny_models: dict[str, Path], capture: Any, live_server: Any
) -> None:
    port = free_port()
    config = Config.model_validate({
        "models": [{"name": "tiny", "path": str(tiny_models["model"])}],
        "serving": {"grpc_port": port, "max_body_bytes": 1000},
    })
    live_server(create_app(config, producer_factory=capture))
    big = np.zeros((100, 4), np.float32)
    with pytest.raises(grpc.RpcError) as exc:
        _stub(f"127.0.0.1:{port}").ModelInfer(_request([100, 4], raw=[big.tobytes()]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_count_grpc_calls_by_method_and_code(sidecar: Any, prom_value: Any) -> None:
    import urllib.request

    stub = _stub(sidecar.grpc)
    stub.ModelInfer(_request([2, 4], raw=[X.tobytes()]), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(pb.ModelInferRequest(model_name="nope"), timeout=10)
    text = urllib.request.urlopen(f"{sidecar.url}/metrics", timeout=10).read().decode()
    count = "repwatch_serving_grpc_requests_total"
    assert prom_value(text, count, method="ModelInfer", code="OK") == 1
    assert prom_value(text, count, method="ModelInfer", code="NOT_FOUND") == 1
    assert prom_value(text, "repwatch_serving_grpc_request_duration_seconds_count",
                      model="tiny", model_version="3") == 1
    # REST's histogram is not touched by gRPC calls.
    assert prom_value(text, "repwatch_serving_request_duration_seconds_count", model="tiny",
                      model_version="3", mode="local") == 0


def test_typed_contents_are_range_checked() -> None:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype="INT8", shape=[3])
    t.contents.int_contents.extend([1, -128, 200])
    with pytest.raises(Exception, match=r"outside the range of INT8 \[-128, 127\]"):
        codec.to_infer_request(req, None)
    t.contents.int_contents[2] = 127
    arr = codec.to_infer_request(req, None).inputs[0].array
    assert arr.dtype == np.int8 and arr.tolist() == [1, -128, 127]
    fp16 = pb.ModelInferRequest(model_name="m")
    fp16.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(Exception, match="FP16 has no typed contents"):
        codec.to_infer_request(fp16, None)


KSERVE_CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    import grpc
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def main(url):
        x = np.array(json.loads(sys.argv[2]), dtype=np.float32)
        out = {}
        async with InferenceGRPCClient(url, retries=0, timeout=20) as c:
            out["live"] = await c.is_server_live()
            out["ready"] = await c.is_server_ready()
            out["model_ready"] = await c.is_model_ready("tiny")
            for binary in (True, False):  # raw_input_contents, then typed contents
                inp = InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                resp = await c.infer(InferRequest("tiny", [inp], request_id=f"k-{binary}"))
                out[f"binary={binary}"] = {
                    "id": resp.id,
                    "outputs": {o.name: o.as_numpy().tolist() for o in resp.outputs},
                    "record_id": str(resp.parameters["record_id"].string_param),
                }
            try:
                await c.infer(InferRequest("nope", [inp]))
            except grpc.aio.AioRpcError as exc:
                out["error"] = [exc.code().name, exc.details()]
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
""")


def test_kserve_client_health_and_infer_raw_and_typed(
    sidecar: Any, capture: Any, tiny_expected: Any
) -> None:
    run = subprocess.run([sys.executable, "-c", KSERVE_CLIENT, sidecar.grpc,
                          json.dumps(X.tolist())], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["model_ready"]
    logits, emb = tiny_expected[0](X)
    for binary in (True, False):
        got = out[f"binary={binary}"]
        assert got["id"] == f"k-{binary}" and got["record_id"]
        np.testing.assert_allclose(got["outputs"]["logits"], logits, rtol=1e-6)
        np.testing.assert_allclose(got["outputs"]["embedding"], emb, rtol=1e-6)
    assert out["error"][0] == "NOT_FOUND" and "unknown model 'nope'" in out["error"][1]
    assert len(capture.wait(4)) == 4  # two requests of two rows each became records


def test_checked_in_stubs_are_what_the_script_generates(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    subprocess.run(["bash", str(root / "scripts" / "gen-grpc.sh")], check=True, timeout=120,
                   capture_output=True, env={"OUT": str(tmp_path), "PYTHON": sys.executable,
                                              "PATH": "/usr/bin:/bin"})
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi",
                 "grpc_predict_v2_pb2_grpc.py"):
        generated = (tmp_path / "serving" / "grpc" / name).read_text()
        assert generated == (root / "serving" / "grpc" / name).read_text(), (
            f"serving/grpc/{name} differs from what scripts/gen-grpc.sh generates: rerun it")


def _fuzz_requests() -> Any:
    from hypothesis import strategies as st

    dims = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**62, 10**12]))
    datatypes = st.sampled_from(["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8",
                                 "BOOL", "BYTES", "BF16", "", "fp32"])
    contents = st.sampled_from(["fp32_contents", "fp64_contents", "int_contents",
                                "int64_contents", "uint_contents", "bool_contents"])

    @st.composite
    def build(draw: Any) -> Any:
        req = pb.ModelInferRequest(model_name=draw(st.sampled_from(["tiny", "nope", ""])),
                                   model_version=draw(st.sampled_from(["", "3", "x"])))
        raw = draw(st.booleans())
        for i in range(draw(st.integers(0, 3))):
            t = req.inputs.add(name=draw(st.sampled_from(["input", "other", ""])),
                               datatype=draw(datatypes),
                               shape=draw(st.lists(dims, max_size=10)))
            if raw:
                req.raw_input_contents.append(draw(st.binary(max_size=64)))
            else:
                field = draw(contents)
                values = draw(st.lists(st.integers(-300, 300), max_size=40))
                if field in ("fp32_contents", "fp64_contents"):
                    getattr(t.contents, field).extend(float(v) for v in values)
                elif field == "bool_contents":
                    t.contents.bool_contents.extend(v > 0 for v in values)
                elif field.startswith("uint"):
                    getattr(t.contents, field).extend(abs(v) for v in values)
                else:
                    getattr(t.contents, field).extend(values)
            if draw(st.booleans()):
                key = draw(st.sampled_from(["timeout", "priority", "binary_data_size", "x"]))
                codec.set_parameter(t.parameters if i else req.parameters, key,
                                    draw(st.sampled_from([0, -5, 100, 1.5, "s", True])))
        if draw(st.booleans()):
            req.outputs.add(name=draw(st.sampled_from(["logits", "embedding", "nope", ""])))
        return req

    return build()


def _fuzz(sidecar: Any, examples: int) -> None:
    from hypothesis import HealthCheck, given, settings

    stub = _stub(sidecar.grpc)
    valid = _request([2, 4], raw=[X.tobytes()])
    client_errors = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                     grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}

    @settings(max_examples=examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_fuzz_requests())
    def check(req: Any) -> None:
        try:
            stub.ModelInfer(req, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in client_errors, (exc.code(), exc.details(), req)
        assert stub.ModelInfer(valid, timeout=10).outputs

    check()


def test_fuzzed_messages_get_client_errors_and_the_server_keeps_answering(sidecar: Any) -> None:
    """Whatever a client sends, the answer is OK or a client-error code, never INTERNAL or
    UNKNOWN, and a valid call right after it succeeds."""
    _fuzz(sidecar, 80)


@pytest.mark.slow
def test_fuzzed_messages_many(sidecar: Any) -> None:
    _fuzz(sidecar, 3000)
