"""k-nearest-neighbour distance on L2-normalised embeddings (Sun et al., ICML 2022)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from detectors.base import register
from detectors.ood._exact import kth_largest_index, kth_neighbour
from detectors.ood._index import INDEX_FORMAT, IVFIndex
from detectors.ood.base import FloatArray, OODDetector

F32 = NDArray[np.float32]

__all__ = ["KNNDetector", "kth_largest_index"]

#: Rows whose k-th squared distance is below this share of the squared-norm scale are searched
#: again in float64: there float32 similarities cannot rank near-duplicates reliably.
_REFINE_REL = 1e-3
#: Extra neighbours fetched from the approximate index and re-ranked in float64.
_ANN_MARGIN = 16


@register("ood.knn")
class KNNDetector(OODDetector):
    """Distance to the k-th nearest reference embedding, after L2 normalisation.

    Exact search (the default): queries are processed in blocks of rows, the reference in
    chunks of rows; each block's similarities come from one float32 BLAS product against the
    stored reference (a transposed view, never a copy), a selection keeps the best ``k`` per
    row (see :mod:`detectors.ood._exact`), and the k-th neighbour's distance is recomputed in
    float64. Blocks run in a thread pool, each with single-threaded BLAS (see
    :mod:`detectors.ood._blocks`). Rows whose neighbours are near-duplicates (where float32
    cannot rank them) are searched again in float64.

    From ``approximate_from`` fitted rows on, an IVF index (faiss, the ``faiss`` extra; see
    :mod:`detectors.ood._index`) replaces the exact search: each query reads ``nprobe`` of
    ``nlist`` cells, the best ``k + 16`` candidates found are re-ranked in float64. The
    calibration scores come from the same index, so the threshold keeps its false-positive
    rate for the approximate score (``benchmarks/results/knn_scale.md`` measures recall@k,
    AUROC and FPR against exact search).

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
        Memory for one block of similarities; a ``score`` call holds about two per thread.
        Larger blocks amortise BLAS's packing of the reference over more query rows: on
        10k x 10k x 128, 8 / 32 / 64 MB ran at 0.57 / 0.65 / 0.70 of the single-thread SGEMM
        peak. 32 MB is the default; batches smaller than a block never allocate a full one.
    n_jobs : int or None
        Threads scoring blocks in parallel (``None``: all available cores).
    max_calibration : int or None
        At most this many held-out rows calibrate the threshold (the rest of the hold-out is
        fitted on), so the fit costs ``O(max_calibration * n)`` instead of ``O(n^2)``.
        ``None``: no cap. References up to 50k rows are unaffected by the default.
    approximate_from : int or None
        Fitted reference size from which the approximate IVF index is used; ``None`` (the
        default): always exact.
    nlist : int or None
        IVF cells (``None``: ``2 sqrt(n_fit)``).
    nprobe : int
        IVF cells searched per query (recall against speed).

    Attributes
    ----------
    k_ : int
        The neighbour rank used.
    reference_ : ndarray of float32, shape (n_fit, d)
        The (normalised) reference the neighbours are searched in.
    half_sq_norms_ : ndarray of float32, shape (n_fit,)
        ``|r|^2 / 2`` of each reference row (used when ``normalize=False``).
    index_ : str
        ``"exact"`` or ``"ivf"`` (set only when the approximate index is in use).
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
    index_: str = "exact"
    _ivf: IVFIndex | None = None

    def __init__(
        self,
        k: int | None = None,
        normalize: bool = True,
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
        block_bytes: int = 1 << 25,
        n_jobs: int | None = None,
        max_calibration: int | None = 10_000,
        approximate_from: int | None = None,
        nlist: int | None = None,
        nprobe: int = 16,
    ) -> None:
        self.k = k
        self.normalize = normalize
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.block_bytes = block_bytes
        self.n_jobs = n_jobs
        self.max_calibration = max_calibration
        self.approximate_from = approximate_from
        self.nlist = nlist
        self.nprobe = nprobe

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
        self._ivf = None
        if self.approximate_from is not None and X.shape[0] >= self.approximate_from:
            self._ivf = IVFIndex.build(self.reference_, self.nlist, self.seed)
            self.index_ = "ivf"

    def _score(self, X: FloatArray) -> FloatArray:
        Q64 = _normalize(X) if self.normalize else X
        Q = Q64.astype(np.float32)
        R = self.reference_
        if self._ivf is not None:
            return np.sqrt(np.maximum(self._approximate_kth_sq(Q, Q64), 0.0))
        half = None if self.normalize else self.half_sq_norms_
        idx = kth_neighbour(Q, R, self.k_, half, self.block_bytes, self.n_jobs)
        # the k-th neighbour's distance is recomputed in float64: the float32 product alone
        # would leave errors of ~1e-6
        out = _sq_dist_rows(R, idx, Q64)
        scale = np.einsum("ij,ij->i", Q64, Q64) + 2.0 * float(self.half_sq_norms_.max())
        near = np.flatnonzero(out < _REFINE_REL * scale)
        for i in near:
            out[i] = self._exact_kth_sq(Q64[i], Q[i])
        return np.sqrt(np.maximum(out, 0.0))

    def _approximate_kth_sq(self, Q: F32, Q64: FloatArray) -> FloatArray:
        """k-th squared distance among the index's best candidates, re-ranked in float64."""
        assert self._ivf is not None
        R, k = self.reference_, self.k_
        m = min(R.shape[0], k + _ANN_MARGIN)
        out = np.empty(Q.shape[0])
        step = max(1, (1 << 25) // (8 * m * R.shape[1]))  # bounds the (rows, m, d) float64 gather
        for lo in range(0, Q.shape[0], step):
            hi = min(Q.shape[0], lo + step)
            cand = self._ivf.search(Q[lo:hi], m, self.nprobe)
            found = cand >= 0
            diff = R[np.where(found, cand, 0)].astype(np.float64)
            diff -= Q64[lo:hi, None, :]
            d2 = np.einsum("ijk,ijk->ij", diff, diff)
            d2[~found] = np.inf
            out[lo:hi] = np.partition(d2, k - 1, axis=1)[:, k - 1]
        short = np.flatnonzero(~np.isfinite(out))  # fewer than k rows in the probed cells
        if short.size:
            half = None if self.normalize else self.half_sq_norms_
            idx = kth_neighbour(Q[short], R, k, half, self.block_bytes, self.n_jobs)
            out[short] = _sq_dist_rows(R, idx, Q64[short])
        return out

    # --- state: the faiss index travels as faiss's own bytes, versioned --------------------
    def _extra_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        if self._ivf is None:
            return {}, {}
        meta = {"index_format": INDEX_FORMAT, "faiss_version": IVFIndex.version()}
        return {"ivf_index": self._ivf.to_bytes()}, meta

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self._ivf = None
        if getattr(self, "index_", "exact") != "ivf":
            return
        if meta.get("index_format") != INDEX_FORMAT or "ivf_index" not in arrays:
            raise ValueError(
                f"kNN state holds an index of format {meta.get('index_format')!r}; this "
                f"repwatch reads format {INDEX_FORMAT}: refit the detector on its reference"
            )
        self._ivf = IVFIndex.from_bytes(arrays["ivf_index"])

    def _exact_kth_sq(self, q64: FloatArray, q32: F32) -> float:
        """Exact float64 k-th smallest squared distance of one query (near-duplicate rows)."""
        R = self.reference_
        s = R @ q32 - (0.0 if self.normalize else self.half_sq_norms_)
        m = min(R.shape[0], 2 * self.k_ + 16)  # margin for float32 mis-ordering
        cand = np.argpartition(s, R.shape[0] - m)[R.shape[0] - m :]
        diff = R[cand].astype(np.float64) - q64
        d2 = np.einsum("ij,ij->i", diff, diff)
        return float(np.partition(d2, self.k_ - 1)[self.k_ - 1])


def _sq_dist_rows(R: F32, idx: NDArray[np.intp], Q64: FloatArray) -> FloatArray:
    """``|R[idx[i]] - Q64[i]|^2`` in float64, in slices that bound the float64 copy."""
    out = np.empty(idx.shape[0])
    for lo in range(0, idx.shape[0], 1 << 14):
        diff = R[idx[lo : lo + (1 << 14)]].astype(np.float64)
        diff -= Q64[lo : lo + (1 << 14)]
        out[lo : lo + (1 << 14)] = np.einsum("ij,ij->i", diff, diff)
    return out


def _normalize(X: FloatArray) -> FloatArray:
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))
    # A zero embedding has no direction; it stays at the origin (distance 1 to every unit vector).
    norms[norms == 0.0] = 1.0
    return X / norms[:, None]
