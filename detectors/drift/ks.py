"""Per-feature Kolmogorov-Smirnov tests aggregated with a multiple-testing correction."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats
from scipy.stats import _stats_py

from detectors.base import check_array, register
from detectors.drift.base import CORRECTIONS, DriftDetector, DriftResult, FloatArray

#: ``method="auto"`` uses exact p-values while ``N * n`` is at most this.
EXACT_MAX_NN = 100_000


def _exact_sf(N: int, n: int, h: NDArray[np.int64]) -> FloatArray:
    """Exact ``P(D >= h / lcm(N, n))`` under no drift, once per distinct ``h``."""
    g = math.gcd(N, n)
    lcm = N // g * n
    uniq, inv = np.unique(h, return_inverse=True)
    sf = np.empty(uniq.size)
    for i, k in enumerate(uniq):
        if k <= 0 or k > lcm:
            sf[i] = 1.0 if k <= 0 else 0.0
            continue
        # scipy's exact two-sample recursion (what ks_2samp(method="exact") runs); it reports
        # failure on floating-point trouble, then the asymptotic value is the fallback.
        ok, _, p = _stats_py._attempt_exact_2kssamp(N, n, g, k / lcm, "two-sided")
        sf[i] = p if ok and np.isfinite(p) else stats.kstwo.sf(k / lcm, round(N * n / (N + n)))
    return np.clip(sf, 0.0, 1.0)[inv]


@register("drift.ks")
class KSDrift(DriftDetector):
    """Two-sample KS test on every feature (or PCA component), corrected for multiplicity.

    The reference is sorted per feature once at fit time; ``predict`` sorts the window and
    evaluates both empirical CDFs at every sample point with binary searches, so the cost is
    ``O((N + n) log(N + n))`` per feature with no Python-level work per sample.

    Feature p-values: for large samples, Smirnov's distribution with the effective sample size
    ``N n / (N + n)`` (``method="asymp"`` of :func:`scipy.stats.ks_2samp`, as alibi-detect).
    For small samples the KS distance lives on a coarse grid and that approximation is off
    (too liberal in the tail, too conservative in the body), so ``method="exact"`` uses the
    exact null with a *randomised* tie correction ``p = P(D > d) + U P(D = d)``: exactly
    uniform without drift for continuous data, seeded so ``predict`` stays deterministic.

    With ``n_components`` the principal axes are fitted on a random half of the reference and
    the KS reference is the other half: axes chosen to maximise the variance of the very rows
    they are tested on would make that variance look larger than in any new window, and the
    test would fire without drift.

    Parameters
    ----------
    alpha : float
        Significance level of the aggregated test.
    correction : {"bonferroni", "bh"}
        ``"bonferroni"``: drift if ``min_j d p_j <= alpha`` (valid under any dependence).
        ``"bh"``: Benjamini-Hochberg adjusted p-values; their minimum is Simes' global p-value,
        exact under independent features and valid under positive dependence.
    n_components : int or None
        Test the first ``n_components`` principal components instead of the raw features
        (fitted on half of the reference, see above).
    method : {"auto", "exact", "asymp"}
        Feature p-values; ``"auto"`` is ``"exact"`` while ``N n <= 100000``.
    seed : int or None
        Seeds the PCA split and the randomised exact p-values.
    min_effect_size : float or None
        Gate on the effect size: the largest KS distance over features, i.e. the largest
        difference between the fractions of reference and test samples below any value.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.drift import KSDrift
    >>> rng = np.random.default_rng(0)
    >>> det = KSDrift(correction="bh").fit(rng.normal(size=(500, 16)))
    >>> det.predict(rng.normal(size=(200, 16))).is_drift
    False
    >>> shifted = rng.normal(size=(200, 16))
    >>> shifted[:, 3] += 0.5
    >>> res = det.predict(shifted)
    >>> res.is_drift, int(np.argmin(res.feature_p_values)), round(res.effect_size, 2)
    (True, 3, 0.3)
    """

    min_test_rows = 2

    def __init__(
        self,
        alpha: float = 0.05,
        correction: Literal["bonferroni", "bh"] = "bonferroni",
        n_components: int | None = None,
        method: Literal["auto", "exact", "asymp"] = "auto",
        min_effect_size: float | None = None,
        seed: int | None = 0,
    ) -> None:
        self.alpha = alpha
        self.correction = correction
        self.n_components = n_components
        self.method = method
        self.min_effect_size = min_effect_size
        self.seed = seed

    def fit(self, X_ref: Any) -> KSDrift:
        self._check_params()
        if self.correction not in CORRECTIONS:
            raise ValueError(
                f"correction must be one of {sorted(CORRECTIONS)}, got {self.correction!r}"
            )
        if self.method not in ("auto", "exact", "asymp"):
            raise ValueError(f"method must be 'auto', 'exact' or 'asymp', got {self.method!r}")
        X = check_array(X_ref, name="X_ref", min_rows=2)
        self.n_features_in_ = X.shape[1]
        if self.n_components is not None:
            if X.shape[0] < 4:
                raise ValueError("n_components needs a reference of at least 4 rows")
            half = np.random.default_rng(self.seed).permutation(X.shape[0])
            pca_rows, X = X[half[: X.shape[0] // 2]], X[half[X.shape[0] // 2 :]]
            if not 1 <= self.n_components <= min(pca_rows.shape):
                raise ValueError(
                    f"n_components={self.n_components} must be in [1, {min(pca_rows.shape)}] "
                    f"(half of the reference, {pca_rows.shape}, fits the components)"
                )
            self.mean_ = pca_rows.mean(axis=0)
            _, _, vt = np.linalg.svd(pca_rows - self.mean_, full_matrices=False)
            self.components_ = vt[: self.n_components]
        self.ref_sorted_ = np.sort(self._project(X), axis=0)
        return self

    def _project(self, X: FloatArray) -> FloatArray:
        if self.n_components is None:
            return X
        out: FloatArray = (X - self.mean_) @ self.components_.T
        return out

    def _distances(self, Y: FloatArray) -> FloatArray:
        """KS distance ``sup_z |F_ref(z) - F_test(z)|`` of every column.

        Between two test points F_test is flat and F_ref only grows, so the sup is reached at a
        test point, from the right or from the left: two binary searches of the n test values
        in the sorted reference per column (no search of the N reference values).
        """
        ref = self.ref_sorted_
        test = np.sort(self._project(Y), axis=0)
        N, n = ref.shape[0], test.shape[0]
        ties = (test[1:] == test[:-1]).any(axis=0)
        below, upto = np.arange(n) / n, np.arange(1, n + 1) / n  # F_test left/right, no ties
        out = np.empty(ref.shape[1])
        for j in range(ref.shape[1]):
            r, t = ref[:, j], test[:, j]
            lo, hi = below, upto
            if ties[j]:
                lo, hi = np.searchsorted(t, t, "left") / n, np.searchsorted(t, t, "right") / n
            right = np.abs(np.searchsorted(r, t, "right") / N - hi).max()
            left = np.abs(np.searchsorted(r, t, "left") / N - lo).max()
            out[j] = max(right, left)
        return out

    def _effective_n(self, n: int) -> float:
        N = self.ref_sorted_.shape[0]
        return float(np.round(N * n / (N + n)))

    def _p_values(self, dist: FloatArray, n: int) -> FloatArray:
        N = self.ref_sorted_.shape[0]
        exact = self.method == "exact" or (self.method == "auto" and N * n <= EXACT_MAX_NN)
        lcm = N // math.gcd(N, n) * n
        h = np.round(dist * lcm).astype(np.int64)  # D lives on the grid k / lcm(N, n)
        if not exact:
            return self._asymptotic_sf(h, N, n, lcm)
        at_least, above = _exact_sf(N, n, h), _exact_sf(N, n, h + 1)
        u = np.random.default_rng(self.seed).random(dist.size)
        return above + u * (at_least - above)

    def _asymptotic_sf(self, h: NDArray[np.int64], N: int, n: int, lcm: int) -> FloatArray:
        """``kstwo.sf`` at the grid values ``h / lcm``, memoised per window size.

        ``kstwo.sf`` costs ~0.2 ms a value (a series evaluated in Python), which dominated
        ``predict``. D lives on the grid ``k / lcm(N, n)``, so a monitor testing windows of one
        size meets the same few hundred grid values again and again: each is computed once. The
        memo is a cache of a pure function (not detector state: never saved, never compared).
        """
        memo: dict[tuple[int, int], dict[int, float]] = self.__dict__.setdefault("_sf_memo", {})
        table = memo.setdefault((N, n), {})
        uniq, inv = np.unique(h, return_inverse=True)
        keys = uniq.tolist()
        missing = [k for k in keys if k not in table]
        if missing:
            values = stats.kstwo.sf(np.asarray(missing) / lcm, self._effective_n(n))
            table.update(zip(missing, values.tolist(), strict=True))
        out: FloatArray = np.array([table[k] for k in keys])[inv]
        return out

    def score(self, X: Any) -> FloatArray:
        """Largest per-feature KS distance, as a shape-``(1,)`` array."""
        Y = self._check_test(X)
        return np.array([self._distances(Y).max()])

    def predict(self, X: Any) -> DriftResult:
        """Corrected KS test of ``X`` against the reference."""
        Y = self._check_test(X)
        dist = self._distances(Y)
        en = self._effective_n(Y.shape[0])
        adjusted = CORRECTIONS[self.correction](self._p_values(dist, Y.shape[0]))
        m = dist.size
        # Critical KS distance of the largest feature statistic at the Bonferroni level alpha/m
        # (Kolmogorov's limit; kstwo.isf would cost a root search per call).
        threshold = float(special.kolmogi(self.alpha / m) / np.sqrt(en))
        return self._result(
            statistic=float(dist.max()),
            p_value=float(adjusted.min()),
            threshold=threshold,
            n_ref=self.ref_sorted_.shape[0],
            n_test=Y.shape[0],
            effect_size=float(dist.max()),
            effect_size_name="max_ks_distance",
            feature_p_values=adjusted,
        )
