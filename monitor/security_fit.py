"""What the security detectors consume, the config check for them, and their reference fit.

The security families read more than one array, so the generic rules of
:mod:`monitor.pipeline` (one ``input`` per detector) are refined here:

======================== ================ ============================================== =======
family                   records          reads                                          key
======================== ================ ============================================== =======
``adversarial.*``        inference        embedding, prediction, ``input`` (a named       none
                                          feature, default ``penultimate``) when needed
``adversarial.query``    inference        embedding, ``input_hashes``, ``input_digest``   client
``poisoning.*``          feedback         ``input`` (embedding or a named feature), label none
======================== ================ ============================================== =======

The reference (a ``.npz``, rows aligned with ``X``) must then carry: ``labels`` (true class
ids) for the adversarial and poisoning detectors, optionally ``predictions`` (the model's,
used to calibrate on the model's own errors), the named feature array (``penultimate``) for
adversarial detectors that read features, and, for ``adversarial.query``, ``input_hashes``
(uint64, the sidecar's window hashes) — or raw ``inputs``, hashed here with the model's
``input_hashes`` parameters — with optional ``clients`` (str pseudonyms of a benign query
stream, in arrival order; by default rows are dealt round-robin to ``len // 50`` benign
clients) and ``input_digests`` (uint64).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.adversarial import AdversarialDetector, QueryAttackDetector, Views
from detectors.poisoning import PoisoningDetector
from monitor.batch import BUILTIN_INPUTS
from monitor.config import DetectorConfig, ModelConfig
from monitor.security import PENULTIMATE, needs_features

SECURITY_TYPES = (AdversarialDetector, QueryAttackDetector, PoisoningDetector)
BENIGN_QUERIES_PER_CLIENT = 50


def is_security(det_cls: type) -> bool:
    return issubclass(det_cls, SECURITY_TYPES)


def default_input(det_cls: type) -> str:
    if issubclass(det_cls, AdversarialDetector):
        return PENULTIMATE
    return "embedding"


def security_problem(dc: DetectorConfig, det_cls: type) -> str | None:
    """Why a security detector cannot run as configured, with the fix; ``None`` if it can."""
    name = dc.name
    if issubclass(det_cls, QueryAttackDetector):
        if dc.key != "client":
            return f"{name} keeps state per client pseudonym; set key: client"
        if dc.records != "inference":
            return f"{name} judges the queries clients send; set records: inference"
        if dc.input not in (None, "embedding"):
            return (f"{name} reads the embedding and the sidecar's input_hashes, but its input "
                    f"is {dc.input!r}; set input: embedding (or remove input)")
        return None
    if dc.key != "none":
        return f"{name} does not keep state per client; remove key"
    if issubclass(det_cls, AdversarialDetector):
        if dc.records != "inference":
            return f"{name} judges the model's predictions; set records: inference"
        if dc.input is not None and dc.input in BUILTIN_INPUTS:
            return (f"{name} reads the embedding, the prediction and the task model's features; "
                    f"input names that feature, got {dc.input!r}; set input: {PENULTIMATE} "
                    "(or remove input)")
        return None
    if issubclass(det_cls, PoisoningDetector):
        if dc.records != "feedback":
            return f"{name} judges labelled feedback; set records: feedback"
        if dc.input in ("logits", "prediction", "label"):
            return (f"{name} reads the records' representation and their labels, but its input "
                    f"is {dc.input!r}; set input: embedding or a named feature (or remove "
                    "input)")
    return None


def _need(inputs: dict[str, NDArray[Any]], key: str, det_id: str, cfg: ModelConfig,
          source: str, what: str) -> NDArray[Any]:
    data = inputs.get(key)
    if data is None:
        npz = {"label": "labels", "prediction": "predictions"}.get(key, key)
        raise ValueError(
            f"model {cfg.name!r}: detector {det_id!r} needs {what}, the reference ({source}) "
            f"has only {sorted(inputs)}; add a {npz!r} array to the .npz reference (rows "
            "aligned with X)")
    return data


def _labels(inputs: dict[str, NDArray[Any]], det_id: str, cfg: ModelConfig,
            source: str) -> NDArray[np.int64]:
    y = np.asarray(_need(inputs, "label", det_id, cfg, source, "the reference's true labels"))
    if y.dtype.kind not in "iu":
        raise ValueError(f"model {cfg.name!r}: detector {det_id!r}: reference labels must be "
                         f"integer class ids, got dtype {y.dtype}")
    return y.astype(np.int64)


def fit_security(det_id: str, dc: DetectorConfig, det_cls: type, inputs: dict[str, Any],
                 cfg: ModelConfig, source: str) -> Any:
    """Fit one security detector on the reference arrays (see the module docstring)."""
    det = det_cls(**dc.params)
    X = inputs["embedding"]
    if isinstance(det, AdversarialDetector):
        y = _labels(inputs, det_id, cfg, source)
        feats = None
        if needs_features(det):
            name = dc.input or PENULTIMATE
            feats = _need(inputs, name, det_id, cfg, source,
                          f"the task model's features ({name!r})")
        pred = inputs.get("prediction")
        pred = None if pred is None else np.asarray(pred).astype(np.int64)
        return det.fit(Views(X, pred, feats), y)
    if isinstance(det, PoisoningDetector):
        y = _labels(inputs, det_id, cfg, source)
        data = X if not dc.input else _need(inputs, dc.input, det_id, cfg, source,
                                            f"the feature {dc.input!r}")
        return det.fit(data, y)
    assert isinstance(det, QueryAttackDetector)
    H = inputs.get("input_hashes")
    if H is None:
        raw = inputs.get("inputs")
        if raw is None or cfg.input_hashes is None:
            raise ValueError(
                f"model {cfg.name!r}: detector {det_id!r} needs the window hashes of a benign "
                f"query stream; the reference ({source}) has only {sorted(inputs)}: add an "
                "'input_hashes' array (uint64, the sidecar's window hashes) or raw 'inputs' and "
                "set the model's input_hashes (the parameters the sidecar hashes with)")
        H = hash_inputs(raw, cfg)
    H = np.asarray(H)
    if H.dtype != np.uint64:
        H = H.astype(np.uint64)
    n = X.shape[0]
    clients = inputs.get("clients")
    if clients is None:
        k = max(1, n // BENIGN_QUERIES_PER_CLIENT)
        clients = [f"reference-{i % k}" for i in range(n)]
    else:
        clients = [str(c) for c in clients]
    digests = inputs.get("input_digests")
    return det.fit(clients, X, H, None if digests is None else np.asarray(digests, np.uint64))


def hash_inputs(raw: NDArray[Any], cfg: ModelConfig) -> NDArray[np.uint64]:
    """Window hashes of raw inputs with the model's ``input_hashes`` parameters (the sidecar's)."""
    from detectors.adversarial.hashing import window_hashes

    assert cfg.input_hashes is not None
    params = cfg.input_hashes.model_dump()
    params["value_range"] = tuple(params["value_range"])
    return window_hashes(np.asarray(raw).reshape(len(raw), -1), **params)
