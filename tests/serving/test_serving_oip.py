"""Open Inference Protocol v2 conformance: every endpoint, JSON and binary, and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from monitor.config import Config
from monitor.records import decode
from serving.app import create_app

X = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]], dtype=np.float32)


def make_client(paths: dict[str, Path], capture: Any, **serving: Any) -> TestClient:
    config = Config.model_validate(
        {
            "models": [
                {"name": "tiny", "path": str(paths["model"]), "version": "3"},
                {"name": "fixed", "path": str(paths["fixed"]), "embedding_output": "logits"},
            ],
            "serving": {"intra_op_threads": 1, **serving},
        }
    )
    return TestClient(create_app(config, producer_factory=capture))


@pytest.fixture
def client(tiny_models: dict[str, Path], capture: Any) -> Iterator[TestClient]:
    with make_client(tiny_models, capture) as c:
        yield c


def json_request(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        **extra,
    }


def binary_request(
    x: np.ndarray, outputs: list[dict[str, Any]] | None = None, binary_out: bool = True
) -> tuple[bytes, dict[str, str]]:
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": {"binary_data_output": binary_out},
    }
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + x.tobytes(), headers


def split_binary(resp: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    hlen = int(resp.headers["inference-header-content-length"])
    header = json.loads(resp.content[:hlen])
    arrays, offset = {}, hlen
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        arrays[out["name"]] = np.frombuffer(resp.content[offset : offset + size], "<f4").reshape(
            out["shape"]
        )
        offset += size
    assert offset == len(resp.content)
    return header, arrays


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "repwatch" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("path", ["/v2/models/tiny", "/v2/models/tiny/versions/3"])
def test_model_metadata(client: TestClient, path: str) -> None:
    meta = client.get(path).json()
    assert meta["name"] == "tiny" and meta["versions"] == ["3"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "embedding"]
    assert meta["parameters"]["execution_providers"][-1] == "CPUExecutionProvider"


@pytest.mark.parametrize("path", ["/v2/models/tiny/ready", "/v2/models/tiny/versions/3/ready"])
def test_model_ready(client: TestClient, path: str) -> None:
    assert client.get(path).json() == {"name": "tiny", "ready": True}


@pytest.mark.parametrize("path", ["/v2/models/tiny/infer", "/v2/models/tiny/versions/3/infer"])
def test_infer_json(client: TestClient, tiny_expected: Any, path: str) -> None:
    r = client.post(path, json=json_request(X, id="req-7"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "tiny" and body["model_version"] == "3" and body["id"] == "req-7"
    assert body["parameters"]["record_id"] == r.headers["x-repwatch-record-id"]
    logits, emb = tiny_expected[0](X)
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["logits"]["shape"] == [2, 3] and outs["logits"]["datatype"] == "FP32"
    np.testing.assert_allclose(outs["logits"]["data"], logits.ravel(), rtol=1e-5)
    np.testing.assert_allclose(outs["embedding"]["data"], emb.ravel(), rtol=1e-5)


def test_infer_json_nested_data(client: TestClient, tiny_expected: Any) -> None:
    req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": X.tolist()}]}
    out = client.post("/v2/models/tiny/infer", json=req).json()["outputs"][0]
    np.testing.assert_allclose(out["data"], tiny_expected[0](X)[0].ravel(), rtol=1e-5)


def test_infer_binary(client: TestClient, tiny_expected: Any) -> None:
    body, headers = binary_request(X)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    header, arrays = split_binary(r)
    assert header["model_name"] == "tiny" and header["outputs"][0]["datatype"] == "FP32"
    logits, emb = tiny_expected[0](X)
    np.testing.assert_allclose(arrays["logits"], logits, rtol=1e-5)
    np.testing.assert_allclose(arrays["embedding"], emb, rtol=1e-5)


def test_binary_input_json_output_and_output_selection(
    client: TestClient, tiny_expected: Any
) -> None:
    body, headers = binary_request(X, outputs=[{"name": "embedding"}], binary_out=False)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers
    outs = r.json()["outputs"]
    assert [o["name"] for o in outs] == ["embedding"]
    np.testing.assert_allclose(outs[0]["data"], tiny_expected[0](X)[1].ravel(), rtol=1e-5)
    # One output binary, the other JSON, in one response.
    body, headers = binary_request(
        X, [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "embedding"}], False
    )
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    hlen = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:hlen])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 2 * 3 * 4
    assert len(header["outputs"][1]["data"]) == 10
    assert len(r.content) == hlen + 24


def test_record_per_row_with_pseudonymous_client(
    tiny_models: dict[str, Path], capture: Any, tiny_expected: Any
) -> None:
    with make_client(tiny_models, capture) as c:
        r = c.post("/v2/models/tiny/infer", json=json_request(X), headers={"X-Client-Id": "alice"})
        rid = r.headers["x-repwatch-record-id"]
        msgs = capture.wait(2)
    assert len(msgs) == 2
    records = [decode(v) for _, _, v in msgs]
    assert {m[1] for m in msgs} == {b"tiny"} and {m[0] for m in msgs} == {"repwatch.records"}
    assert [rec.record_id for rec in records] == [f"{rid}:0", f"{rid}:1"]
    logits, emb = tiny_expected[0](X)
    for i, rec in enumerate(records):
        np.testing.assert_allclose(rec.embedding, emb[i], rtol=1e-5)
        np.testing.assert_allclose(rec.scores, logits[i], rtol=1e-5)
        assert rec.prediction == int(np.argmax(logits[i])) and rec.model_version == "3"
        assert rec.client_id is not None and len(rec.client_id) == 32
        assert "alice" not in rec.client_id and b"alice" not in msgs[i][2]
    assert records[0].client_id == records[1].client_id


def test_keyed_client_pseudonym_is_stable(
    tiny_models: dict[str, Path], capture: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import hmac

    monkeypatch.setenv("TEST_CLIENT_KEY", "s3cret")
    with make_client(tiny_models, capture, client_id_key={"env": "TEST_CLIENT_KEY"}) as c:
        c.post("/v2/models/tiny/infer", json=json_request(X[:1]), headers={"X-Client-Id": "bob"})
        msgs = capture.wait(1)
    want = hmac.new(b"s3cret", b"bob", hashlib.sha256).digest()[:16].hex()
    assert decode(msgs[0][2]).client_id == want


def error_of(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    return str(body["error"])


def test_unknown_model_and_version(client: TestClient) -> None:
    assert "unknown model 'nope'" in error_of(client.post("/v2/models/nope/infer", json={}), 404)
    assert "unknown model" in error_of(client.get("/v2/models/nope"), 404)
    assert "no version '9'" in error_of(client.get("/v2/models/tiny/versions/9"), 404)
    msg = error_of(client.post("/v2/models/tiny/versions/9/infer", json=json_request(X)), 404)
    assert "serves '3'" in msg
    assert error_of(client.get("/v2/nothing/here"), 404)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"name": "pixels"}, "input 'pixels' is not an input of model 'tiny'; it takes 'input'"),
        ({"datatype": "FP64"}, "has datatype FP64, model 'tiny' expects FP32"),
        ({"datatype": "BYTES"}, "row 0: BYTES data must be strings"),
        ({"shape": [8]}, "has shape [8], model 'tiny' expects [-1, 4]"),
        ({"shape": [2, 3]}, "data has 8 elements but shape [2, 3] needs 6"),
        ({"data": None}, "neither 'data' nor parameters.binary_data_size"),
        ({"data": ["a"] * 8}, "cannot be read as FP32"),
    ],
)
def test_bad_tensor(client: TestClient, change: dict[str, Any], fragment: str) -> None:
    req = json_request(X)
    req["inputs"][0].update(change)
    assert fragment in error_of(client.post("/v2/models/tiny/infer", json=req), 400)


def test_fixed_dimension_shape_error(client: TestClient) -> None:
    msg = error_of(client.post("/v2/models/fixed/infer", json=json_request(X[:1])), 400)
    assert "expects [2, 4]" in msg
    assert client.post("/v2/models/fixed/infer", json=json_request(X)).status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        (b"{not json", {}, "malformed JSON in the request body"),
        (b"[1, 2]", {}, "must be a JSON object"),
        (b"{}", {}, "non-empty 'inputs' list"),
        (b'{"inputs": []}xx', {"Inference-Header-Content-Length": "abc"}, "must be an integer"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, "outside the body"),
        (b'{"inputs": [}' + b"\0" * 4, {"Inference-Header-Content-Length": "13"}, "malformed JSON"),
    ],
)
def test_malformed_bodies(
    client: TestClient, body: bytes, headers: dict[str, str], fragment: str
) -> None:
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert fragment in error_of(r, 400)


def test_binary_size_mismatches(client: TestClient) -> None:
    body, headers = binary_request(X)
    r = client.post("/v2/models/tiny/infer", content=body[:-4], headers=headers)
    assert "runs past the end of the body" in error_of(r, 400)
    r = client.post("/v2/models/tiny/infer", content=body + b"\0" * 4, headers=headers)
    assert "add up to 32" in error_of(r, 400)
    head = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    head["inputs"][0]["parameters"]["binary_data_size"] = 16
    h = json.dumps(head).encode()
    r = client.post(
        "/v2/models/tiny/infer",
        content=h + X.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(h))},
    )
    assert "binary_data_size 16 does not match shape [2, 4] of FP32 (32 bytes)" in error_of(r, 400)


def test_unknown_requested_output(client: TestClient) -> None:
    r = client.post("/v2/models/tiny/infer", json=json_request(X, outputs=[{"name": "probs"}]))
    assert "requested outputs ['probs']" in error_of(r, 400)


def test_body_too_large(tiny_models: dict[str, Path], capture: Any) -> None:
    with make_client(tiny_models, capture, max_body_bytes=200) as c:
        r = c.post("/v2/models/tiny/infer", json=json_request(np.zeros((20, 4), np.float32)))
        assert "over serving.max_body_bytes (200)" in error_of(r, 413)

        def chunks() -> Iterator[bytes]:
            yield b"x" * 150
            yield b"y" * 150

        r = c.post("/v2/models/tiny/infer", content=chunks())
        assert "over serving.max_body_bytes" in error_of(r, 413)
        assert c.post("/v2/models/tiny/infer", json=json_request(X[:1])).status_code == 200


def test_nan_policy(tiny_models: dict[str, Path], capture: Any) -> None:
    bad = X.copy()
    bad[0, 1] = np.nan
    body, headers = binary_request(bad)
    with make_client(tiny_models, capture) as c:
        r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert "contains NaN or inf (serving.nan_policy is 'reject')" in error_of(r, 400)
    capture2 = type(capture)()
    with make_client(tiny_models, capture2, nan_policy="pass") as c:
        r = c.post("/v2/models/tiny/infer", content=body, headers=headers)
        assert r.status_code == 200
        assert np.isnan(split_binary(r)[1]["logits"][0]).all()
        msgs = capture2.wait(1)
        metrics = c.get("/metrics").text
    # The NaN row cannot become a record (records reject NaN); the finite row does.
    assert len(msgs) == 1 and decode(msgs[0][2]).record_id.endswith(":1")
    assert 'repwatch_serving_records_dropped_total{reason="invalid_record"} 1.0' in metrics


def test_metrics_endpoint(client: TestClient, prom_value: Any, capture: Any) -> None:
    for _ in range(3):
        client.post("/v2/models/tiny/infer", json=json_request(X[:1]))
    client.post("/v2/models/tiny/infer", json={"inputs": "nope"})
    client.post("/v2/models/ghost/infer", json={})
    capture.wait(3)
    text = client.get("/metrics").text
    labels = {"model": "tiny", "model_version": "3", "mode": "local"}
    assert prom_value(text, "repwatch_serving_request_duration_seconds_count", **labels) == 3
    assert (
        prom_value(
            text, "repwatch_serving_inference_errors_total", model="tiny", kind="bad_request"
        )
        == 1
    )
    assert (
        prom_value(text, "repwatch_serving_inference_errors_total", model="", kind="not_found") == 1
    )
    assert prom_value(text, "repwatch_serving_records_enqueued_total", model="tiny") == 3
    assert prom_value(text, "repwatch_serving_records_sent_total", model="tiny") == 3
    assert prom_value(text, "repwatch_serving_record_queue_capacity") == 10000
    assert "repwatch_serving_record_queue_depth" in text
    assert "repwatch_serving_producer_errors_total" in text


def test_streaming_off_sends_nothing(tiny_models: dict[str, Path], capture: Any) -> None:
    with make_client(tiny_models, capture, stream_records=False) as c:
        assert c.post("/v2/models/tiny/infer", json=json_request(X)).status_code == 200
    assert capture.messages == []


def test_dynamic_batching_matches_unbatched(
    tiny_models: dict[str, Path], capture: Any, live_server: Any, tiny_expected: Any
) -> None:
    import concurrent.futures

    import httpx

    config = Config.model_validate(
        {
            "models": [{"name": "tiny", "path": str(tiny_models["model"])}],
            "serving": {"dynamic_batching": True, "batch_timeout_ms": 5, "max_batch_size": 8},
        }
    )
    server = live_server(create_app(config, producer_factory=capture))
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(1 + i % 3, 4)).astype(np.float32) for i in range(24)]

    def call(x: np.ndarray) -> np.ndarray:
        with httpx.Client(trust_env=False) as h:
            r = h.post(f"{server.url}/v2/models/tiny/infer", json=json_request(x))
            return np.array(r.json()["outputs"][0]["data"]).reshape(-1, 3)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, xs))
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got, tiny_expected[0](x)[0], rtol=1e-5, atol=1e-6)
    meta = httpx.get(f"{server.url}/v2/models/tiny", trust_env=False).json()
    assert meta["parameters"]["dynamic_batching"] is True
