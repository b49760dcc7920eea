"""Property-based fuzz of the sidecar's routes (hypothesis): JSON infer, binary infer,
``/v1/records`` and ``/v1/feedback``. Whatever arrives, the answer is never a 5xx, errors are
JSON ``{"error": ...}``, and a valid request is answered after each bad one.

A bounded number of examples runs in the default suite; ``-m slow`` runs many more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import Config
from serving.app import create_app

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
SLOW = settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

VALID_INFER = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2, 3, 4]}]
}
VALID_RECORDS = {"model": "external", "records": [{"embedding": [0.1, 0.2, 0.3]}]}
VALID_FEEDBACK = {"model": "tiny", "feedback": [{"id": "r1", "label": 1}]}


@pytest.fixture(scope="module")
def client(tiny_models: dict[str, Path]) -> Iterator[TestClient]:
    config = Config.model_validate(
        {
            "models": [
                {"name": "tiny", "path": str(tiny_models["model"])},
                {"name": "external", "embedding_dim": 3},
            ],
            "serving": {"intra_op_threads": 1, "queue_size": 200},
        }
    )
    from tests.serving.conftest import CaptureProducer

    with TestClient(
        create_app(config, producer_factory=CaptureProducer()), raise_server_exceptions=False
    ) as c:
        yield c


# ---- strategies --------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
dims = st.one_of(
    st.integers(min_value=-3, max_value=8),
    st.sampled_from([0, 1, 4, 2**31, 2**62, 2**63, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False, max_value=1e6),
)
shapes = st.one_of(st.lists(dims, max_size=10), st.just([1] * 65), json_values)
datatypes = (
    st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "BF16", "fp32", ""]) | scalars
)


@st.composite
def tensor_specs(draw: Any, binary: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": draw(st.sampled_from(["input", "x", ""]) | scalars),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    if binary:
        spec["parameters"] = draw(
            st.fixed_dictionaries(
                {"binary_data_size": st.integers(-5, 2**40) | st.sampled_from([0, 16, 64])}
            )
            | st.dictionaries(st.text(max_size=10), json_values, max_size=2)
        )
    else:
        spec["data"] = draw(
            st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20) | json_values
        )
        if draw(st.booleans()):
            spec["parameters"] = draw(json_values)
    return spec


@st.composite
def infer_docs(draw: Any, binary: bool) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensor_specs(binary), max_size=3))}
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["binary_data_output", "timeout", "class_count"])
                | st.text(max_size=5),
                json_values,
                max_size=3,
            )
        )
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["logits", "embedding", "nope"])})
                | json_values,
                max_size=3,
            )
        )
    return doc


entry_values = {
    "embedding": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5)
    | json_values
    | st.binary(max_size=16),
    "id": json_values | st.text(max_size=300),
    "timestamp_ms": st.integers(min_value=-(2**70), max_value=2**70) | json_values,
    "prediction": json_values,
    "scores": st.lists(st.floats(), max_size=4) | json_values,
    "client_id": json_values,
    "label": json_values,
}


@st.composite
def ingest_docs(draw: Any, key: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    entries = draw(
        st.lists(st.fixed_dictionaries({}, optional=entry_values) | json_values, max_size=4)
    )
    doc: dict[str, Any] = {
        "model": draw(st.sampled_from(["external", "tiny", "nope"]) | scalars),
        key: entries,
    }
    if draw(st.booleans()):
        doc["model_version"] = draw(json_values)
    return doc


# ---- the property ------------------------------------------------------------------------
def assert_survives(client: TestClient, r: Any, path: str, valid: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert "error" in r.json(), r.text[:300]
    ok = client.post(path, json=valid)
    assert ok.status_code in (200, 202), ok.text


def send_json(client: TestClient, path: str, doc: Any, raw: bool) -> Any:
    try:
        body = json.dumps(doc, allow_nan=True).encode()
    except (ValueError, TypeError, RecursionError):
        body = b"{"
    if raw:
        body = body[: len(body) // 2]  # truncated
    return client.post(path, content=body, headers={"content-type": "application/json"})


def _infer_json(client: TestClient, doc: Any, raw: bool) -> None:
    path = "/v2/models/tiny/infer"
    assert_survives(client, send_json(client, path, doc, raw), path, VALID_INFER)


def _infer_binary(client: TestClient, doc: Any, blob: bytes, header_length: Any) -> None:
    path = "/v2/models/tiny/infer"
    try:
        head = json.dumps(doc, allow_nan=True).encode()
    except (ValueError, TypeError, RecursionError):
        head = b"{}"
    hlen = str(len(head)) if header_length is None else str(header_length)
    r = client.post(path, content=head + blob, headers={"inference-header-content-length": hlen})
    assert_survives(client, r, path, VALID_INFER)


def _ingest(client: TestClient, path: str, doc: Any, msgpack_body: bool, valid: Any) -> None:
    if msgpack_body:
        import msgpack

        try:
            body = msgpack.packb(doc, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            body = b"\xc1"
        r = client.post(path, content=body, headers={"content-type": "application/msgpack"})
    else:
        r = send_json(client, path, doc, False)
    assert_survives(client, r, path, valid)


header_lengths = st.none() | st.integers(-10, 10**6) | st.sampled_from(["x", "", "1e3"])


@pytest.mark.parametrize(
    "budget", [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
)
def test_fuzz_json_infer(client: TestClient, budget: settings) -> None:
    budget(given(infer_docs(False), st.booleans())(lambda d, raw: _infer_json(client, d, raw)))()


@pytest.mark.parametrize(
    "budget", [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
)
def test_fuzz_binary_infer(client: TestClient, budget: settings) -> None:
    blobs = st.binary(max_size=80) | st.just(np.ones(4, np.float32).tobytes())
    budget(
        given(infer_docs(True), blobs, header_lengths)(
            lambda d, b, h: _infer_binary(client, d, b, h)
        )
    )()


@pytest.mark.parametrize(
    "budget", [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
)
def test_fuzz_records(client: TestClient, budget: settings) -> None:
    budget(
        given(ingest_docs("records"), st.booleans())(
            lambda d, m: _ingest(client, "/v1/records", d, m, VALID_RECORDS)
        )
    )()


@pytest.mark.parametrize(
    "budget", [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
)
def test_fuzz_feedback(client: TestClient, budget: settings) -> None:
    budget(
        given(ingest_docs("feedback"), st.booleans())(
            lambda d, m: _ingest(client, "/v1/feedback", d, m, VALID_FEEDBACK)
        )
    )()


def test_fuzz_can_fail() -> None:
    """The property rejects a 5xx (so the fuzz tests above can fail)."""

    class Fake:
        status_code = 500
        text = "boom"

    with pytest.raises(AssertionError):
        assert_survives(None, Fake(), "/", {})  # type: ignore[arg-type]
