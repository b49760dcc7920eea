"""Locality-sensitive content hashes of inputs (Blacklight-style quantised window hashes).

Blacklight (Li et al., USENIX Security 2022) quantises an input's values, slides a window over
the flattened input and hashes every window: two inputs that share many window hashes are
near-duplicates even when a patch of one was changed (as SquareAttack does), while distinct
benign inputs share few. The sidecar computes the hashes from the raw request; only the hashes
travel, never the input.

The hash of a window is position-independent (it reads the window's content only), 64-bit,
seeded and reproducible across machines (integer arithmetic only).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

U64 = NDArray[np.uint64]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: U64) -> U64:
    """splitmix64 finaliser: spreads the bits of a 64-bit integer."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def window_hashes(
    X: ArrayLike,
    *,
    value_range: tuple[float, float] = (0.0, 1.0),
    levels: int = 16,
    window: int = 4,
    stride: int = 1,
    seed: int = 0,
) -> U64:
    """64-bit hashes of the quantised sliding windows of each flattened row of ``X``.

    Parameters
    ----------
    X : array-like of shape (n, ...)
        Raw inputs (any shape per row; rows are flattened in C order).
    value_range : (float, float)
        Range of the raw values, mapped onto ``levels`` equal bins (values outside are
        clipped): ``(0, 1)`` for images on [0, 1], ``(0, 16)`` for the digits pixels.
    levels : int
        Quantisation levels (coarser: more tolerant to small noise).
    window : int
        Values per window. The defaults (16 levels, windows of 4) were chosen on the digits
        benchmark (``benchmarks/results/security.md``): longer windows miss SquareAttack's
        early queries, whose patches cover most of an 8×8 image.
    stride : int
        Step between windows.
    seed : int
        Seeds the hash (different seeds give unrelated hashes).

    Returns
    -------
    ndarray of uint64, shape (n, n_windows)
        ``n_windows = (d - window) // stride + 1`` for ``d`` values per row.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((1, 64))
    >>> patched = x.copy()
    >>> patched[0, 40:44] = 1.0 - patched[0, 40:44]  # a small patch changed
    >>> other = rng.random((1, 64))
    >>> H = window_hashes(np.vstack([x, patched, other]))
    >>> H.shape, H.dtype
    ((3, 61), dtype('uint64'))
    >>> shared = lambda a, b: len(np.intersect1d(H[a], H[b]))
    >>> shared(0, 1) >= 40, shared(0, 2)
    (True, 0)
    """
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"X must have shape (n, ...) with n >= 1, got {arr.shape}")
    flat = arr.reshape(arr.shape[0], -1)
    if not np.isfinite(flat).all():
        raise ValueError("X contains NaN or inf; hashes need finite inputs")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    if levels < 2 or window < 1 or stride < 1:
        raise ValueError(
            f"need levels >= 2, window >= 1, stride >= 1; got {levels}, {window}, {stride}"
        )
    if flat.shape[1] < window:
        raise ValueError(f"rows have {flat.shape[1]} values, fewer than window={window}")
    q = np.clip(np.floor((flat - lo) / (hi - lo) * levels), 0, levels - 1).astype(np.uint64)
    wins = np.lib.stride_tricks.sliding_window_view(q, window, axis=1)[:, ::stride]
    coeffs = _mix(np.arange(1, window + 1, dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 20))
    coeffs |= np.uint64(1)  # odd multipliers
    with np.errstate(over="ignore"):
        h = (wins * coeffs).sum(axis=2, dtype=np.uint64)
        return _mix(h + np.uint64(seed))


def content_digest(X: ArrayLike) -> U64:
    """Exact 64-bit digest of each row's raw bytes (float32): equal only for identical inputs.

    Exact duplicates are not evidence of an attack (caching attackers send none, benign
    clients retry): the query detector skips them.
    """
    import hashlib

    arr = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    rows = arr.reshape(arr.shape[0], -1)
    out = np.empty(rows.shape[0], dtype=np.uint64)
    for i, row in enumerate(rows):
        out[i] = int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little")
    return out
