"""Reference arrays stored once, in float32, memory-mapped (reference directory format 2).

A model's detectors each keep arrays derived from the same reference embeddings: the drift
tests keep the embeddings themselves, the online MMD a subset of their rows, kNN a normalised
copy. Saved one ``.npz`` per detector (format 1) and loaded, every detector holds its own
private copy, in float64 where it fitted in float64. Format 2 writes:

* ``embeddings.npy``: the reference embeddings once, float32, uncompressed (an ``.npy`` file
  maps; a member of an ``.npz`` does not);
* for each detector state array that *is* those embeddings (equal after the float32 cast), a
  pointer to ``embeddings.npy``; every detector of the model then reads the same mapping;
* for a state array made of rows of the embeddings (``rows``), the row indices, gathered at
  load into a private array of the state's own dtype;
* any other state array of at least :data:`OWN_FILE_BYTES` in an ``.npy`` of its own, mapped;
* everything else in the detector's ``.npz`` as before.

Mappings are opened copy-on-write (``mmap_mode="c"``): a detector that writes into an array
gets private pages and the file never changes. Mapped pages are read from the page cache and
can be dropped and re-read by the kernel; several workers loading the same reference share
them. Sharing changes the dtype of the shared arrays to float32 (the reference's precision):
``benchmarks/results/monitor_memory.md`` measures the detectors' results against their
float64 fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

EMBEDDINGS = "embeddings.npy"
#: State arrays at least this large that are not the embeddings get an ``.npy`` of their own.
OWN_FILE_BYTES = 1 << 20
#: Row subsets of the embeddings at least this large are stored as row indices.
ROWS_MIN_BYTES = 64 << 10
_HASH_CHUNK = 1 << 15


def write_embeddings(directory: Path, X: NDArray[Any]) -> NDArray[np.float32]:
    """Write the reference embeddings as float32 ``embeddings.npy``; return the float32 rows."""
    E = np.ascontiguousarray(X, dtype=np.float32)
    np.save(directory / EMBEDDINGS, E, allow_pickle=False)
    return E


def open_array(path: Path) -> NDArray[Any]:
    """An ``.npy`` file mapped copy-on-write, as a plain ndarray view of the mapping."""
    return np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))


def _row_hashes(A: NDArray[np.float32], mult: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """An exact integer hash of each float32 row (wrapping uint64 arithmetic on the bits)."""
    out = np.empty(A.shape[0], dtype=np.uint64)
    bits = A.view(np.uint32)
    for lo in range(0, A.shape[0], _HASH_CHUNK):
        blk = bits[lo : lo + _HASH_CHUNK].astype(np.uint64)
        blk *= mult
        out[lo : lo + _HASH_CHUNK] = blk.sum(axis=1, dtype=np.uint64)
    return out


class RowIndex:
    """Finds arrays that are the embeddings, or rows of them: equal once cast to float32."""

    def __init__(self, E: NDArray[np.float32]) -> None:
        self.E = E
        rng = np.random.default_rng(0)
        mult = np.asarray(rng.integers(1, 2**63, E.shape[1], dtype=np.uint64))
        self.mult: NDArray[np.uint64] = mult | np.uint64(1)  # odd: every bit counts
        self._sorted: tuple[NDArray[np.intp], NDArray[np.uint64]] | None = None

    def _hashes(self) -> tuple[NDArray[np.intp], NDArray[np.uint64]]:
        if self._sorted is None:
            h = _row_hashes(self.E, self.mult)
            order = np.argsort(h, kind="stable")
            self._sorted = order, h[order]
        return self._sorted

    def match(self, A: NDArray[Any]) -> str | NDArray[np.int64] | None:
        """``"all"`` when ``A`` is the embeddings, row indices when it is rows of them."""
        E = self.E
        if A.ndim != 2 or A.shape[1] != E.shape[1] or A.dtype.kind != "f" or not A.size:
            return None
        A32 = np.ascontiguousarray(A, dtype=np.float32)  # the reference's precision
        if A.shape == E.shape and np.array_equal(A32, E):
            return "all"
        if A.nbytes < ROWS_MIN_BYTES:
            return None
        order, hs = self._hashes()
        ha = _row_hashes(A32, self.mult)
        pos = np.minimum(np.searchsorted(hs, ha), hs.size - 1)
        if not np.array_equal(hs[pos], ha):
            return None
        idx = order[pos].astype(np.int64)
        return idx if np.array_equal(E[idx], A32) else None


def split_state(arrays: dict[str, NDArray[Any]], stem: str, directory: Path,
                rows: RowIndex | None) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    """Take the shared and large arrays out of a detector state; write the large ones.

    Returns the arrays left for the detector's ``.npz`` and the manifest entry describing the
    others (``{name: {"kind": "embeddings" | "rows" | "file", ...}}``).
    """
    inline: dict[str, NDArray[Any]] = {}
    external: dict[str, Any] = {}
    for name, A in arrays.items():
        found = rows.match(A) if rows is not None else None
        if isinstance(found, str):
            external[name] = {"kind": "embeddings", "dtype": A.dtype.str}
        elif found is not None:
            inline[f"__rows__.{name}"] = found
            external[name] = {"kind": "rows", "dtype": A.dtype.str}
        elif A.nbytes >= OWN_FILE_BYTES and A.dtype.kind in "biuf":
            fname = f"{stem}.{name}.npy"
            np.save(directory / fname, np.ascontiguousarray(A), allow_pickle=False)
            external[name] = {"kind": "file", "file": fname}
        else:
            inline[name] = A
    return inline, external


def join_state(arrays: dict[str, NDArray[Any]], external: dict[str, Any], directory: Path,
               embeddings: NDArray[np.float32] | None) -> dict[str, NDArray[Any]]:
    """Put a detector's external arrays back (mapped, or gathered from the embeddings)."""
    out = {k: v for k, v in arrays.items() if not k.startswith("__rows__.")}
    for name, spec in external.items():
        kind = spec.get("kind")
        if kind in ("embeddings", "rows") and embeddings is None:
            raise ValueError(f"{directory}: state array {name!r} points into {EMBEDDINGS}, "
                             "which is missing; refit with: repwatch reference fit")
        if kind == "embeddings":
            out[name] = embeddings  # type: ignore[assignment]
        elif kind == "rows":
            idx = arrays[f"__rows__.{name}"]
            out[name] = embeddings[idx].astype(np.dtype(spec["dtype"]))  # type: ignore[index]
        elif kind == "file":
            out[name] = open_array(directory / spec["file"])
        else:
            raise ValueError(f"{directory}: state array {name!r} has an unknown storage "
                             f"{kind!r}; this repwatch reads embeddings, rows and file")
    return out
