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

#: Query rows per block; 256 x 128 float32 panels keep OpenBLAS's sgemm at its peak.
ROW_BLOCK = 256
#: Fewest query rows per block against the whole reference; below that the reference is
#: searched in chunks instead.
MIN_ROWS = 128


def kth_largest_index(S: F32, k: int) -> Index:
    """Column index of the k-th largest value of each row of ``S`` (ties: any of them).

    For small ``k`` the rows are cut into ``g`` strided groups; the k-th largest group maximum
    is a lower bound of the row's k-th largest value, and every value at or above it lies in
    the ``k`` groups with the largest maxima. Selecting among those ``k * (n / g)`` candidates
    plus one cheap pass for the maxima costs about 30 % less than partitioning whole rows.
    """
    if k == 1:
        return S.argmax(axis=1)
    cols = top_k_columns(S, k)
    vals = np.take_along_axis(S, cols, axis=1)
    return np.take_along_axis(cols, vals.argmin(axis=1)[:, None], axis=1)[:, 0]


def top_k_columns(S: F32, k: int) -> Index:
    """Columns of the ``k`` largest values of each row of ``S``, in no particular order."""
    b, n = S.shape
    if k >= n:
        return np.broadcast_to(np.arange(n), (b, n)).copy()
    gs = int(min(16, max(4, round(np.sqrt(n / k) / 2))))  # members per group
    G = -(-n // gs)  # number of groups; group g holds columns g, g + G, g + 2G, ...
    if G < 4 * k:
        return np.argpartition(S, n - k, axis=1)[:, n - k :]
    gmax = S[:, :G].copy()
    for m in range(1, gs):
        lo, hi = m * G, min(n, (m + 1) * G)
        if hi > lo:
            np.maximum(gmax[:, : hi - lo], S[:, lo:hi], out=gmax[:, : hi - lo])
    groups = np.argpartition(gmax, G - k, axis=1)[:, G - k :]
    cols = (groups[:, None, :] + (np.arange(gs) * G)[None, :, None]).reshape(b, gs * k)
    valid = cols < n
    cand = np.take_along_axis(S, np.where(valid, cols, 0), axis=1)
    cand[~valid] = -np.inf
    j = np.argpartition(cand, gs * k - k, axis=1)[:, gs * k - k :]
    return np.take_along_axis(cols, j, axis=1)


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
