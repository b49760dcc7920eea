"""Exact neighbour distances shared by the adversarial and poisoning detectors (numpy).

References here are small (a trusted labelled set, thousands of rows), so an exact search in
row blocks is cheap: one float64 matrix product per block, then a partition per class.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from detectors.adversarial.base import class_index

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Memory of one block of squared distances (float64).
_BLOCK_BYTES = 1 << 24


def normalize_rows(X: FloatArray) -> FloatArray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    norms[norms == 0.0] = 1.0
    return X / norms[:, None]


def _blocks(n_query: int, n_ref: int) -> range:
    rows = max(1, _BLOCK_BYTES // (8 * max(1, n_ref)))
    return range(0, n_query, rows)


def sq_distances(Q: FloatArray, R: FloatArray, r_sq: FloatArray) -> FloatArray:
    """Squared Euclidean distances ``(len(Q), len(R))`` (expanded form, clipped at 0)."""
    q_sq = np.einsum("ij,ij->i", Q, Q)
    D = Q @ R.T
    D *= -2.0
    D += q_sq[:, None]
    D += r_sq[None, :]
    return np.maximum(D, 0.0)


def class_kth_distances(
    Q: FloatArray, R: FloatArray, ref_class: IntArray, n_classes: int, k: int
) -> FloatArray:
    """Distance from each query to its ``k``-th nearest reference row of each class.

    Returns ``(len(Q), n_classes)``; a class with fewer than ``k`` rows uses its farthest row,
    a class with none gives ``inf``.
    """
    r_sq = np.einsum("ij,ij->i", R, R)
    members = [np.flatnonzero(ref_class == c) for c in range(n_classes)]
    out = np.full((Q.shape[0], n_classes), np.inf)
    step = _blocks(Q.shape[0], R.shape[0]).step
    for lo in range(0, Q.shape[0], step):
        D = sq_distances(Q[lo : lo + step], R, r_sq)
        for c, cols in enumerate(members):
            if cols.size == 0:
                continue
            kc = min(k, cols.size)
            Dc = D[:, cols]
            out[lo : lo + step, c] = np.partition(Dc, kc - 1, axis=1)[:, kc - 1]
    return np.sqrt(out)


def knn_distances(Q: FloatArray, R: FloatArray, k: int) -> FloatArray:
    """The ``k`` smallest distances from each query to the reference, ascending ``(n, k)``."""
    r_sq = np.einsum("ij,ij->i", R, R)
    k = min(k, R.shape[0])
    out = np.empty((Q.shape[0], k))
    step = _blocks(Q.shape[0], R.shape[0]).step
    for lo in range(0, Q.shape[0], step):
        D = sq_distances(Q[lo : lo + step], R, r_sq)
        part = np.partition(D, k - 1, axis=1)[:, :k]
        out[lo : lo + step] = np.sort(part, axis=1)
    return np.sqrt(out)


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
