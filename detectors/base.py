"""The contract every repwatch detector follows.

Conventions (scikit-learn style, see STYLE.md):

* ``__init__`` only stores hyper-parameters under their own names; they must be JSON-serialisable.
* ``fit(X_ref)`` validates, learns and returns ``self``; learned state lives in attributes ending in
  ``_`` (``threshold_``, ``bandwidth_``).
* Scores follow one convention: **higher is more anomalous**.
* ``predict`` is pure: it never mutates the reference. Updating a reference is an explicit call.
* Results are frozen dataclasses; they become JSON only at the Kafka/HTTP boundary.
* State round-trips through :meth:`Detector.get_state` / :meth:`Detector.from_state` as a dict of
  numpy arrays plus a JSON-able dict (never pickle), so a worker can checkpoint and resume.
"""

from __future__ import annotations

import inspect
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

STATE_FORMAT_VERSION = 1

_REGISTRY: dict[str, type[Detector]] = {}

D = TypeVar("D", bound="type[Detector]")


class NotFittedError(ValueError, AttributeError):
    """Raised when a detector is used before ``fit`` (or ``from_state``)."""


def register(name: str) -> Any:
    """Class decorator: make a detector loadable by name from saved state (``"drift.mmd"``)."""

    def wrap(cls: D) -> D:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"detector name {name!r} is already registered by {_REGISTRY[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type[Detector]]:
    """All registered detectors by name (imports every detector module first)."""
    import importlib
    import pkgutil

    import detectors

    for mod in pkgutil.walk_packages(detectors.__path__, prefix="detectors."):
        importlib.import_module(mod.name)
    return dict(_REGISTRY)


def check_array(
    X: ArrayLike,
    *,
    name: str = "X",
    dim: int | None = None,
    min_rows: int = 1,
    dtype: type = np.float64,
) -> NDArray[Any]:
    """Validate a 2-D batch of embeddings and return it as a C-contiguous array.

    Errors name the problem and its fix: NaN/inf, wrong rank, dimension mismatch, too few rows.
    A 1-D input is *not* silently reshaped: a single record must be passed as shape ``(1, d)``.
    """
    arr = np.asarray(X)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}; "
            "pass a single record as X[None, :]"
        )
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows, at least {min_rows} are needed")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} features, the detector was fitted on {dim}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN or inf (first at row {bad[0]}, column {bad[1]}); "
            "drop or impute non-finite values before scoring"
        )
    return arr


