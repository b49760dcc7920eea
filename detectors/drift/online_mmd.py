"""Sequential MMD change detection calibrated to an expected run time (Cobb et al., 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

from detectors.base import StreamingDetector, check_array, register
from detectors.drift.base import (
    FloatArray,
    OnlineDriftResult,
    gaussian_kernel,
    resolve_bandwidth,
    small_blas,
)

#: Bootstrap samples processed per vectorised chunk during calibration (bounds memory).
_CHUNK = 200
#: Records scored per vectorised chunk by ``update_batch``.
_STEP_CHUNK = 512
#: Most rows of the pool that bootstrap streams are drawn from (beyond it: a seeded sample).
_POOL_MAX = 50_000


def _block_sums(P: NDArray[Any], lo: NDArray[Any], size: int) -> NDArray[Any]:
    """Sums of the ``size x size`` diagonal blocks starting at ``lo`` from 2-D prefix sums."""
    hi = lo + size
    return P[..., hi, hi] - P[..., lo, hi] - P[..., hi, lo] + P[..., lo, lo]


def _prefix2d(A: NDArray[Any]) -> NDArray[Any]:
    P = np.zeros((*A.shape[:-2], A.shape[-2] + 1, A.shape[-1] + 1))
    P[..., 1:, 1:] = A.cumsum(-2).cumsum(-1)
    return P


@register("drift.mmd_online")
class OnlineMMDDrift(StreamingDetector):
    """Online MMD detector with thresholds calibrated to a target expected run time.

    A sliding window of the last ``window_size`` records is compared with the reference by
    the unbiased MMD² at every record. Thresholds follow Cobb et al. (2022), "Sequential
    multivariate change detection with calibrated and memoryless false detection rates": at fit
    time the reference is split ``n_bootstraps`` times into a sub-reference and an extended
    window of ``2 W`` rows, the first ``W`` playing the initial window and the next ``W`` the
    stream; the threshold for time ``t`` is the ``1 - 1/ert`` quantile of the statistic over
    the bootstrap streams that have not yet crossed an earlier threshold. The false-alarm
    hazard is then ``~1/ert`` at every step, so the run length without drift is about
    geometric with mean ``ert``. The quantile is the order statistic whose *expected*
    exceedance probability is ``1/ert`` (Weibull plotting position ``k / (B + 1)``); with
    ``B = 1000`` and ``ert = 500`` only ~2 bootstrap streams lie above it, so the realised run
    length swings widely from one calibration to the next, which is why ``n_bootstraps``
    defaults to ``10 ert`` (``benchmarks/drift_quality.py`` measures both).

    Calibration is vectorised: one kernel matrix, one gather of the ``2W x 2W`` blocks per
    bootstrap and 2-D prefix sums give all ``(W + 1) x B`` window statistics at once.
    ``update_batch`` scores a batch of records with one kernel product against the
    reference, so the amortised cost per record is a few microseconds.

    **Large references.** A record's cost is one kernel row against the sub-reference, so it
    grows with its size. References with more than ``max_reference + 2 W`` rows therefore use a
    fixed, seeded sub-reference of ``max_reference`` rows, and the thresholds are calibrated
    *for that sub-reference*: the bootstrap streams are drawn from the other rows (at most
    50k of them), each window's kernel sums are computed from the data, and the statistic is
    the deployed one exactly. Per-record cost and fit time are then independent of ``N``
    (beyond drawing the sample); the false-alarm calibration is conditional on the
    sub-reference actually used, which is what the run length depends on.

    Parameters
    ----------
    ert : float
        Target expected run time (records) without drift; the per-step false alarm rate is
        ``1 / ert``.
    window_size : int
        Size ``W`` of the sliding test window (detection delay vs. power).
    n_bootstraps : int or None
        Bootstrap streams used to calibrate the thresholds; ``None``: ``max(1000, 10 ert)``.
    bandwidth : float or None
        Gaussian kernel bandwidth (``None``: median heuristic on the reference).
    seed : int or None
        Seeds the bootstrap splits and the initial window.
    max_reference : int or None
        Largest sub-reference the stream is compared with (see *Large references*);
        ``None``: the whole reference minus ``2 W`` rows, whatever its size.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.drift import OnlineMMDDrift
    >>> rng = np.random.default_rng(1)
    >>> det = OnlineMMDDrift(ert=500, window_size=20, n_bootstraps=5000, seed=1)
    >>> det = det.fit(rng.normal(size=(500, 4)))
    >>> det.update_batch(rng.normal(size=(100, 4))).is_drift
    False
    >>> det.update_batch(rng.normal(1.0, 1.0, size=(100, 4))).detection_time  # shift at t=101
    110
    """

    def __init__(
        self,
        ert: float = 500.0,
        window_size: int = 50,
        n_bootstraps: int | None = None,
        bandwidth: float | None = None,
        seed: int | None = 0,
        max_reference: int | None = 1000,
    ) -> None:
        self.ert = ert
        self.window_size = window_size
        self.n_bootstraps = n_bootstraps
        self.bandwidth = bandwidth
        self.seed = seed
        self.max_reference = max_reference

    # --- fit: calibration ------------------------------------------------------------------
    def fit(self, X_ref: Any) -> OnlineMMDDrift:
        for key in list(self._learned()):  # a refit starts from a clean slate
            delattr(self, key)
        W = self.window_size
        if W < 2:
            raise ValueError(f"window_size must be >= 2, got {W}")
        if not self.ert > 1:
            raise ValueError(f"ert must be > 1 record, got {self.ert}")
        B = self.n_bootstraps or max(1000, int(np.ceil(10 * self.ert)))
        if B < self.ert:
            raise ValueError(
                f"n_bootstraps={B} cannot resolve a 1/ert={1 / self.ert:.2g} quantile; use at "
                f"least {int(np.ceil(self.ert))}, ideally 10 ert = {int(np.ceil(10 * self.ert))}"
            )
        self.n_bootstraps_ = B
        X = check_array(X_ref, name="X_ref", min_rows=2 * W + 2)
        N = X.shape[0]
        self.n_features_in_ = X.shape[1]
        self.bandwidth_ = resolve_bandwidth(self.bandwidth, X, self.seed)
        rng = np.random.default_rng(self.seed)
        M = self.max_reference
        if M is not None and M < 2:
            raise ValueError(f"max_reference must be >= 2 or None, got {M}")
        if M is not None and N > M + 2 * W:
            self._fit_subsampled(X, min(M, N // 2), rng)
            self.reset()
            return self
        K = gaussian_kernel(X, X, self.bandwidth_)
        self.thresholds_ = self._calibrate(K, rng)
        # Split once for deployment: sub-reference plus an initial window that does not itself
        # cross the first threshold (it conditions the calibration too).
        for _ in range(100):
            perm = rng.permutation(N)
            ref, init = perm[2 * W:], perm[:W]
            Kr = K[np.ix_(ref, ref)]
            kxx_term = (Kr.sum() - ref.size) / (ref.size * (ref.size - 1))
            Ki = K[np.ix_(init, init)]
            c0 = K[np.ix_(ref, init)].mean(axis=0)
            stat0 = kxx_term + (Ki.sum() - W) / (W * (W - 1)) - 2.0 * c0.mean()
            if stat0 < self.thresholds_[0]:
                break
        self.x_ref_ = X[ref]
        self.kxx_term_ = float(kxx_term)
        self.initial_window_ = X[init]
        self.initial_kxy_ = c0
        self.reset()
        return self

    def _fit_subsampled(self, X: FloatArray, m: int, rng: np.random.Generator) -> None:
        """Fixed sub-reference of ``m`` rows; thresholds calibrated for it on the other rows."""
        W, bw = self.window_size, self.bandwidth_
        perm = rng.permutation(X.shape[0])
        ref, pool = perm[:m], perm[m:]
        if pool.size < 2 * W:
            raise ValueError(
                f"{X.shape[0]} reference rows leave {pool.size} for calibration streams, "
                f"need {2 * W}; lower max_reference or window_size"
            )
        pool = np.sort(pool[:_POOL_MAX])
        Xr, Xp = X[ref], X[pool]
        Kr = gaussian_kernel(Xr, Xr, bw)
        kxx_term = float((Kr.sum() - m) / (m * (m - 1)))
        c_pool = gaussian_kernel(Xr, Xp, bw).mean(axis=0)  # mean kernel to the sub-reference
        stats = self._pool_statistics(Xp, c_pool, kxx_term, rng)
        self.thresholds_ = self._thresholds(stats)
        for _ in range(100):  # an initial window that does not itself cross the first threshold
            init = rng.choice(pool.size, W, replace=False)
            Ki = gaussian_kernel(Xp[init], Xp[init], bw)
            stat0 = kxx_term + (Ki.sum() - W) / (W * (W - 1)) - 2.0 * c_pool[init].mean()
            if stat0 < self.thresholds_[0]:
                break
        self.x_ref_ = Xr
        self.kxx_term_ = kxx_term
        self.initial_window_ = Xp[init]
        self.initial_kxy_ = c_pool[init]

    def _pool_statistics(
        self, Xp: FloatArray, c_pool: FloatArray, kxx_term: float, rng: np.random.Generator
    ) -> FloatArray:
        """MMD² against the fixed sub-reference of the ``W + 1`` windows of every bootstrap."""
        P, W, B = Xp.shape[0], self.window_size, self.n_bootstraps_
        L = 2 * W
        stats = np.empty((B, W + 1))
        starts = np.arange(W + 1)
        sq = np.einsum("ij,ij->i", Xp, Xp)
        gamma = -1.0 / (2.0 * self.bandwidth_**2)
        for lo in range(0, B, _CHUNK):
            b = min(_CHUNK, B - lo)
            ext = np.stack([rng.choice(P, L, replace=False) for _ in range(b)])  # ordered windows
            E = Xp[ext]  # (b, L, d)
            Et = np.ascontiguousarray(E.transpose(0, 2, 1))  # a view would miss BLAS (4x slower)
            D = sq[ext][:, :, None] + sq[ext][:, None, :] - 2.0 * (E @ Et)
            Kyy = np.exp(np.maximum(D, 0.0) * gamma)
            Kyy[:, np.arange(L), np.arange(L)] = 0.0
            pairs = _block_sums(_prefix2d(Kyy), starts, W)
            cxy = np.concatenate([np.zeros((b, 1)), c_pool[ext].cumsum(1)], axis=1)
            kxy_w = (cxy[:, starts + W] - cxy[:, starts]) / W
            stats[lo : lo + b] = kxx_term + pairs / (W * (W - 1)) - 2.0 * kxy_w
        return stats

    def _calibrate(self, K: FloatArray, rng: np.random.Generator) -> FloatArray:
        return self._thresholds(self._bootstrap_statistics(K, rng))

    def _thresholds(self, stats: FloatArray) -> FloatArray:
        B, W = stats.shape[0], self.window_size
        thresholds = np.empty(W + 1)
        alive = np.ones(B, dtype=bool)
        for w in range(W + 1):
            thresholds[w] = np.quantile(stats[alive, w], 1.0 - 1.0 / self.ert, method="weibull")
            alive &= stats[:, w] < thresholds[w]
            if alive.sum() < 2:
                raise ValueError(
                    "too few bootstrap streams survive calibration; increase n_bootstraps"
                )
        return thresholds

    def _bootstrap_statistics(self, K: FloatArray, rng: np.random.Generator) -> FloatArray:
        """MMD² of the ``W + 1`` windows of every bootstrap stream, shape ``(B, W + 1)``."""
        N, W, B = K.shape[0], self.window_size, self.n_bootstraps_
        L, rw = 2 * W, N - 2 * W
        col_sums = K.sum(axis=0)
        offdiag_total = K.sum() - N
        stats = np.empty((B, W + 1))
        starts = np.arange(W + 1)
        for lo in range(0, B, _CHUNK):
            b = min(_CHUNK, B - lo)
            ext = rng.random((b, N)).argpartition(L, axis=1)[:, :L]  # random ordered windows
            Kyy = K[ext[:, :, None], ext[:, None, :]]  # (b, L, L), unit diagonal
            # Kernel sums between each extended-window row and the sub-reference.
            kxy = col_sums[ext] - Kyy.sum(axis=1)
            kxx = (offdiag_total - (Kyy.sum(axis=(1, 2)) - L) - 2.0 * kxy.sum(1)) / (rw * (rw - 1))
            Kyy[:, np.arange(L), np.arange(L)] = 0.0
            pairs = _block_sums(_prefix2d(Kyy), starts, W)
            cxy = np.concatenate([np.zeros((b, 1)), kxy.cumsum(1)], axis=1)
            kxy_w = cxy[:, starts + W] - cxy[:, starts]
            stats[lo : lo + b] = kxx[:, None] + pairs / (W * (W - 1)) - 2.0 * kxy_w / (rw * W)
        return stats

    # --- streaming -------------------------------------------------------------------------
    def reset(self) -> None:
        """Restart the stream (t = 0) from the initial window drawn from the reference."""
        self._check_fitted()
        self.window_ = self.initial_window_.copy()
        self.window_kxy_ = self.initial_kxy_.copy()
        self.t_ = 0
        self.detection_time_: int | None = None

    @property
    def drift_detected(self) -> bool:
        """Whether a detection happened since fit/reset."""
        self._check_fitted()
        return self.detection_time_ is not None

    def update(self, x: Any) -> OnlineDriftResult:
        """Feed one record (shape ``(d,)`` or ``(1, d)``)."""
        arr = np.asarray(x)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.shape[0] != 1:
            raise ValueError(f"update takes one record, got {arr.shape[0]}; use update_batch")
        return self.update_batch(arr)

    def update_batch(self, X: Any) -> OnlineDriftResult:
        """Feed records in arrival order; one statistic and threshold per record."""
        if "thresholds_" not in self.__dict__:
            self._check_fitted()
        X = check_array(X, name="X", dim=self.n_features_in_)
        with small_blas():
            stats = self._advance(X)
        W = self.window_size
        times = self.t_ + 1 + np.arange(X.shape[0])
        thresholds = self.thresholds_[np.minimum(times, W)]
        hits = np.flatnonzero(stats > thresholds)
        self.t_ += X.shape[0]
        first = int(times[hits[0]]) if hits.size else None
        if first is not None and self.detection_time_ is None:
            self.detection_time_ = first
        spread = max(2.0 * (1.0 - self.kxx_term_), np.finfo(float).tiny)
        return OnlineDriftResult(
            is_drift=first is not None,
            detection_time=first,
            statistics=stats,
            thresholds=thresholds,
            t=self.t_,
            effect_size=max(float(stats[-1]), 0.0) / spread,
            ert=float(self.ert),
            window_size=W,
            test=self.name,
        )

    def _kernel_parts(self) -> tuple[NDArray[Any], NDArray[Any], float]:
        """Reference side ``[2g r, -g|r|^2, 1]^T`` (float32, ``(d + 2, m)``), centre, ``g``.

        Built once per sub-reference and cached (never persisted: state holds ``x_ref_``).
        """
        parts = self.__dict__.get("_ref_aug")
        if parts is None or parts[0] is not self.x_ref_:
            g = 1.0 / (2.0 * self.bandwidth_**2)
            mu = self.x_ref_.mean(axis=0)
            R = self.x_ref_ - mu
            A = np.empty((R.shape[1] + 2, R.shape[0]), dtype=np.float32)
            A[:-2] = 2.0 * g * R.T
            A[-2] = -g * np.einsum("ij,ij->i", R, R)
            A[-1] = 1.0
            parts = self._ref_aug = (self.x_ref_, A, mu, g)
        return parts[1], parts[2], parts[3]

    def _augment(self, Y: FloatArray) -> NDArray[Any]:
        """Rows ``[y - mu, 1, -g|y - mu|^2]`` in float32 (``mu``: the sub-reference's mean).

        Their product with an augmented column side is the kernel exponent
        ``-g |y - r|^2`` (``g = 1 / (2 sigma^2)``) in one GEMM, with no distance matrix formed
        and rescaled element by element. Centring keeps the float32 exponent's absolute error
        near ``1e-7`` (kernel values to ~1e-7 relative).
        """
        _, mu, g = self._kernel_parts()
        Yc = Y - mu
        Ya = np.empty((Y.shape[0], Y.shape[1] + 2), dtype=np.float32)
        Ya[:, :-2] = Yc
        Ya[:, -2] = 1.0
        Ya[:, -1] = -g * np.einsum("ij,ij->i", Yc, Yc)  # float64 norms: half the error
        return Ya

    def _mean_kernel_to_reference(self, Y: FloatArray) -> FloatArray:
        """``mean_r k(r, y)`` for each row of ``Y``: one float32 GEMM, one ``exp``, one sum."""
        return self._reference_term(self._augment(Y))

    def _reference_term(self, Ya: NDArray[Any]) -> FloatArray:
        A = self._kernel_parts()[0]
        E = Ya @ A
        np.exp(E, out=E)  # rounding may put a duplicate's value ~1e-7 above 1; harmless
        out: FloatArray = E.sum(axis=1).astype(np.float64)  # pairwise float32 sums
        out /= A.shape[1]
        return out

    def _advance(self, X: FloatArray) -> FloatArray:
        """Slide the window over ``X``; the MMD² after each record.

        Per chunk of ``m`` records, everything is float32 and three BLAS/ufunc passes: the
        augmented rows of window + records (``W + m``), their product with the cached
        sub-reference side (``m x M``, then ``exp`` and row sums) and with themselves
        (``(W + m)^2``, then ``exp``). Window sums then move by one record at a time: the
        window starting at ``s + 1`` gains record ``s + W``'s kernel sum with the ``W - 1``
        records it shares (``G[s + W, s + 1:s + W]``) and loses record ``s``'s
        (``G[s, s + 1:s + W]``); both are diagonal bands of ``G``, read as strided
        ``(m, W - 1)`` views (no prefix sums, no copies).
        """
        W = self.window_size
        g = self._kernel_parts()[2]
        stats = np.empty(X.shape[0])
        for lo in range(0, X.shape[0], _STEP_CHUNK):
            new = X[lo : lo + _STEP_CHUNK]
            m = new.shape[0]
            L = W + m
            Z = np.vstack([self.window_, new])
            Za = self._augment(Z)
            c = np.concatenate([self.window_kxy_, self._reference_term(Za[W:])])
            Zb = np.empty((Za.shape[1], L), dtype=np.float32)
            np.multiply(Za[:, :-2].T, 2.0 * g, out=Zb[:-2])
            Zb[-2] = Za[:, -1]
            Zb[-1] = 1.0
            G = Za @ Zb
            np.exp(G, out=G)
            flat, band = G.reshape(-1), (m, W - 1)
            step = (G.strides[0] + G.strides[1], G.strides[1])
            loss = as_strided(flat[1:], band, step).sum(axis=1)
            gain = as_strided(flat[W * L + 1 :], band, step).sum(axis=1)
            moves = (gain - loss).astype(np.float64).cumsum()
            pairs = float(G[:W, :W].sum()) - W + 2.0 * moves  # unit diagonal left out
            cc = np.concatenate([[0.0], c.cumsum()])
            kxy = (cc[W + 1 : L + 1] - cc[1 : m + 1]) / W
            stats[lo : lo + m] = self.kxx_term_ + pairs / (W * (W - 1)) - 2.0 * kxy
            self.window_, self.window_kxy_ = Z[-W:].copy(), c[-W:].copy()
        return stats
