"""``repwatch encoder train|export|embed`` through :func:`serving.encoders.cli.main`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from serving.encoders.cli import main, register
from serving.encoders.models import DIGITS_CLASSIFIER, DIGITS_ENCODER


def _data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 6)).astype(np.float32) * 4 + 1
    np.save(tmp_path / "x.npy", X)
    return tmp_path / "x.npy"


def test_register_adds_the_encoder_command() -> None:
    parser = argparse.ArgumentParser(prog="repwatch")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["encoder", "train", "d.npy", "--objective", "vicreg", "--epochs", "3"]
    )
    assert args.objective == "vicreg" and args.epochs == 3 and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["encoder", "train", "d.npy", "--objective", "byol"])


def test_train_export_embed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    data = _data(tmp_path)
    ckpt = tmp_path / "enc.pt"
    rc = main(["encoder", "train", str(data), "--epochs", "2", "--batch-size", "32",
               "--embed-dim", "4", "--width", "8", "--seed", "3", "--out", str(ckpt),
               "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert ckpt.is_file()
    assert main(["encoder", "export", str(ckpt)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "output 'embedding' [batch, 4]" in out
    emb = tmp_path / "emb.npy"
    assert main(["encoder", "embed", str(ckpt.with_suffix(".onnx")), str(data),
                 "--out", str(emb)]) == 0
    assert np.load(emb).shape == (96, 4)


def test_embed_with_a_bundled_model(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    np.savez(tmp_path / "d.npz", pixels=load_digits().data[:10])
    assert main(["encoder", "embed", str(DIGITS_ENCODER), str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (10, 32)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["encoder", "train", "{nan}"], "NaN or inf (first at index (5, 1))"),
        (["encoder", "train", "{cube}"], "tabular x.npy must be 2-D"),
        (["encoder", "train", "{cube}", "--modality", "image", "--image-shape", "2", "3", "3"],
         "image_shape [2, 3, 3] has 18 values"),
        (["encoder", "train", "{text}"], "must be a numeric array, got dtype <U"),
        (["encoder", "train", "{multi}"], "holds 2 arrays ['a', 'b']; name one with --key"),
        (["encoder", "train", "{multi}", "--key", "c"], "has no array 'c'"),
        (["encoder", "train", "{csv}"], "unsupported array file 'x.csv'"),
        (["encoder", "train", "{missing}"], "does not exist"),
        (["encoder", "export", "{nan}"], "not a repwatch encoder checkpoint"),
        (["encoder", "embed", "{clf}", "{digits}", "--output", "emb"],
         "has no output named 'emb'; its outputs are ['logits', 'embedding', 'penultimate']"),
        (["encoder", "embed", "{enc}", "{nan}"], "expects ['batch', 64]"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    X = np.ones((20, 6), dtype=np.float32)
    X[5, 1] = np.nan
    d = tmp_path / "nan"
    d.mkdir()
    np.save(d / "x.npy", X)
    (tmp_path / "cube").mkdir()
    np.save(tmp_path / "cube" / "x.npy", np.zeros((20, 4, 4), dtype=np.float32))
    np.save(tmp_path / "text.npy", np.full((20, 3), "a"))
    np.savez(tmp_path / "multi.npz", a=np.zeros((20, 2)), b=np.zeros((20, 2)))
    (tmp_path / "x.csv").write_text("1,2\n")
    np.save(tmp_path / "digits.npy", np.zeros((3, 64), dtype=np.float32))
    paths = {
        "nan": d / "x.npy", "cube": tmp_path / "cube" / "x.npy", "text": tmp_path / "text.npy",
        "multi": tmp_path / "multi.npz", "csv": tmp_path / "x.csv",
        "missing": tmp_path / "missing.npy", "clf": DIGITS_CLASSIFIER, "enc": DIGITS_ENCODER,
        "digits": tmp_path / "digits.npy",
    }
    rc = main([a.format(**paths) if a.startswith("{") else a for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"repwatch encoder {argv[1]}: error: ")
    assert message in err


def test_parquet_columns_become_features(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from serving.encoders.data import load_array

    table = pa.table({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6], "flag": [True, False, True]})
    pq.write_table(table, tmp_path / "t.parquet")
    X = load_array(tmp_path / "t.parquet")
    np.testing.assert_array_equal(X, [[1, 4, 1], [2, 5, 0], [3, 6, 1]])
    assert X.dtype == np.float32
    pq.write_table(pa.table({"a": [1.0], "name": ["x"]}), tmp_path / "s.parquet")
    with pytest.raises(ValueError, match="column 'name' has type string"):
        load_array(tmp_path / "s.parquet")
