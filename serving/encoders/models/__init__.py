"""Bundled demo models (package data), rebuilt by ``python -m serving.encoders.build_digits``.

Importing this module needs only the standard library; :func:`digits_data` needs scikit-learn.
See ``digits_card.md`` for the model card and ``digits.json`` for the machine-readable metadata.

Examples
--------
>>> from serving.encoders.models import DIGITS_CLASSIFIER, digits_metadata
>>> DIGITS_CLASSIFIER.name
'digits_classifier.onnx'
>>> digits_metadata()["input"]["shape"]
['batch', 64]
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent
#: Two-headed digits graph: outputs ``logits`` [batch, 8], ``embedding`` and ``penultimate``.
DIGITS_CLASSIFIER = MODELS_DIR / "digits_classifier.onnx"
#: The SSL encoder alone: output ``embedding`` [batch, 32].
DIGITS_ENCODER = MODELS_DIR / "digits_encoder.onnx"
DIGITS_METADATA = MODELS_DIR / "digits.json"
DIGITS_CARD = MODELS_DIR / "digits_card.md"


@cache
def _metadata_text() -> str:
    return DIGITS_METADATA.read_text()


def digits_metadata() -> dict[str, Any]:
    """The parsed ``digits.json``: input/outputs, normalisation, split indices, metrics."""
    result: dict[str, Any] = json.loads(_metadata_text())
    return result


def digits_data() -> tuple[Any, Any, dict[str, list[int]]]:
    """``(X, y, split)``: raw digits pixels float32 ``(1797, 64)`` in 0..16, labels, and the
    bundled models' split (``train``/``val``/``test`` of digits 0–7, ``ood`` = digits 8–9).

    ``X[split["test"]]`` is in-distribution data the models never trained on;
    ``X[split["ood"]]`` is the semantic OOD set.
    """
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    meta = digits_metadata()["split"]
    split = {k: list(meta[k]) for k in ("train", "val", "test", "ood")}
    return d.data.astype(np.float32), d.target.astype(np.int64), split
