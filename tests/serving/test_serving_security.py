"""The sidecar streams what the security detectors read: penultimate features, input hashes."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from detectors.adversarial.hashing import window_hashes
from monitor.config import Config
from monitor.records import decode, encode
from serving.app import create_app
from serving.encoders.models import DIGITS_CLASSIFIER, digits_data


def _config(**model: Any) -> Config:
    return Config.model_validate({"models": [{
        "name": "digits", "path": str(DIGITS_CLASSIFIER), "embedding_output": "embedding",
        "logits_output": "logits", **model}]})


def test_penultimate_and_window_hashes_are_streamed_as_the_graph_and_hasher_give(
        capture: Any) -> None:
    cfg = _config(penultimate_output="penultimate", input_hashes={"value_range": [0, 16]})
    X = digits_data()[0][:3]
    with TestClient(create_app(cfg, producer_factory=capture)) as c:
        r = c.post("/v2/models/digits/infer", headers={"X-Client-Id": "eve"}, json={
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 64],
                        "data": X.ravel().tolist()}]})
        assert r.status_code == 200, r.text
        msgs = capture.wait(3)
    sess = ort.InferenceSession(str(DIGITS_CLASSIFIER), providers=["CPUExecutionProvider"])
    pen = sess.run(["penultimate"], {sess.get_inputs()[0].name: X})[0]
    recs = [decode(v) for _, _, v in msgs]
    for i, rec in enumerate(recs):
        assert rec.features is not None and set(rec.features) == {"penultimate"}
        np.testing.assert_allclose(rec.features["penultimate"], pen[i], rtol=1e-6)
        assert rec.input_hashes is not None and rec.input_hashes.dtype == np.uint64
        np.testing.assert_array_equal(rec.input_hashes,
                                      window_hashes(X[i:i + 1], value_range=(0, 16))[0])
        assert rec.client_id and rec.client_id != "eve" and rec.input_digest
    assert [encode(rec) for rec in recs] == [v for _, _, v in msgs]


def test_nothing_extra_is_streamed_unless_the_model_asks(capture: Any) -> None:
    with TestClient(create_app(_config(), producer_factory=capture)) as c:
        c.post("/v2/models/digits/infer", json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]})
        rec = decode(capture.wait(1)[0][2])
    assert rec.features is None and rec.input_hashes is None


def test_a_penultimate_output_the_graph_lacks_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no output 'penult'.*set penultimate_output"):
        create_app(_config(penultimate_output="penult"))
