"""Exact neighbour distances shared by the adversarial and poisoning detectors (numpy).

References here are small (a trusted labelled set, thousands of rows), so an exact search in
row blocks is cheap: one float64 matrix product per block, then a partition per class.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from detectors.adversarial.base import class_index
from detectors.ood._blocks import run_blocks
from detectors.ood._exact import kth_neighbour, top_k_columns

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Memory of one block of float32 similarities.
_BLOCK_BYTES = 1 << 24


def normalize_rows(X: FloatArray) -> FloatArray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    norms[norms == 0.0] = 1.0
    return X / norms[:, None]


def _f32(X: FloatArray) -> NDArray[np.float32]:
    return np.ascontiguousarray(X, dtype=np.float32)


def _distances_to(Q: FloatArray, R: FloatArray, idx: NDArray[np.intp]) -> FloatArray:
    """Float64 distance from each query to the reference rows ``idx`` picks for it."""
    diff = R[idx] - (Q[:, None, :] if idx.ndim == 2 else Q)
    axis = diff.ndim - 1
    return np.sqrt(np.einsum("...d,...d->...", diff, diff)) if axis else np.abs(diff)


def class_kth_distances(
    Q: FloatArray, R: FloatArray, ref_class: IntArray, n_classes: int, k: int
) -> FloatArray:
    """Distance from each query to its ``k``-th nearest reference row of each class.

    Returns ``(len(Q), n_classes)``; a class with fewer than ``k`` rows uses its farthest row,
    a class with none gives ``inf``. The search is :func:`detectors.ood._exact.kth_neighbour`
    (float32 products, blocked) on each class's rows; the chosen row's distance is float64.
    """
    Q32, R32 = _f32(Q), _f32(R)
    half = 0.5 * np.einsum("ij,ij->i", R32, R32)
    out = np.full((Q.shape[0], n_classes), np.inf)
    for c in range(n_classes):
        cols = np.flatnonzero(ref_class == c)
        if cols.size == 0 or Q.shape[0] == 0:
            continue
        kc = min(k, cols.size)
        idx = kth_neighbour(Q32, R32[cols], kc, half[cols], _BLOCK_BYTES, 1)
        out[:, c] = _distances_to(Q, R, cols[idx])
    return out


def knn_distances(Q: FloatArray, R: FloatArray, k: int) -> FloatArray:
    """The ``k`` smallest distances from each query to the reference, ascending ``(n, k)``.

    Row blocks of float32 products with :func:`detectors.ood._exact.top_k_columns` picking
    the ``k`` nearest; their distances are float64.
    """
    k = min(k, R.shape[0])
    Q32, R32 = _f32(Q), _f32(R)
    half = 0.5 * np.einsum("ij,ij->i", R32, R32)
    out = np.empty((Q.shape[0], k))

    def block(lo: int, hi: int) -> None:
        S = Q32[lo:hi] @ R32.T
        S -= half
        out[lo:hi] = np.sort(_distances_to(Q[lo:hi], R, top_k_columns(S, k)), axis=1)

    run_blocks(block, Q.shape[0], _BLOCK_BYTES // (4 * max(1, R.shape[0])), 1)
    return out


def class_margin(
    D: FloatArray, claimed: IntArray, eps: float = 1e-6
) -> tuple[FloatArray, IntArray]:
    """``log d_claimed - log d_other`` from per-class distances, and the nearest class.

    ``D`` is :func:`class_kth_distances` output; ``claimed`` the class index each record is
    said to belong to (the model's prediction, or a feedback label; ``-1``: a class the
    reference lacks, which scores as far as possible). Positive: the record's neighbours
    belong to another class than the claimed one.
    """
    n, c = D.shape
    rows = np.arange(n)
    known = claimed >= 0
    d_claim = np.where(known, D[rows, np.maximum(claimed, 0)], np.inf)
    others = D.copy()
    others[rows[known], claimed[known]] = np.inf
    d_other = others.min(axis=1) if c > 1 else np.full(n, np.inf)
    top = float(np.nanmax(np.where(np.isfinite(D), D, 0.0), initial=1.0)) * 4.0 + 1.0
    d_claim = np.minimum(d_claim, top)  # unknown or empty classes: farther than any neighbour
    d_other = np.minimum(d_other, top)
    score = np.log(d_claim + eps) - np.log(d_other + eps)
    return score, D.argmin(axis=1).astype(np.int64)


class LabelledNeighbours:
    """Fit and query of a labelled reference: the ``k``-th distance to each class.

    Shared by the detectors that let a trusted labelled reference vote on a record's class
    (SSL-vs-model disagreement, feedback label consistency). The host sets ``k``,
    ``normalize`` and ``classes_``; the fit stores ``reference_`` and ``ref_class_``.
    """

    k: int
    normalize: bool
    classes_: IntArray
    reference_: FloatArray
    ref_class_: IntArray

    def _fit_reference(self, X: FloatArray, y: IntArray) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        self.reference_ = normalize_rows(X) if self.normalize else X.copy()
        self.ref_class_ = class_index(self.classes_, y)

    def _class_distances(self, Q: FloatArray) -> FloatArray:
        """``(len(Q), n_classes)``: see :func:`class_kth_distances`."""
        Q = normalize_rows(Q) if self.normalize else Q
        return class_kth_distances(
            Q, self.reference_, self.ref_class_, self.classes_.shape[0], self.k
        )
