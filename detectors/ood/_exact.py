"""Exact k-th nearest neighbour search on float32 BLAS products, blocked in rows and columns.

The similarity of a block of ``b`` queries to a chunk of ``c`` reference rows is one float32
GEMM (``Q_b @ R_c.T``, a transposed view of the stored reference, never a copy); a selection
then keeps each row's ``k`` best columns. The block is ``b x c`` with ``b`` held at
:data:`ROW_BLOCK` (at least :data:`MIN_ROWS`), so the product keeps the shape a GEMM runs
at full speed for whatever the reference size: a block with few rows re-reads the whole
reference per handful of queries and falls to memory bandwidth (measured: 47 GFLOP/s at
100k rows, 36 at 200k, against 88-95 for one large product). References longer than one
chunk are searched chunk by chunk, a running top-``k`` merged after each.

"Best" is the largest ``q . r`` for unit vectors, or ``q . r - |r|^2 / 2`` for plain
Euclidean search (both order the reference by distance). The chosen neighbour's squared
distance is recomputed in float64 by the caller: float32 products alone carry errors of ~1e-6.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from detectors.ood._blocks import run_blocks

F32 = NDArray[np.float32]
Index = NDArray[np.intp]

#: Groups a row is cut into by the top-k selection (see :func:`top_k_columns`).
GROUPS = 512
#: Query rows per block; 256 x 128 float32 panels keep OpenBLAS's sgemm at its peak.
ROW_BLOCK = 256
#: Fewest query rows per block against the whole reference; below that the reference is
#: searched in chunks instead.
MIN_ROWS = 128


def kth_largest_index(S: F32, k: int) -> Index:
    """Column index of the k-th largest value of each row of ``S`` (ties: any of them)."""
    if k == 1:
        return S.argmax(axis=1)
    return top_k_columns(S, k, ordered=True)[:, k - 1]


def top_k_columns(S: F32, k: int, ordered: bool = False) -> Index:
    """Columns of the ``k`` largest values of each row of ``S`` (``ordered``: largest first).

    A partition of whole rows costs ~8 ns an element, three times the product that made them.
    Instead each row is cut into ``G`` strided groups (group ``g`` holds columns ``g, g + G,
    ...``): one reduction over a ``(rows, n / G, G)`` view gives the group maxima (~0.15 ns an
    element), the k-th largest of those is a lower bound ``t`` of the row's k-th largest value
    (the ``k`` best groups each hold a value ``>= t``), and one comparison pass keeps only the
    values ``>= t`` (typically little more than ``k`` a row), which are sorted. Measured on
    209 x 10,000 blocks, k = 10: 0.5 ns an element against 2.1 for the previous strided-group
    scheme (``benchmarks/results/knn_scale.md``).
    """
    b, n = S.shape
    k = min(k, n)
    G = max(4 * k, GROUPS)
    if 2 * G > n:
        cols = np.argpartition(S, n - k, axis=1)[:, n - k :]
        if ordered:
            order = np.argsort(-np.take_along_axis(S, cols, axis=1), axis=1, kind="stable")
            cols = np.take_along_axis(cols, order, axis=1)
        return cols
    m = n // G  # full members per group; the last n - m G columns join the first groups
    gmax = S[:, : m * G].reshape(b, m, G).max(axis=1)
    if n > m * G:
        np.maximum(gmax[:, : n - m * G], S[:, m * G :], out=gmax[:, : n - m * G])
    t = np.partition(gmax, G - k, axis=1)[:, G - k]
    flat = np.flatnonzero(S >= t[:, None])  # row-major: rows come sorted
    rows, cols = flat // n, flat % n
    order = np.lexsort((-S[rows, cols], rows))  # by row, then by value, largest first
    first = np.searchsorted(rows, np.arange(b))  # every row has at least k candidates
    return cols[order[first[:, None] + np.arange(k)]]


def kth_neighbour(
    Q: F32,
    R: F32,
    k: int,
    half_sq_norms: F32 | None,
    block_bytes: int,
    n_jobs: int | None,
) -> Index:
    """Index into ``R`` of each query's k-th best reference row (see the module docstring).

    ``half_sq_norms`` (``|r|^2 / 2``) switches to Euclidean ordering; ``None`` ranks by the
    plain inner product (unit vectors). ``block_bytes`` bounds one block of similarities (a
    thread holds about two); ``n_jobs`` threads run blocks in parallel.
    """
    n_q, n_ref = Q.shape[0], R.shape[0]
    out = np.empty(n_q, dtype=np.intp)
    rows_one_chunk = block_bytes // (4 * n_ref)
    if rows_one_chunk >= MIN_ROWS or n_ref <= 4 * k:
        rows, chunk = int(min(max(rows_one_chunk, MIN_ROWS), ROW_BLOCK * 4)), n_ref
    else:
        rows = ROW_BLOCK
        chunk = int(max(4 * k, block_bytes // (4 * rows)))

    def similarities(lo: int, hi: int, c0: int, c1: int) -> F32:
        S = Q[lo:hi] @ R[c0:c1].T  # the slice's .T is a view: the reference is never copied
        if half_sq_norms is not None:
            S -= half_sq_norms[c0:c1]
        return S

    def block(lo: int, hi: int) -> None:
        if chunk >= n_ref:
            out[lo:hi] = kth_largest_index(similarities(lo, hi, 0, n_ref), k)
            return
        best_v = np.full((hi - lo, k), -np.inf, dtype=np.float32)
        best_i = np.zeros((hi - lo, k), dtype=np.intp)
        for c0 in range(0, n_ref, chunk):
            c1 = min(n_ref, c0 + chunk)
            S = similarities(lo, hi, c0, c1)
            cols = top_k_columns(S, min(k, c1 - c0))
            vals = np.hstack([best_v, np.take_along_axis(S, cols, axis=1)])
            idx = np.hstack([best_i, cols + c0])
            keep = np.argpartition(vals, vals.shape[1] - k, axis=1)[:, vals.shape[1] - k :]
            best_v = np.take_along_axis(vals, keep, axis=1)
            best_i = np.take_along_axis(idx, keep, axis=1)
        out[lo:hi] = np.take_along_axis(best_i, best_v.argmin(axis=1)[:, None], axis=1)[:, 0]

    run_blocks(block, n_q, rows, n_jobs)
    return out
