"""Maximum mean discrepancy (MMD) two-sample test with a vectorised permutation null."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from detectors.base import check_array, register
from detectors.drift.base import (
    DriftDetector,
    DriftResult,
    FloatArray,
    gaussian_kernel,
    permutation_p_value,
    resolve_bandwidth,
)

#: ``method="auto"`` switches to random features from this many reference rows on.
RFF_FROM_N = 20_000


@register("drift.mmd")
class MMDDrift(DriftDetector):
    """Kernel two-sample test: unbiased MMD² with a Gaussian kernel and a permutation p-value.

    The reference kernel matrix is computed once at fit time. ``predict`` adds the two blocks
    that involve the test window and scores all ``n_permutations`` relabellings of the pooled
    sample in one matrix product (``Z @ K`` for a 0/1 membership matrix ``Z``), so the cost of
    the null is one GEMM rather than ``B`` gathers of the kernel matrix. The p-value is
    ``(1 + #{null >= observed}) / (1 + B)``: never 0, valid for every ``B``.

    Parameters
    ----------
    alpha : float
        Significance level.
    n_permutations : int
        Number of permutations ``B`` of the null distribution.
    bandwidth : float or None
        Gaussian kernel bandwidth ``sigma`` in ``exp(-|x-y|^2 / (2 sigma^2))``. ``None``: the
        median heuristic on the reference (``sigma^2 = median |x_i - x_j|^2 / 2``, as in
        alibi-detect), fixed at fit time.
    method : {"auto", "exact", "rff"}
        ``"exact"`` keeps the reference kernel matrix in float32 (``4 N^2`` bytes: 400 MB at
        N = 10k, 1.6 GB at 20k), built in row slabs of 8 MB so that no float64 ``N x N``
        matrix exists at any time; ``predict`` adds only ``N x n`` and ``n x n`` blocks.
        ``"rff"`` replaces the
        kernel with ``n_features`` random Fourier features (memory and time ``O((N+n) D)``);
        the permutation test stays exact for that approximate kernel, at a small loss of power
        (``benchmarks/drift_speed.py`` measures it). ``"auto"`` picks ``"rff"`` for ``N >= 20000``.
    n_features : int
        Number of random Fourier features ``D`` (even) for ``method="rff"``.
    min_effect_size : float or None
        Drift is only reported if ``effect_size`` reaches this value. The effect size is
        ``MMD² / E|phi(x) - phi(x')|^2`` over reference pairs: the squared distance between the
        two kernel mean embeddings relative to the spread of the reference, a scale-free
        analogue of ``d^2 / 2`` for a standardised mean difference ``d``.
    seed : int or None
        Seeds the permutations (and median subsample, random features); with an int,
        ``predict`` is a pure, deterministic function of its input.
    device : str or None
        ``None`` computes on numpy. ``"cpu"``/``"cuda"`` computes the permutation null with
        torch (imported lazily, only then).

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.drift import MMDDrift
    >>> rng = np.random.default_rng(0)
    >>> det = MMDDrift(n_permutations=200, seed=0).fit(rng.normal(size=(300, 8)))
    >>> det.predict(rng.normal(size=(100, 8))).is_drift
    False
    >>> res = det.predict(rng.normal(0.5, 1.0, size=(100, 8)))
    >>> res.is_drift, res.p_value
    (True, 0.004975124378109453)
    """

    min_test_rows = 2

    def __init__(
        self,
        alpha: float = 0.05,
        n_permutations: int = 100,
        bandwidth: float | None = None,
        method: Literal["auto", "exact", "rff"] = "auto",
        n_features: int = 1024,
        min_effect_size: float | None = None,
        seed: int | None = 0,
        device: str | None = None,
    ) -> None:
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.bandwidth = bandwidth
        self.method = method
        self.n_features = n_features
        self.min_effect_size = min_effect_size
        self.seed = seed
        self.device = device

    def fit(self, X_ref: Any) -> MMDDrift:
        self._check_params()
        if self.method not in ("auto", "exact", "rff"):
            raise ValueError(f"method must be 'auto', 'exact' or 'rff', got {self.method!r}")
        if (1 + self.n_permutations) * self.alpha < 1:
            need = int(np.ceil(1 / self.alpha)) - 1
            raise ValueError(
                f"n_permutations={self.n_permutations} can never reach alpha={self.alpha} "
                f"(smallest p-value is 1/(1+B)); use at least {need}"
            )
        if self.n_features < 2 or self.n_features % 2:
            raise ValueError(f"n_features must be an even number >= 2, got {self.n_features}")
        X = check_array(X_ref, name="X_ref", min_rows=4)
        self.n_features_in_ = X.shape[1]
        self.bandwidth_ = resolve_bandwidth(self.bandwidth, X, self.seed)
        self.method_ = self.method if self.method != "auto" else (
            "rff" if X.shape[0] >= RFF_FROM_N else "exact"
        )
        self.x_ref_ = X
        if self.method_ == "rff":
            rng = np.random.default_rng(self.seed)
            self.omega_ = rng.normal(0.0, 1.0 / self.bandwidth_, (X.shape[1], self.n_features // 2))
        self._build_cache()
        return self

    # --- caches rebuilt from the persisted state (never saved themselves) --------------------
    def _build_cache(self) -> None:
        X, N = self.x_ref_, self.x_ref_.shape[0]
        if self.method_ == "exact":
            self._kxx32, self._kxx_rows = _reference_kernel(X, self.bandwidth_)
            kxx_sum = float(self._kxx_rows.sum())
        else:
            self._phi_ref = self._features(X)
            self._phi_ref_sum = self._phi_ref.sum(axis=0, dtype=np.float64)
            kxx_sum = float(self._phi_ref_sum @ self._phi_ref_sum) - N
        self._kxx_term = kxx_sum / (N * (N - 1))
        # E|phi(x) - phi(x')|^2 = 2 (1 - E k(x, x')): the reference spread in feature space.
        self._spread = max(2.0 * (1.0 - self._kxx_term), np.finfo(float).tiny)

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        self._build_cache()

    def _features(self, X: FloatArray) -> NDArray[np.float32]:
        proj = X @ self.omega_
        scale = np.sqrt(2.0 / self.n_features)
        return (np.hstack([np.cos(proj), np.sin(proj)]) * scale).astype(np.float32)

    # --- test ------------------------------------------------------------------------------
    def score(self, X: Any) -> FloatArray:
        """Unbiased MMD² between the reference and ``X``, as a shape-``(1,)`` array."""
        Y = self._check_test(X)
        return np.array([self._statistic_and_null(Y, n_null=0)[0]])

    def predict(self, X: Any) -> DriftResult:
        """Permutation test of ``X`` against the reference."""
        Y = self._check_test(X)
        stat, null = self._statistic_and_null(Y, n_null=self.n_permutations)
        return self._result(
            statistic=stat,
            p_value=permutation_p_value(stat, null),
            threshold=float(np.quantile(null, 1.0 - self.alpha)),
            n_ref=self.x_ref_.shape[0],
            n_test=Y.shape[0],
            effect_size=max(stat, 0.0) / self._spread,
            effect_size_name="mmd2_over_reference_spread",
        )

    def _statistic_and_null(self, Y: FloatArray, n_null: int) -> tuple[float, FloatArray]:
        if self.method_ == "exact":
            return self._exact(Y, n_null)
        return self._rff(Y, n_null)

    def _exact(self, Y: FloatArray, n_null: int) -> tuple[float, FloatArray]:
        N, n = self.x_ref_.shape[0], Y.shape[0]
        Kxy = gaussian_kernel(self.x_ref_, Y, self.bandwidth_)
        Kyy = gaussian_kernel(Y, Y, self.bandwidth_)
        np.fill_diagonal(Kyy, 0.0)
        stat = float(self._kxx_term + Kyy.sum() / (n * (n - 1)) - 2.0 * Kxy.mean())
        if n_null == 0:
            return stat, np.empty(0)
        Zx, Zy = self._memberships(N, n, n_null)
        q = _quadratic_forms(
            Zx, Zy, self._kxx32, Kxy.astype(np.float32), Kyy.astype(np.float32), self.device
        )
        # Row sums s of the pooled zero-diagonal kernel matrix; for a test-side membership z:
        # sum_test = q, sum_cross = a - q, sum_ref = T - 2a + q with a = z.s and T = sum(s).
        s = np.concatenate([self._kxx_rows + Kxy.sum(1), Kxy.sum(0) + Kyy.sum(1)])
        a = Zx.astype(np.float64) @ s[:N] + Zy.astype(np.float64) @ s[N:]
        total = s.sum()
        null = (total - 2 * a + q) / (N * (N - 1)) + q / (n * (n - 1)) - 2 * (a - q) / (N * n)
        return stat, null

    def _rff(self, Y: FloatArray, n_null: int) -> tuple[float, FloatArray]:
        # With features phi (|phi(x)|^2 = 1), sums of kernel blocks are dot products of
        # feature sums, and the diagonal of each block sums to its size.
        N, n = self.x_ref_.shape[0], Y.shape[0]
        phi_y = self._features(Y)
        sx, sy = self._phi_ref_sum, phi_y.sum(axis=0, dtype=np.float64)
        stat = float(self._kxx_term + (sy @ sy - n) / (n * (n - 1)) - 2.0 * (sx @ sy) / (N * n))
        if n_null == 0:
            return stat, np.empty(0)
        Zx, Zy = self._memberships(N, n, n_null)
        s_y = _feature_sums(Zx, Zy, self._phi_ref, phi_y, self.device)
        s_x = (sx + sy)[None, :] - s_y
        null = (
            ((s_x * s_x).sum(1) - N) / (N * (N - 1))
            + ((s_y * s_y).sum(1) - n) / (n * (n - 1))
            - 2.0 * (s_x * s_y).sum(1) / (N * n)
        )
        return stat, null

    def _memberships(
        self, N: int, n: int, B: int
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """0/1 rows marking which of the pooled ``N + n`` points land on the test side."""
        rng = np.random.default_rng(self.seed)
        test_side = rng.random((B, N + n)).argpartition(n, axis=1)[:, :n]
        Z = np.zeros((B, N + n), dtype=np.float32)
        np.put_along_axis(Z, test_side, 1.0, axis=1)
        return Z[:, :N], Z[:, N:]


def _reference_kernel(X: FloatArray, bandwidth: float) -> tuple[NDArray[np.float32], FloatArray]:
    """Zero-diagonal kernel matrix of the reference in float32, and its float64 row sums.

    Built in slabs of rows (8 MB of float64 at a time, ~3 of them live while one is built):
    the peak is the float32 result, not the ``12 N^2`` bytes of a float64 matrix plus its
    float32 copy.
    """
    N = X.shape[0]
    K32 = np.empty((N, N), dtype=np.float32)
    rows = np.empty(N)
    step = max(1, (1 << 23) // (8 * N))
    for lo in range(0, N, step):
        hi = min(N, lo + step)
        blk = gaussian_kernel(X[lo:hi], X, bandwidth)
        blk[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
        rows[lo:hi] = blk.sum(axis=1)
        K32[lo:hi] = blk
    return K32, rows


def _quadratic_forms(
    Zx: NDArray[np.float32],
    Zy: NDArray[np.float32],
    Kxx: NDArray[np.float32],
    Kxy: NDArray[np.float32],
    Kyy: NDArray[np.float32],
    device: str | None,
) -> FloatArray:
    """``z_b^T K z_b`` for every membership row, K given by its blocks (no pooled copy)."""
    if device is not None:
        from detectors.drift._torch import quadratic_forms

        return quadratic_forms(Zx, Zy, Kxx, Kxy, Kyy, device)
    # z^T K z = zx^T Kxx zx + 2 zx^T Kxy zy + zy^T Kyy zy; the Kxx product dominates.
    right = Zx @ Kxy
    right *= 2.0
    right += Zy @ Kyy
    return (
        np.einsum("ij,ij->i", Zx @ Kxx, Zx, dtype=np.float64)
        + np.einsum("ij,ij->i", right, Zy, dtype=np.float64)
    )


def _feature_sums(
    Zx: NDArray[np.float32],
    Zy: NDArray[np.float32],
    phi_x: NDArray[np.float32],
    phi_y: NDArray[np.float32],
    device: str | None,
) -> FloatArray:
    """Sum of the features of the test side of every membership row."""
    if device is not None:
        from detectors.drift._torch import feature_sums

        return feature_sums(Zx, Zy, phi_x, phi_y, device)
    out: FloatArray = (Zx @ phi_x + Zy @ phi_y).astype(np.float64)
    return out
