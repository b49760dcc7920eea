"""The bundled digits models: documented shapes, accuracy, metadata, and rebuild determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from serving.encoders.models import (
    DIGITS_CARD,
    DIGITS_CLASSIFIER,
    DIGITS_ENCODER,
    digits_data,
    digits_metadata,
)
from serving.encoders.onnx_io import OnnxEncoder

pytest.importorskip("onnxruntime")
pytest.importorskip("sklearn")


def test_files_are_small_and_match_the_metadata() -> None:
    meta = digits_metadata()
    for path in (DIGITS_CLASSIFIER, DIGITS_ENCODER):
        data = path.read_bytes()
        assert len(data) < 2 * 1024 * 1024
        assert hashlib.sha256(data).hexdigest() == meta["models"][path.name]["sha256"]
        # No build-machine paths or stack traces: rebuilds from any checkout are byte-identical.
        assert b"stack_trace" not in data and b"serving/encoders/nets.py" not in data
    assert "python -m serving.encoders.build_digits" in DIGITS_CARD.read_text()
    assert meta["input"] == {
        "name": "input", "dtype": "float32", "shape": ["batch", 64],
        "layout": "row-major 8x8 image, sklearn's digits.data",
    }


def test_documented_shapes_and_accuracy() -> None:
    meta = digits_metadata()
    X, y, split = digits_data()
    clf = OnnxEncoder(DIGITS_CLASSIFIER)
    assert clf.input_name == "input"
    out = clf.run(X)
    for name, shape in meta["models"]["digits_classifier.onnx"]["outputs"].items():
        assert out[name].shape == (len(X), shape[1]), name
    test = np.asarray(split["test"])
    acc = float((out["logits"][test].argmax(1) == y[test]).mean())
    assert acc == pytest.approx(meta["metrics"]["classifier_accuracy"]["test"], abs=1e-9)
    assert acc > 0.97
    # The encoder alone is the same SSL network as the combined graph's embedding head.
    enc = OnnxEncoder(DIGITS_ENCODER)
    assert enc.embed_dim == meta["embedding_dim"] == 32
    np.testing.assert_allclose(enc.embed(X), out["embedding"], atol=1e-5, rtol=0)
    # Batch of one works (dynamic batch axis).
    assert enc.embed(X[:1]).shape == (1, 32)


def test_split_holds_out_8_and_9() -> None:
    _, y, split = digits_data()
    assert set(y[split["train"] + split["val"] + split["test"]]) == set(range(8))
    assert set(y[split["ood"]]) == {8, 9}
    parts = [set(split[k]) for k in ("train", "val", "test", "ood")]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == len(y)


def test_ood_digits_get_less_confident_predictions() -> None:
    X, _, split = digits_data()
    logits = OnnxEncoder(DIGITS_CLASSIFIER).run(X)["logits"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    msp = (p / p.sum(1, keepdims=True)).max(1)
    assert msp[split["ood"]].mean() < msp[split["test"]].mean() - 0.05


def test_inference_path_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import serving.encoders, serving.encoders.cli, serving.encoders.onnx_io\n"
        "import serving.encoders.models, serving.encoders.data\n"
        "from serving.encoders.cli import main\n"
        "try:\n    main(['encoder', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "train" in res.stdout and res.stdout.strip().endswith("ok")


def _short_training_hashes(seed: int) -> dict[str, str]:
    import torch

    from serving.encoders import build_digits as bd
    from serving.encoders.train import TrainConfig, train_encoder

    torch.set_num_threads(1)
    X, y = bd.load_digits_data()
    s = bd.split_indices(y, seed)
    tr, va = np.asarray(s["train"]), np.asarray(s["val"])
    cfg = TrainConfig(objective="vicreg", modality="image", epochs=2, embed_dim=bd.EMBED_DIM,
                      width=bd.WIDTH, seed=seed, device="cpu", image_shape=[1, 8, 8])
    enc = train_encoder(X[tr], cfg, X_val=X[va], progress=False).encoder
    clf, _ = bd.train_classifier(X[tr], y[tr], X[va], y[va], seed=seed, epochs=2)
    return {"encoder": bd.weights_hash(enc), "classifier": bd.weights_hash(clf)}


def test_build_steps_are_deterministic_under_the_seed() -> None:
    pytest.importorskip("torch")
    a, b = _short_training_hashes(0), _short_training_hashes(0)
    assert a == b
    assert _short_training_hashes(1) != a


@pytest.mark.slow
def test_full_rebuild_is_deterministic(tmp_path: pytest.TempPathFactory) -> None:
    pytest.importorskip("torch")
    from serving.encoders.build_digits import build

    metas = [build(tmp_path / str(i), progress=False) for i in range(2)]  # type: ignore[operator]
    assert metas[0]["weights_sha256"] == metas[1]["weights_sha256"]
    for name in ("digits_classifier.onnx", "digits_encoder.onnx"):
        assert metas[0]["models"][name]["sha256"] == metas[1]["models"][name]["sha256"]
    # Same split and same metrics as the shipped models (weights may differ across machines).
    shipped = digits_metadata()
    assert metas[0]["split"] == shipped["split"]
    json.dumps(metas[0])
