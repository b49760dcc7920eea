"""Tap mode against a second repwatch instance (a real uvicorn server) as the upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from monitor.config import Config
from monitor.localstack import free_port
from monitor.records import decode
from serving.app import create_app

pytestmark = pytest.mark.integration

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, -3.0, 0.0]], dtype=np.float32)


@pytest.fixture
def upstream(tiny_models: dict[str, Path], live_server: Any) -> Any:
    config = Config.model_validate(
        {
            "models": [{"name": "tiny", "path": str(tiny_models["model"]), "version": "2"}],
            "serving": {"stream_records": False},
        }
    )
    return live_server(create_app(config))


def tap_config(url: str, encoder: Path) -> Config:
    return Config.model_validate(
        {"models": [{"name": "tiny", "upstream_url": url, "encoder_path": str(encoder)}]}
    )


@pytest.fixture
def tap(upstream: Any, tiny_models: dict[str, Path], capture: Any) -> Iterator[TestClient]:
    app = create_app(tap_config(upstream.url, tiny_models["encoder"]), producer_factory=capture)
    with TestClient(app) as client:
        yield client


def json_body(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def test_tap_json_returns_upstream_unchanged_and_records_ssl_embedding(
    tap: TestClient, upstream: Any, capture: Any, tiny_expected: Any
) -> None:
    body = json_body(X)
    direct = httpx.post(f"{upstream.url}/v2/models/tiny/infer", content=body, trust_env=False)
    r = tap.post("/v2/models/tiny/infer", content=body, headers={"X-Client-Id": "mallory"})
    assert r.status_code == 200
    assert r.content == direct.content
    assert r.headers["content-type"] == direct.headers["content-type"]
    rid = r.headers["x-repwatch-record-id"]
    records = [decode(v) for _, _, v in capture.wait(2)]
    assert [rec.record_id for rec in records] == [f"{rid}:0", f"{rid}:1"]
    logits, _ = tiny_expected[0](X)
    emb = tiny_expected[1](X)
    for i, rec in enumerate(records):
        assert rec.model == "tiny" and rec.embedding.shape == (6,)  # the encoder's, not the model's
        np.testing.assert_allclose(rec.embedding, emb[i], rtol=1e-5, atol=1e-6)
        assert rec.prediction == int(np.argmax(logits[i]))
        np.testing.assert_allclose(rec.scores, logits[i], rtol=1e-5)
        assert rec.client_id and "mallory" not in rec.client_id


def test_tap_binary_and_versions_path(
    tap: TestClient, upstream: Any, capture: Any, tiny_expected: Any
) -> None:
    body, headers = binary_body(X[:1])
    path = "/v2/models/tiny/versions/2/infer"
    direct = httpx.post(upstream.url + path, content=body, headers=headers, trust_env=False)
    r = tap.post(path, content=body, headers=headers)
    assert r.status_code == 200 and r.content == direct.content
    assert (
        r.headers["inference-header-content-length"]
        == direct.headers["inference-header-content-length"]
    )
    rec = decode(capture.wait(1)[0][2])
    assert rec.record_id == r.headers["x-repwatch-record-id"]
    np.testing.assert_allclose(rec.embedding, tiny_expected[1](X[:1])[0], rtol=1e-5, atol=1e-6)


def test_tap_forwards_metadata_and_errors(tap: TestClient, upstream: Any, capture: Any) -> None:
    meta = tap.get("/v2/models/tiny")
    assert meta.status_code == 200 and meta.json()["versions"] == ["2"]
    assert tap.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    bad = json.loads(json_body(X))
    bad["inputs"][0]["shape"] = [8]
    r = tap.post("/v2/models/tiny/infer", json=bad)
    assert r.status_code == 400 and "expects [-1, 4]" in r.json()["error"]  # the upstream's words
    assert "x-repwatch-record-id" not in r.headers
    assert capture.messages == []
    text = tap.get("/metrics").text
    assert 'repwatch_serving_inference_errors_total{kind="upstream",model="tiny"} 1.0' in text


def test_tap_upstream_down_is_502(tiny_models: dict[str, Path], capture: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = create_app(tap_config(url, tiny_models["encoder"]), producer_factory=capture)
    with TestClient(app) as client:
        r = client.post("/v2/models/tiny/infer", content=json_body(X))
    assert r.status_code == 502 and "is unreachable" in r.json()["error"]


def test_tap_needs_an_encoder(tiny_models: dict[str, Path]) -> None:
    config = Config.model_validate(
        {"models": [{"name": "tiny", "upstream_url": "http://127.0.0.1:1"}]}
    )
    with pytest.raises(ValueError, match="tap mode needs encoder_path"):
        create_app(config)


def test_tapped_request_over_the_row_limit_is_answered_but_not_streamed(
    upstream: Any, tiny_models: dict[str, Path], capture: Any
) -> None:
    """The upstream decides what it serves; the sidecar still bounds the records it builds."""
    config = Config.model_validate(
        {
            "models": [
                {"name": "tiny", "upstream_url": upstream.url,
                 "encoder_path": str(tiny_models["encoder"])}
            ],
            "serving": {"limits": {"max_rows": 3}},
        }
    )
    many = np.tile(X, (4, 1))  # 8 rows: the upstream takes them, the tap's records refuse them
    app = create_app(config, producer_factory=capture)
    with TestClient(app) as client:
        big = client.post("/v2/models/tiny/infer", content=json_body(many))
        small = client.post("/v2/models/tiny/infer", content=json_body(X))
        assert big.status_code == 200 and len(big.json()["outputs"][0]["data"]) > 0
        assert small.status_code == 200
        records = [decode(v) for _, _, v in capture.wait(2)]
        rid = small.headers["x-repwatch-record-id"]
        assert [r.record_id for r in records] == [f"{rid}:0", f"{rid}:1"]
        text = client.get("/metrics").text
    assert 'repwatch_serving_records_dropped_total{reason="rows"} 8.0' in text
