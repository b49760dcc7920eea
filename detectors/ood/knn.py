"""k-nearest-neighbour distance on L2-normalised embeddings (Sun et al., ICML 2022)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from detectors.base import register
from detectors.ood._blocks import run_blocks
from detectors.ood.base import FloatArray, OODDetector

F32 = NDArray[np.float32]

#: Rows whose k-th squared distance is below this share of the squared-norm scale are searched
#: again in float64: there float32 similarities cannot rank near-duplicates reliably.
_REFINE_REL = 1e-3


@register("ood.knn")
class KNNDetector(OODDetector):
    """Distance to the k-th nearest reference embedding, after L2 normalisation.

    Exact search: the query batch is processed in row blocks; each block's similarities to the
    whole reference come from one float32 BLAS product against the stored reference (a
    transposed view, never a copy), a partition picks the k-th largest per row (see
    :func:`kth_largest_index`), and that neighbour's distance is recomputed in float64.
    Blocks run in a thread pool, each with single-threaded BLAS (see
    :mod:`detectors.ood._blocks`). Rows whose neighbours are near-duplicates (where float32
    cannot rank them) are searched again in float64. References far beyond ~100k rows would
    want an approximate index; none is bundled (see ``benchmarks/results/ood.md``).

    Parameters
    ----------
    k : int or None
        Rank of the neighbour whose distance is the score. ``None`` follows the paper's
        scaling of ``k`` with the reference size (k = 50 for CIFAR-10's 50k images, k = 10 for
        a 1 % sample of ImageNet): ``k_ = max(1, round(n_fit / 1000))``.
    normalize : bool
        L2-normalise reference and queries first (the paper's method). ``False`` gives plain
        Euclidean kNN, using precomputed squared reference norms.
    fpr : float
        Target false-positive rate of ``threshold_`` on in-distribution data.
    calibration_fraction : float
        Share of the reference held out (seeded) to calibrate the threshold.
    seed : int or None
        Seed of the calibration split.
    block_bytes : int
        Memory for one block of similarities; a ``score`` call holds two per thread.
    n_jobs : int or None
        Threads scoring blocks in parallel (``None``: all available cores).

    Attributes
    ----------
    k_ : int
        The neighbour rank used.
    reference_ : ndarray of float32, shape (n_fit, d)
        The (normalised) reference the neighbours are searched in.
    half_sq_norms_ : ndarray of float32, shape (n_fit,)
        ``|r|^2 / 2`` of each reference row (used when ``normalize=False``).
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centre = np.zeros(16)
    >>> centre[0] = 4.0
    >>> ref = rng.normal(size=(2000, 16)) + centre  # embeddings pointing along axis 0
    >>> det = KNNDetector().fit(ref)  # k_ = round(1600 / 1000) = 2
    >>> inlier = rng.normal(size=(500, 16)) + centre
    >>> outlier = rng.normal(size=(500, 16)) + np.roll(centre, 1)  # a new direction
    >>> res = det.predict(np.vstack([inlier, outlier]))
    >>> round(float(res.is_ood[:500].mean()), 2), round(float(res.is_ood[500:].mean()), 2)
    (0.01, 0.95)
    >>> float(res.tail_prob.min()) == 1 / (len(det.calibration_scores_) + 1)
    True
    """

    _min_fit_rows: ClassVar[int] = 1

    k_: int
    reference_: F32
    half_sq_norms_: F32

    def __init__(
        self,
        k: int | None = None,
        normalize: bool = True,
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
        block_bytes: int = 1 << 23,
        n_jobs: int | None = None,
    ) -> None:
        self.k = k
        self.normalize = normalize
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.block_bytes = block_bytes
        self.n_jobs = n_jobs

    def _fit_model(self, X: FloatArray, y: NDArray[Any] | None) -> None:
        k = max(1, round(X.shape[0] / 1000)) if self.k is None else int(self.k)
        if not 1 <= k <= X.shape[0]:
            raise ValueError(
                f"k={k} needs at least k reference rows after the calibration hold-out, got "
                f"{X.shape[0]}; lower k or pass a larger reference"
            )
        self.k_ = k
        ref = _normalize(X) if self.normalize else X
        self.reference_ = np.ascontiguousarray(ref, dtype=np.float32)
        sq = np.einsum("ij,ij->i", self.reference_, self.reference_, dtype=np.float64)
        self.half_sq_norms_ = (0.5 * sq).astype(np.float32)

    def _score(self, X: FloatArray) -> FloatArray:
        Q64 = _normalize(X) if self.normalize else X
        Q = Q64.astype(np.float32)
        R = self.reference_
        n_ref = R.shape[0]
        rows = int(min(max(16, self.block_bytes // (4 * n_ref)), max(1, Q.shape[0])))
        scale = np.einsum("ij,ij->i", Q64, Q64) + 2.0 * float(self.half_sq_norms_.max())
        out = np.empty(Q.shape[0], dtype=np.float64)

        def block(lo: int, hi: int) -> None:
            S = Q[lo:hi] @ R.T  # R.T is a view: the reference is never copied
            if not self.normalize:
                S -= self.half_sq_norms_  # q.r - |r|^2/2: largest = nearest
            # the k-th neighbour's distance is recomputed in float64: the float32 product
            # alone would leave errors of ~1e-6
            idx = kth_largest_index(S, self.k_)
            diff = R[idx].astype(np.float64)
            diff -= Q64[lo:hi]
            out[lo:hi] = np.einsum("ij,ij->i", diff, diff)

        run_blocks(block, Q.shape[0], rows, self.n_jobs)
        near = np.flatnonzero(out < _REFINE_REL * scale)
        for i in near:
            out[i] = self._exact_kth_sq(Q64[i], Q[i])
        return np.sqrt(np.maximum(out, 0.0))

    def _exact_kth_sq(self, q64: FloatArray, q32: F32) -> float:
        """Exact float64 k-th smallest squared distance of one query (near-duplicate rows)."""
        R = self.reference_
        s = R @ q32 - (0.0 if self.normalize else self.half_sq_norms_)
        m = min(R.shape[0], 2 * self.k_ + 16)  # margin for float32 mis-ordering
        cand = np.argpartition(s, R.shape[0] - m)[R.shape[0] - m :]
        diff = R[cand].astype(np.float64) - q64
        d2 = np.einsum("ij,ij->i", diff, diff)
        return float(np.partition(d2, self.k_ - 1)[self.k_ - 1])


def kth_largest_index(S: F32, k: int) -> NDArray[np.intp]:
    """Column index of the k-th largest value of each row of ``S`` (ties: any of them).

    For small ``k`` the rows are cut into ``g`` strided groups; the k-th largest group maximum
    is a lower bound of the row's k-th largest value, and every value at or above it lies in
    the ``k`` groups with the largest maxima. Selecting among those ``k * (n / g)`` candidates
    plus one cheap pass for the maxima costs about 30 % less than partitioning whole rows.
    """
    b, n = S.shape
    if k == 1:
        return S.argmax(axis=1)
    gs = int(min(16, max(4, round(np.sqrt(n / k) / 2))))  # members per group
    G = -(-n // gs)  # number of groups; group g holds columns g, g + G, g + 2G, ...
    if G < 4 * k:
        top = np.partition(S, n - k, axis=1)[:, n - k]
        return (S == top[:, None]).argmax(axis=1)
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
    j = np.argpartition(cand, gs * k - k, axis=1)[:, gs * k - k]
    return np.take_along_axis(cols, j[:, None], axis=1)[:, 0]


def _normalize(X: FloatArray) -> FloatArray:
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    # A zero embedding has no direction; it stays at the origin (distance 1 to every unit vector).
    norms[norms == 0.0] = 1.0
    return X / norms[:, None]
