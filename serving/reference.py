"""A reference ``.npz`` built from raw inputs through a model's ONNX graph, as the sidecar streams.

The monitor's security detectors fit on more than embeddings (``monitor/security_fit.py``):
true ``labels``, the model's ``predictions`` and ``logits``, the ``penultimate`` features and
the ``input_hashes`` of the raw inputs. :func:`build_reference` runs the model's graph once
over trusted labelled inputs and writes all of them, computed exactly as the sidecar computes
them for a live record (the same outputs, the same :class:`~monitor.config.InputHashConfig`).

Run on the bundled digits model (the train and validation splits of digits 0-7)::

    python -m serving.reference --config serving/examples/digits-security.yaml \\
        --out digits-security-reference.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.config import ModelConfig, load_config


def reference_arrays(cfg: ModelConfig, X: NDArray[Any], y: NDArray[Any] | None = None,
                     batch: int = 512) -> dict[str, NDArray[Any]]:
    """The arrays of a reference for ``cfg``'s graph on raw inputs ``X`` (labels ``y``)."""
    import onnxruntime as ort

    if cfg.path is None:
        raise ValueError(f"model {cfg.name!r} has no 'path': a reference is built from its graph")
    sess = ort.InferenceSession(str(cfg.path), providers=["CPUExecutionProvider"])
    name = cfg.input_name or sess.get_inputs()[0].name
    want = {"X": cfg.embedding_output}
    logits = cfg.logits_output or "logits"
    outputs = [o.name for o in sess.get_outputs()]
    if logits in outputs:
        want["logits"] = logits
    if cfg.penultimate_output is not None:
        want["penultimate"] = cfg.penultimate_output
    X = np.asarray(X, dtype=np.float32)
    parts: dict[str, list[NDArray[Any]]] = {k: [] for k in want}
    for lo in range(0, len(X), batch):
        res = sess.run(list(want.values()), {name: X[lo:lo + batch]})
        for k, r in zip(want, res, strict=True):
            parts[k].append(np.asarray(r, dtype=np.float32).reshape(len(r), -1))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    if "logits" in out:
        out["predictions"] = out["logits"].argmax(axis=1).astype(np.int64)
    if y is not None:
        out["labels"] = np.asarray(y).astype(np.int64)
    if cfg.input_hashes is not None:
        from monitor.security_fit import hash_inputs

        out["input_hashes"] = hash_inputs(X, cfg)
    return out


def build_reference(cfg: ModelConfig, X: NDArray[Any], y: NDArray[Any] | None,
                    path: Path) -> Path:
    """Write :func:`reference_arrays` to ``path`` (``.npz``, no pickle)."""
    np.savez(path, **reference_arrays(cfg, X, y))  # type: ignore[arg-type]
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--config", required=True, help="configuration YAML with the model")
    ap.add_argument("--model", default="digits", help="model name in the configuration")
    ap.add_argument("--out", required=True, type=Path, help="reference .npz to write")
    args = ap.parse_args(argv)
    from serving.encoders.models import digits_data

    cfg = load_config(args.config).model(args.model)
    X, y, split = digits_data()
    rows = np.concatenate([split["train"], split["val"]])
    build_reference(cfg, X[rows], y[rows], args.out)
    print(f"wrote {args.out}: {len(rows)} rows of the digits train and validation splits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
