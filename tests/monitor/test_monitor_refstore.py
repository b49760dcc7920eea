"""Reference format 2: embeddings stored once in float32, shared and memory-mapped."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from detectors.base import save_state
from monitor import refstore
from monitor.config import ModelConfig
from monitor.reference import fit_reference, load_reference, save_reference

D = 32
DETECTORS = [
    {"name": "drift.mmd", "params": {"n_permutations": 50, "method": "rff", "seed": 0}},
    {"name": "drift.mmd_online",
     "params": {"ert": 200, "window_size": 20, "n_bootstraps": 2000, "max_reference": 800}},
    {"name": "ood.knn", "params": {"k": 5}},
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    cfg = ModelConfig.model_validate({"name": "m", "detectors": DETECTORS})
    X = np.random.default_rng(0).normal(size=(12000, D))
    ref = fit_reference(cfg, X, "test")
    out = save_reference(ref, tmp_path_factory.mktemp("ref") / "m")
    return cfg, X, ref, out


def _is_mapped(a: np.ndarray) -> bool:
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return not isinstance(a, np.ndarray)


def test_embeddings_are_written_once_and_every_detector_points_into_them(fitted) -> None:
    _cfg, X, _ref, out = fitted
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["embeddings"] == "embeddings.npy"
    E = np.load(out / "embeddings.npy")
    assert E.dtype == np.float32 and np.array_equal(E, X.astype(np.float32))
    arrays = {d["id"]: d["arrays"] for d in manifest["detectors"]}
    assert arrays["drift.mmd"]["x_ref_"]["kind"] == "embeddings"
    assert arrays["drift.mmd_online"]["x_ref_"]["kind"] == "rows"  # a sub-reference of X
    assert arrays["ood.knn"]["reference_"]["kind"] == "file"  # normalised: not the embeddings
    with np.load(out / "00-drift.mmd.npz") as f:
        assert "x_ref_" not in f.files  # not stored twice


def test_loaded_detectors_share_one_mapping_and_agree_with_the_fit(fitted) -> None:
    cfg, _X, ref, out = fitted
    loaded = load_reference(cfg, out)
    mmd = loaded.detectors["drift.mmd"]
    assert mmd.x_ref_.dtype == np.float32 and _is_mapped(mmd.x_ref_)
    assert np.shares_memory(mmd.x_ref_, loaded.embeddings)
    assert _is_mapped(loaded.detectors["ood.knn"].reference_)
    online = loaded.detectors["drift.mmd_online"]
    assert online.x_ref_.dtype == np.float64 and not _is_mapped(online.x_ref_)
    assert np.array_equal(online.x_ref_, ref.detectors["drift.mmd_online"].x_ref_
                          .astype(np.float32).astype(np.float64))
    Y = np.random.default_rng(1).normal(0.1, 1.0, (500, D))
    a, b = ref.detectors["drift.mmd"].predict(Y), mmd.predict(Y)
    assert a.statistic == pytest.approx(b.statistic, rel=1e-3, abs=1e-6)
    assert np.array_equal(ref.detectors["ood.knn"].score(Y), loaded.detectors["ood.knn"].score(Y))
    s1 = ref.detectors["drift.mmd_online"].clone().update_batch(Y).statistics
    s2 = online.clone().update_batch(Y).statistics
    np.testing.assert_allclose(s1, s2, rtol=1e-3, atol=1e-6)


def test_a_detector_writing_into_a_mapped_array_leaves_the_file_alone(fitted, tmp_path) -> None:
    cfg, X, _ref, out = fitted
    copy = shutil.copytree(out, tmp_path / "m")
    loaded = load_reference(cfg, copy)
    loaded.detectors["drift.mmd"].x_ref_[0] = 123.0  # copy-on-write: private pages
    assert np.array_equal(np.load(copy / "embeddings.npy")[0], X[0].astype(np.float32))


def test_format_1_directories_still_load(fitted, tmp_path) -> None:
    cfg, _X, ref, _out = fitted
    old = tmp_path / "old"
    old.mkdir()
    entries = []
    for i, (det_id, det) in enumerate(ref.detectors.items()):
        det.save(old / f"{i:02d}.npz")
        entries.append({"id": det_id, "name": det.name, "file": f"{i:02d}.npz", "params": {}})
    np.savez(old / "stats.npz", mean=ref.mean, scale=ref.scale)
    (old / "manifest.json").write_text(json.dumps(
        {"format": 1, "model": "m", "dim": D, "rows": 12000, "detectors": entries}))
    loaded = load_reference(cfg, old)
    assert loaded.embeddings is None and loaded.detectors["drift.mmd"].x_ref_.dtype == np.float64


def test_missing_embeddings_file_is_an_error_naming_the_fix(fitted, tmp_path) -> None:
    cfg, _X, _ref, out = fitted
    copy = shutil.copytree(out, tmp_path / "m")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["embeddings"] = None
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"embeddings\.npy, which is missing; refit"):
        load_reference(cfg, copy)


def test_row_index_finds_subsets_and_refuses_lookalikes() -> None:
    E = np.random.default_rng(2).normal(size=(3000, 16)).astype(np.float32)
    rows = refstore.RowIndex(E)
    pick = np.random.default_rng(3).choice(3000, 1200, replace=False)
    assert np.array_equal(rows.match(E[pick].astype(np.float64)), pick)
    assert rows.match(E.astype(np.float64)) == "all"
    other = E[pick].copy()
    other[7, 3] += 1e-3
    assert rows.match(other) is None
    assert rows.match(E[:10]) is None  # too small to be worth an index: stays inline


def test_split_state_keeps_small_arrays_inline(tmp_path) -> None:
    E = np.random.default_rng(4).normal(size=(100, 8)).astype(np.float32)
    inline, ext = refstore.split_state(
        {"x": E.astype(np.float64), "small": np.ones(5), "big": np.ones((400, 400))}, "s",
        tmp_path, refstore.RowIndex(E))
    assert set(inline) == {"small"} and ext["x"]["kind"] == "embeddings"
    assert ext["big"] == {"kind": "file", "file": "s.big.npy"}
    joined = refstore.join_state(inline, ext, tmp_path, E)
    assert joined["x"] is E and np.array_equal(joined["big"], np.ones((400, 400)))
    save_state(tmp_path / "s.npz", inline, {})  # what is left still saves as a state file