class Detector:
    """Base class: parameters, fitted-state checks and the state round-trip.

    Subclasses implement ``fit`` and their family's scoring/prediction methods. The default
    :meth:`get_state` stores every ``__init__`` parameter (JSON) and every learned attribute
    ending in ``_`` (arrays go to the array dict, everything else must be JSON-able). Override
    ``_extra_state`` / ``_load_extra_state`` for state that does not fit that pattern.
    """

    name: ClassVar[str] = "detector"
    #: what ``fit`` and ``predict`` read: one of :data:`INPUT_KINDS`
    input_kind: ClassVar[str] = "embeddings"

    # --- parameters -------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # --- fitted checks ----------------------------------------------------------------------
    def _learned(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    @property
    def is_fitted(self) -> bool:
        return bool(self._learned())

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} is not fitted yet; call fit(X_ref) or load a saved state"
            )

    # --- state ------------------------------------------------------------------------------
    def get_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Return ``(arrays, meta)``: numpy arrays and a JSON-serialisable dict."""
        arrays: dict[str, NDArray[Any]] = {}
        learned: dict[str, Any] = {}
        for k, v in self._learned().items():
            if isinstance(v, np.ndarray):
                arrays[k] = v
            else:
                learned[k] = _to_json(v, k)
        meta = {
            "format_version": STATE_FORMAT_VERSION,
            "detector": self.name,
            "params": {k: _to_json(v, k) for k, v in self.get_params().items()},
            "learned": learned,
        }
        extra_arrays, extra_meta = self._extra_state()
        arrays.update({f"extra.{k}": v for k, v in extra_arrays.items()})
        if extra_meta:
            meta["extra"] = extra_meta
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Self:
        """Rebuild a detector from :meth:`get_state` output."""
        version = meta.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(
                f"detector state has format_version {version!r}, this repwatch reads "
                f"{STATE_FORMAT_VERSION}"
            )
        if meta.get("detector") != cls.name:
            raise ValueError(
                f"state is for detector {meta.get('detector')!r}, not {cls.name!r}; "
                "use detectors.base.load_state to pick the class from the state"
            )
        obj = cls(**meta["params"])
        for k, v in meta.get("learned", {}).items():
            setattr(obj, k, v)
        extra: dict[str, NDArray[Any]] = {}
        for k, v in arrays.items():
            if k.startswith("extra."):
                extra[k[len("extra.") :]] = v
            else:
                setattr(obj, k, v)
        obj._load_extra_state(extra, meta.get("extra", {}))
        return obj

    def _extra_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        return {}, {}

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        return None

    def save(self, path: str | Path) -> None:
        """Save as one ``.npz`` file (arrays + JSON meta; loadable without pickle)."""
        save_state(path, *self.get_state())


def _to_json(value: Any, key: str) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    try:
        json.dumps(value)
    except TypeError as exc:
        raise TypeError(
            f"detector attribute {key!r} of type {type(value).__name__} is not JSON-serialisable; "
            "store it as a numpy array or override _extra_state"
        ) from exc
    return value


def save_state(path: str | Path, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
    """Write state atomically-enough for a single file: arrays + ``__meta__`` JSON bytes."""
    if "__meta__" in arrays:
        raise ValueError("array name '__meta__' is reserved")
    meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, __meta__=meta_bytes, **arrays)  # type: ignore[arg-type]
    Path(path).write_bytes(buf.getvalue())


def read_state(path: str | Path) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    with np.load(Path(path), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "__meta__"}
        meta = json.loads(f["__meta__"].tobytes().decode())
    return arrays, meta


def load_state(arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> Detector:
    """Rebuild any registered detector from its state."""
    reg = registered()
    name = meta.get("detector")
    if name not in reg:
        raise ValueError(f"unknown detector {name!r} in state; known: {sorted(reg)}")
    return reg[name].from_state(arrays, meta)


def load(path: str | Path) -> Detector:
    """Load a detector saved with :meth:`Detector.save`."""
    return load_state(*read_state(path))


# --- typed contracts: the monitor dispatches on these classes, never on attribute probing ------
#: What a detector's ``fit``/``predict`` read. ``embeddings``: 2-D float rows from the SSL
#: encoder; ``logits``: 2-D float rows of a classifier's logits/scores; ``labels``: class ids
#: (predictions or ground-truth labels).
INPUT_KINDS = ("embeddings", "logits", "labels")


class RecordDetector(Detector):
    """Per-record detectors (OOD, adversarial): ``predict(X)`` returns a frozen result with
    ``scores`` (shape ``(n,)``, higher is more anomalous), ``flags`` (bool, ``(n,)``),
    ``threshold`` and, where calibrated, ``fpr``."""


class StreamingDetector(Detector):
    """River-style online detectors: fed records in order, one or many at a time.

    ``update(x)`` / ``update_batch(X)`` return a result with ``is_drift``; ``drift_detected``
    says whether the last update detected a change; ``reset()`` restarts from the fitted state
    (raise ``NotImplementedError`` if it cannot: the runtime then restarts from a clone);
    ``clone()`` is an independent copy with the same state (state round-trip by default).
    """

    def update(self, x: Any) -> Any:
        raise NotImplementedError

    def update_batch(self, X: Any) -> Any:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    @property
    def drift_detected(self) -> bool:
        raise NotImplementedError

    def clone(self) -> Self:
        return type(self).from_state(*self.get_state())


@dataclass(frozen=True)
class KeyedScores:
    """Scores and flags of one key's records, in the order they were given."""

    scores: NDArray[np.float64]
    flags: NDArray[np.bool_]


class KeyedDetector(Detector):
    """Detectors with state per key (a client pseudonym), e.g. query-attack detection.

    The detector is fitted once (shared, not mutated by scoring); what it learns about each key
    lives in a fixed-layout record that the monitor stores, bounds, evicts and checkpoints:
    ``key_fields()`` declares it (``{"name": (dtype, shape)}``, or ``(dtype, shape, default)``),
    and ``update_key(state, X, ts)`` reads and writes ``state[name]`` for the records ``X`` of
    one key (in stream order, event times ``ts``) and returns their :class:`KeyedScores`.
    """

    def key_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def update_key(self, state: Any, X: NDArray[Any], ts: NDArray[np.int64]) -> KeyedScores:
        raise NotImplementedError
