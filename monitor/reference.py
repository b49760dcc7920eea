"""References: the fitted detectors of one model, built from reference embeddings and saved.

A reference directory holds ``embeddings.npy`` (the reference embeddings once, float32,
memory-mapped at load), one ``.npz`` per configured detector (its state: arrays + JSON, no
pickle) with the arrays it shares with the embeddings or holds in large files taken out (see
:mod:`monitor.refstore`), ``stats.npz`` (reference mean and scale, used to pick the most
anomalous records of a window as alert evidence) and ``manifest.json``::

    {"format": 2, "model": "digits", "dim": 64, "rows": 1797, "source": "array:ref.npy",
     "created": "2026-…Z", "embeddings": "embeddings.npy",
     "detectors": [{"id": "drift.mmd", "name": "drift.mmd", "file": "00-drift.mmd.npz",
                    "params": {...}, "arrays": {"x_ref_": {"kind": "embeddings", ...}}}]}

Format 1 directories (every array inside the detector's ``.npz``) still load.

:func:`load_reference` accepts such a directory, or an array file (``.npy``, or ``.npz`` with an
``X``/``embeddings`` array) that it fits at start. Each detector is fitted on the input its stage
consumes (:func:`monitor.pipeline.consumes_of`): embeddings, or — from the same ``.npz`` —
``logits`` (logit detectors such as ``ood.energy``), ``labels``/``predictions`` (``drift.chi2``)
or a named feature array; a detector whose input the reference lacks is an error naming it.
The security detectors read several of them (``labels``, ``predictions``, ``penultimate``,
``input_hashes`` or raw ``inputs``, optional ``clients``): see :mod:`monitor.security_fit`;
:mod:`serving.reference` builds such a file through the model's graph, as the sidecar streams.
Arrays a detector does not read are ignored, so one file serves every detector of a model.
The detectors are looked up in the registry by name, never imported by class, so new families
plug in without touching the monitor.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor import refstore
from monitor.config import DetectorConfig, ModelConfig

REFERENCE_FORMAT = 2
#: Reference directory formats this version loads.
READS_FORMATS = (1, 2)


def detector_ids(detectors: list[DetectorConfig]) -> list[str]:
    """Stable ids of a model's detectors: the name, with ``#i`` when a name repeats."""
    names = [d.name for d in detectors]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


@dataclass
class ReferenceSet:
    """Fitted detectors of one model (aligned with its config) and reference statistics."""

    model: str
    detectors: dict[str, Any]  # detector id -> fitted detectors.base.Detector
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    source: str
    rows: int
    #: the reference embeddings in float32 (memory-mapped when loaded from a directory)
    embeddings: NDArray[np.float32] | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def deviation(self, X: NDArray[Any]) -> NDArray[np.float64]:
        """Standardised distance of each row to the reference mean (for evidence ranking)."""
        Z = (X - self.mean) / self.scale
        return np.einsum("ij,ij->i", Z, Z)


def read_inputs(path: Path) -> dict[str, NDArray[Any]]:
    """Reference inputs of an array file: ``embedding`` plus any other arrays of an ``.npz``
    (``logits``, ``labels`` -> ``label``, ``predictions`` -> ``prediction``, named features)."""
    out: dict[str, NDArray[Any]] = {"embedding": read_array(path)}
    if Path(path).suffix == ".npz":
        rename = {"labels": "label", "predictions": "prediction"}
        with np.load(path, allow_pickle=False) as f:
            for k in f.files:
                if k not in ("X", "embeddings"):
                    out[rename.get(k, k)] = f[k]
    return out


def read_array(path: Path) -> NDArray[np.float64]:
    """Reference embeddings from ``.npy`` or ``.npz`` (array ``X`` or ``embeddings``)."""
    path = Path(path)
    if path.suffix == ".npy":
        X = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            key = next((k for k in ("X", "embeddings") if k in f.files), None)
            if key is None:
                raise ValueError(
                    f"{path} has arrays {f.files}; store the reference embeddings as 'X'"
                )
            X = f[key]
    else:
        raise ValueError(f"{path}: reference arrays must be .npy or .npz, got {path.suffix!r}")
    if X.ndim != 2:
        raise ValueError(f"{path}: reference must be 2-D (n, dim), got shape {X.shape}")
    return np.asarray(X, dtype=np.float64)


