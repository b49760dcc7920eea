"""ONNX export of encoders: named output, dynamic batch, equality with torch, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from serving.encoders.export import export_onnx, torch_outputs, verify_export  # noqa: E402
from serving.encoders.onnx_io import OnnxEncoder  # noqa: E402
from serving.encoders.train import (  # noqa: E402
    TrainConfig,
    build_encoder,
    load_checkpoint,
    save_checkpoint,
    train_encoder,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tabular_run() -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(120, 7)) * [1, 10, 100, 0.1, 1, 1, 5] + 3).astype(np.float32)
    cfg = TrainConfig(epochs=2, batch_size=32, embed_dim=6, width=16, device="cpu")
    return train_encoder(X, cfg, progress=False), X


@pytest.fixture(scope="module")
def tabular_onnx(tmp_path_factory: pytest.TempPathFactory, tabular_run: tuple) -> Path:
    res, X = tabular_run
    path = tmp_path_factory.mktemp("t") / "e.onnx"
    return export_onnx(res.encoder, torch.from_numpy(X[:4]), path)


def test_tabular_export_matches_torch_for_any_batch(tabular_run: tuple, tabular_onnx: Path) -> None:
    res, X = tabular_run
    model = onnx.load(str(tabular_onnx))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [o.name for o in model.graph.output] == ["embedding"]
    assert [i.name for i in model.graph.input] == ["input"]
    assert not any(len(node.metadata_props) for node in model.graph.node)
    runner = OnnxEncoder(tabular_onnx)
    assert runner.input_shape[1:] == [7] and not isinstance(runner.input_shape[0], int)
    for n in (1, 2, 37, 120):
        got = runner.embed(X[:n])
        want = torch_outputs(res.encoder, X[:n])[0]
        assert got.shape == (n, 6)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert verify_export(res.encoder, tabular_onnx, X) <= 1e-5


def test_image_export_with_3d_input(tmp_path: Path) -> None:
    X = np.random.default_rng(1).uniform(0, 255, size=(40, 12, 12)).astype(np.float32)
    enc = build_encoder(TrainConfig(modality="image", embed_dim=5, width=8), X).eval()
    path = export_onnx(enc, torch.from_numpy(X[:3]), tmp_path / "img.onnx")
    runner = OnnxEncoder(path)
    assert runner.input_shape[1:] == [12, 12]
    assert runner.embed(X).shape == (40, 5)
    assert verify_export(enc, path, X) <= 1e-5


def test_checkpoint_round_trip(tmp_path: Path, tabular_run: tuple) -> None:
    res, X = tabular_run
    save_checkpoint(res, tmp_path / "c.pt")
    enc, meta = load_checkpoint(tmp_path / "c.pt")
    assert meta["config"]["embed_dim"] == 6 and len(meta["history"]) == 2
    np.testing.assert_array_equal(torch_outputs(enc, X)[0], torch_outputs(res.encoder, X)[0])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a repwatch encoder checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_export_refuses_old_opsets_and_single_row_examples(
    tmp_path: Path, tabular_run: tuple
) -> None:
    res, X = tabular_run
    with pytest.raises(ValueError, match="opset 13 is too old"):
        export_onnx(res.encoder, torch.from_numpy(X[:4]), tmp_path / "x.onnx", opset=13)
    with pytest.raises(ValueError, match="at least 2 rows"):
        export_onnx(res.encoder, torch.from_numpy(X[:1]), tmp_path / "x.onnx")


def test_runner_errors_name_the_problem(tabular_onnx: Path, tabular_run: tuple) -> None:
    _, X = tabular_run
    msg = r"no output named 'features'; its outputs are \['embedding'\]"
    with pytest.raises(ValueError, match=msg):
        OnnxEncoder(tabular_onnx, output="features")
    runner = OnnxEncoder(tabular_onnx)
    with pytest.raises(ValueError, match="input has 5 values on axis 1"):
        runner.embed(X[:, :5])
    with pytest.raises(ValueError, match="expects 2-D input"):
        runner.embed(X[0])
    bad = X[:3].copy()
    bad[1, 4] = np.inf
    with pytest.raises(ValueError, match=r"NaN or inf \(first at index \(1, 4\)\)"):
        runner.embed(bad)
    with pytest.raises(ValueError, match="numeric array, got dtype <U"):
        runner.embed(np.full((2, 7), "x"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxEncoder(tabular_onnx.with_name("nope.onnx"))
    # float64 input is accepted and cast, not rejected.
    assert runner.embed(X[:2].astype(np.float64)).dtype == np.float32
