"""What one key's state looks like (:class:`StateSchema`), the store's limits, and its errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import NDArray

# bool, signed/unsigned integers, floats and fixed-width bytes (hashes, digests): nothing that
# needs pickle or has a platform-dependent width.
ALLOWED_KINDS = "biufS"


class StateStoreError(Exception):
    """Base class of every error this package raises on purpose."""


class StateStoreCorrupt(StateStoreError):
    """A checkpoint on disk fails validation (truncated, tampered, foreign or garbage).

    ``path`` names the file (or directory) at fault. The runtime catches this, sets the
    directory aside (:func:`monitor.state.set_aside`) and starts the keyed state fresh from the
    committed Kafka offset.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"keyed state checkpoint {path}: {problem}; move the directory away (or call "
            "monitor.state.set_aside) to start this stage's keyed state fresh"
        )


class StateSchemaMismatch(StateStoreError):
    """The checkpoint was written with other fields than the stage declares now."""


class StateKeyError(StateStoreError, ValueError):
    """A key the store refuses (not a string, empty, or longer than ``max_key_bytes``).

    It is bad input of one record, not a broken store: dead-letter the record and go on.
    """


@dataclass(frozen=True)
class StateField:
    """One field of a key's record: a dtype, a fixed shape and the value a new key starts with."""

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    default: float | int | bool | bytes = 0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"state field name {self.name!r} must be a Python identifier")
        try:
            dt = np.dtype(self.dtype)
        except TypeError as e:
            raise ValueError(f"state field {self.name!r}: dtype {self.dtype!r}: {e}") from None
        if dt.kind not in ALLOWED_KINDS or dt.itemsize == 0:
            raise ValueError(
                f"state field {self.name!r} has dtype {dt}; use bool, int*, uint*, float* or "
                "fixed bytes 'S<n>' (no objects or strings: state is plain arrays)"
            )
        shape = tuple(int(s) for s in self.shape)
        if any(s < 1 for s in shape):
            raise ValueError(f"state field {self.name!r}: shape {shape} must be positive")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dt.newbyteorder("<").str if dt.kind != "S" else dt.str)

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))


@dataclass(frozen=True)
class StateSchema:
    """The fixed layout of every key's state: a numpy structured record.

    Build it with :meth:`of`; every key starts as a copy of :meth:`new_record` (the fields'
    defaults). The schema is immutable, so sharing one between stores (``store.clone()``) is
    safe.

    Examples
    --------
    >>> s = StateSchema.of(ring=("float32", (4, 2)), n="int64", score=("float64", (), -1.0))
    >>> s.itemsize
    48
    >>> r = s.new_record()
    >>> int(r["n"]), float(r["score"]), r["ring"].shape
    (0, -1.0, (4, 2))
    """

    fields: tuple[StateField, ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a state schema needs at least one field")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"state field names must be unique, got {names}")

    @classmethod
    def of(cls, **fields: str | tuple[Any, ...]) -> StateSchema:
        """``name=dtype``, ``name=(dtype, shape)`` or ``name=(dtype, shape, default)``."""
        out = []
        for name, spec in fields.items():
            parts = (spec,) if isinstance(spec, str) else tuple(spec)
            out.append(StateField(name, *parts))
        return cls(tuple(out))

    @cached_property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype([(f.name, f.dtype, f.shape) for f in self.fields])

    @property
    def itemsize(self) -> int:
        """Bytes of one key's record (the fixed per-key state size)."""
        return int(self.dtype.itemsize)

    @cached_property
    def _prototype(self) -> NDArray[Any]:
        proto = np.zeros((), dtype=self.dtype)
        for f in self.fields:
            proto[f.name] = f.default
        proto.flags.writeable = False
        return proto

    def new_record(self) -> np.void:
        """A fresh, writable record holding the defaults (what a new key starts as)."""
        rec: np.void = self._prototype.copy()[()]  # type: ignore[assignment]
        return rec

    def describe(self) -> list[dict[str, Any]]:
        """JSON form stored in every checkpoint (defaults are not: they only shape new keys)."""
        return [{"name": f.name, "dtype": f.dtype, "shape": list(f.shape)} for f in self.fields]

    def check_matches(self, described: object, where: object) -> None:
        if described != self.describe():
            raise StateSchemaMismatch(
                f"keyed state in {where} was written with fields {described}, the stage now "
                f"declares {self.describe()}; move that directory away to start the keyed "
                "state fresh (or keep the old schema)"
            )


@dataclass(frozen=True)
class StoreLimits:
    """Bounds of one store. All of them hold at every moment, not only at checkpoints.

    ``max_keys``: live keys at most; creating one more evicts the least recently used key.
    ``max_memory_bytes``: when set, lowers the key capacity so that the store's resident memory
    (records, per-key bookkeeping, keys of ``max_key_bytes``) stays under it; see
    :attr:`KeyedStateStore.memory_bound_bytes`.
    ``idle_timeout_ms``: a key not updated for this long in *event time* (the largest event
    time seen) is evicted; checked every ``idle_timeout_ms / 16`` of event time and on
    :meth:`KeyedStateStore.expire`.
    ``max_key_bytes``: longer keys (UTF-8) are refused with :class:`StateKeyError`.
    ``max_bytes_per_key``: a schema whose record is larger is refused at construction.
    ``compact_every`` / ``compact_ratio``: a checkpoint becomes a compaction (a full base
    snapshot, older segments deleted) once that many deltas are on disk or their bytes exceed
    ``compact_ratio`` times the base's.
    """

    max_keys: int = 100_000
    max_memory_bytes: int | None = None
    idle_timeout_ms: int | None = None
    max_key_bytes: int = 64  # a SHA-256 pseudonym in hex
    max_bytes_per_key: int = 64 * 1024
    compact_every: int = 16
    compact_ratio: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_keys", "max_key_bytes", "max_bytes_per_key", "compact_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StoreLimits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_memory_bytes is not None and self.max_memory_bytes < 1:
            raise ValueError(f"StoreLimits.max_memory_bytes must be >= 1, got "
                             f"{self.max_memory_bytes}")
        if self.idle_timeout_ms is not None and self.idle_timeout_ms < 1:
            raise ValueError(f"StoreLimits.idle_timeout_ms must be >= 1, got "
                             f"{self.idle_timeout_ms}")
        if not self.compact_ratio > 0:
            raise ValueError(f"StoreLimits.compact_ratio must be > 0, got {self.compact_ratio}")