def fit_reference(cfg: ModelConfig, X: NDArray[Any], source: str,
                  inputs: dict[str, NDArray[Any]] | None = None) -> ReferenceSet:
    """Fit every configured detector of ``cfg`` on reference embeddings ``X`` (or, for
    detectors that read something else, on ``inputs[<their input>]``)."""
    from detectors.base import registered
    from monitor.pipeline import consumes_of
    from monitor.security_fit import fit_security, is_security

    reg = registered()
    X = np.asarray(X, dtype=np.float64)
    if cfg.embedding_dim is not None and X.shape[1] != cfg.embedding_dim:
        raise ValueError(
            f"reference has {X.shape[1]} dims, model {cfg.name!r} expects {cfg.embedding_dim}"
        )
    inputs = {**(inputs or {}), "embedding": X}
    fitted: dict[str, Any] = {}
    for det_id, dc in zip(detector_ids(cfg.detectors), cfg.detectors, strict=True):
        if dc.name not in reg:
            raise ValueError(
                f"model {cfg.name!r}: detector {dc.name!r} is not registered; "
                f"known: {sorted(reg)}"
            )
        if is_security(reg[dc.name]):
            fitted[det_id] = fit_security(det_id, dc, reg[dc.name], inputs, cfg, source)
            continue
        want = consumes_of(dc, reg[dc.name]).input
        data = inputs.get(want)
        if data is None:
            raise ValueError(
                f"model {cfg.name!r}: detector {det_id!r} reads {want!r}, the reference "
                f"({source}) has only {sorted(inputs)}; add a {want!r} array to the .npz "
                "reference (rows aligned with X)"
            )
        fitted[det_id] = reg[dc.name](**dc.params).fit(data)  # type: ignore[attr-defined]
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    return ReferenceSet(cfg.name, fitted, X.mean(axis=0), scale, source, int(X.shape[0]),
                        np.asarray(X, dtype=np.float32))


def save_reference(ref: ReferenceSet, directory: Path) -> Path:
    """Write a reference directory atomically (a temp directory renamed into place)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    from detectors.base import save_state

    rows = None
    if ref.embeddings is not None:
        rows = refstore.RowIndex(refstore.write_embeddings(tmp, ref.embeddings))
    entries = []
    for i, (det_id, det) in enumerate(ref.detectors.items()):
        stem = f"{i:02d}-{det_id.replace('#', '_')}"
        arrays, meta = det.get_state()
        inline, external = refstore.split_state(arrays, stem, tmp, rows)
        save_state(tmp / f"{stem}.npz", inline, meta)
        entries.append({"id": det_id, "name": det.name, "file": f"{stem}.npz",
                        "params": meta["params"], "arrays": external})
    np.savez(tmp / "stats.npz", mean=ref.mean, scale=ref.scale)
    manifest = {
        "format": REFERENCE_FORMAT,
        "model": ref.model,
        "dim": ref.dim,
        "rows": ref.rows,
        "source": ref.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "embeddings": refstore.EMBEDDINGS if rows is not None else None,
        "detectors": entries,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


def load_reference(cfg: ModelConfig, path: Path) -> ReferenceSet:
    """Load a saved reference directory, or fit one from an array file."""
    from detectors.base import load_state, read_state

    path = Path(path)
    if path.is_file():
        inputs = read_inputs(path)
        return fit_reference(cfg, inputs["embedding"], f"array:{path}", inputs)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"reference {path} is neither an array file nor a directory with manifest.json; "
            "build one with: repwatch reference fit"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") not in READS_FORMATS:
        raise ValueError(f"{path}: reference format {manifest.get('format')!r} is not supported "
                         f"(this repwatch reads {READS_FORMATS}); refit with: repwatch "
                         "reference fit")
    emb = manifest.get("embeddings")
    E = refstore.open_array(path / emb) if emb else None
    by_id = {e["id"]: e for e in manifest["detectors"]}
    fitted: dict[str, Any] = {}
    for det_id, dc in zip(detector_ids(cfg.detectors), cfg.detectors, strict=True):
        entry = by_id.get(det_id)
        if entry is None or entry["name"] != dc.name:
            raise ValueError(
                f"reference {path} has no fitted {det_id!r} for model {cfg.name!r} "
                f"(it holds {sorted(by_id)}); refit it with: repwatch reference fit"
            )
        arrays, meta = read_state(path / entry["file"])
        arrays = refstore.join_state(arrays, entry.get("arrays", {}), path, E)
        fitted[det_id] = load_state(arrays, meta)
    with np.load(path / "stats.npz", allow_pickle=False) as f:
        mean, scale = f["mean"], f["scale"]
    if cfg.embedding_dim is not None and mean.shape[0] != cfg.embedding_dim:
        raise ValueError(
            f"reference {path} has {mean.shape[0]} dims, model {cfg.name!r} expects "
            f"{cfg.embedding_dim}"
        )
    return ReferenceSet(cfg.name, fitted, mean, scale, str(manifest.get("source", path)),
                        int(manifest.get("rows", 0)), E)
