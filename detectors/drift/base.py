"""Shared pieces of the drift family: result types, kernels and multiple-testing helpers.

Every batch drift detector returns a :class:`DriftResult`; the online detector returns an
:class:`OnlineDriftResult`. Both are frozen dataclasses: they become JSON only at the
Kafka/HTTP boundary (:meth:`DriftResult.to_dict`).

Conventions of the family:

* ``fit(X_ref)`` learns from a reference window, ``predict(X)`` tests a window against it and
  never mutates the detector, ``score(X)`` returns the test statistic as a shape-``(1,)`` array
  (higher is more drift) without running the (costlier) calibration.
* ``is_drift`` needs *both* significance (``p_value <= alpha``) and, when ``min_effect_size``
  is set, an effect size at least that large: a huge window then does not page anyone for a
  negligible shift. ``significant`` keeps the bare test outcome.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from detectors.base import Detector, check_array

FloatArray = NDArray[np.float64]

#: Above this many reference rows the median heuristic uses a seeded subsample.
MEDIAN_SUBSAMPLE = 2000


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one batch drift test.

    Attributes
    ----------
    is_drift : bool
        ``significant`` and (if a gate is set) ``effect_size >= min_effect_size``.
    statistic : float
        The test statistic (higher is more drift).
    p_value : float
        Calibrated p-value of the statistic (after the multiple-testing correction, if any).
    threshold : float
        Critical value of the statistic at ``alpha`` (``nan`` where a test has none).
    alpha : float
        Significance level the p-value is compared with.
    n_ref, n_test : int
        Sample sizes.
    effect_size : float
        Interpretable size of the change; its meaning is given by ``effect_size_name``.
    effect_size_name : str
        What ``effect_size`` measures.
    significant : bool
        ``p_value <= alpha`` (the bare test, before the effect-size gate).
    min_effect_size : float or None
        The gate that was applied.
    test : str
        Registered name of the detector that produced the result.
    feature_p_values : ndarray or None
        Per-feature adjusted p-values for aggregated univariate tests.
    """

    is_drift: bool
    statistic: float
    p_value: float
    threshold: float
    alpha: float
    n_ref: int
    n_test: int
    effect_size: float
    effect_size_name: str
    significant: bool
    min_effect_size: float | None
    test: str
    feature_p_values: FloatArray | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (arrays become lists)."""
        out = asdict(self)
        if self.feature_p_values is not None:
            out["feature_p_values"] = self.feature_p_values.tolist()
        return out


@dataclass(frozen=True)
class OnlineDriftResult:
    """Outcome of feeding one record or a batch of records to an online detector.

    Attributes
    ----------
    is_drift : bool
        Whether any record of the batch raised a detection.
    detection_time : int or None
        Stream time ``t`` (1-based count of records since fit/reset) of the first detection in
        the batch.
    statistics, thresholds : ndarray
        Test statistic and threshold after each record of the batch.
    t : int
        Records seen since fit/reset, after this batch.
    effect_size : float
        Effect size of the window after the last record (see the detector).
    """

    is_drift: bool
    detection_time: int | None
    statistics: FloatArray = field(compare=False)
    thresholds: FloatArray = field(compare=False)
    t: int
    effect_size: float
    ert: float
    window_size: int
    test: str

    @property
    def statistic(self) -> float:
        """Statistic after the last record."""
        return float(self.statistics[-1])

    @property
    def threshold(self) -> float:
        """Threshold applied to the last record."""
        return float(self.thresholds[-1])


class DriftDetector(Detector):
    """Base of the batch drift detectors: input checks, the effect gate and the result."""

    alpha: float
    min_effect_size: float | None
    #: what ``fit``/``predict`` take: ``"embeddings"`` (2-D floats) or ``"labels"`` (class ids)
    input_kind: ClassVar[str] = "embeddings"
    #: smallest test window the test accepts
    min_test_rows: int = 2

    def _check_params(self) -> None:
        """Validate the shared parameters; a refit then starts from a clean slate."""
        for key in list(self._learned()):
            delattr(self, key)
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_effect_size is not None and self.min_effect_size < 0:
            raise ValueError(f"min_effect_size must be >= 0 or None, got {self.min_effect_size}")

    def _check_test(self, X: Any) -> FloatArray:
        self._check_fitted()
        n_features: int = self.n_features_in_  # type: ignore[attr-defined]
        return check_array(X, name="X", dim=n_features, min_rows=self.min_test_rows)

    def _result(
        self,
        *,
        statistic: float,
        p_value: float,
        threshold: float,
        n_ref: int,
        n_test: int,
        effect_size: float,
        effect_size_name: str,
        feature_p_values: FloatArray | None = None,
    ) -> DriftResult:
        significant = bool(p_value <= self.alpha)
        gate = self.min_effect_size
        return DriftResult(
            is_drift=significant and (gate is None or effect_size >= gate),
            statistic=float(statistic),
            p_value=float(p_value),
            threshold=float(threshold),
            alpha=float(self.alpha),
            n_ref=int(n_ref),
            n_test=int(n_test),
            effect_size=float(effect_size),
            effect_size_name=effect_size_name,
            significant=significant,
            min_effect_size=gate,
            test=self.name,
            feature_p_values=feature_p_values,
        )


# --- kernels -----------------------------------------------------------------------------------
def sq_dists(A: NDArray[Any], B: NDArray[Any]) -> NDArray[Any]:
    """Squared Euclidean distances ``|a_i - b_j|^2`` via one matrix product (clipped at 0)."""
    d = np.einsum("ij,ij->i", A, A)[:, None] + np.einsum("ij,ij->i", B, B)[None, :]
    d -= 2.0 * (A @ B.T)
    np.maximum(d, 0.0, out=d)
    return d


def gaussian_kernel(A: NDArray[Any], B: NDArray[Any], bandwidth: float) -> NDArray[Any]:
    """``exp(-|a - b|^2 / (2 bandwidth^2))`` computed in place on the distance matrix."""
    K = sq_dists(A, B)
    K *= -1.0 / (2.0 * bandwidth**2)
    np.exp(K, out=K)
    return K


def median_bandwidth(X: FloatArray, seed: int | None = 0) -> float:
    """Median heuristic: ``sqrt(median_{i != j} |x_i - x_j|^2 / 2)``.

    This is the convention of alibi-detect's ``GaussianRBF`` (so ``k = exp(-d^2 / median d^2)``).
    References larger than :data:`MEDIAN_SUBSAMPLE` rows use a seeded random subsample.
    """
    if X.shape[0] > MEDIAN_SUBSAMPLE:
        idx = np.random.default_rng(seed).choice(X.shape[0], MEDIAN_SUBSAMPLE, replace=False)
        X = X[idx]
    D = sq_dists(X, X)
    med = float(np.median(D[np.triu_indices(X.shape[0], k=1)]))
    if med <= 0.0:
        raise ValueError(
            "the reference has (almost) no spread: median pairwise distance is 0; "
            "pass bandwidth= explicitly or use a reference with distinct rows"
        )
    return float(np.sqrt(med / 2.0))


def resolve_bandwidth(bandwidth: float | None, X: FloatArray, seed: int | None) -> float:
    if bandwidth is None:
        return median_bandwidth(X, seed)
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0 or None (median heuristic), got {bandwidth}")
    return float(bandwidth)


def permutation_p_value(observed: float, null: NDArray[Any]) -> float:
    """``(1 + #{null >= observed}) / (1 + B)``: never 0, valid at every ``B``."""
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


_CONTROLLER: Any = None


def small_blas() -> contextlib.AbstractContextManager[Any]:
    """Pin BLAS to one thread around many small products (a no-op without threadpoolctl).

    Multi-threaded OpenBLAS on a ``(100 x 64) @ (64 x 2000)`` product spends far longer waking
    and spinning threads than computing, and on a busy machine (a monitor shares its cores)
    the streaming update measured ~15x slower than single-threaded. Where every BLAS is
    already single-threaded nothing is switched: setting the thread count on entry and exit
    cost ~0.5-0.9 µs a record in batches of 100 (online MMD), a tenth of the whole update.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController().select(user_api="blas")
    if _CONTROLLER is False or all(
        lib.num_threads == 1 for lib in _CONTROLLER.lib_controllers
    ):
        return contextlib.nullcontext()
    ctx: contextlib.AbstractContextManager[Any] = _CONTROLLER.limit(limits=1)
    return ctx


# --- multiple testing --------------------------------------------------------------------------
def bonferroni(p: FloatArray) -> FloatArray:
    """Bonferroni-adjusted p-values ``min(1, m p)``."""
    return np.minimum(1.0, p * p.size)


def benjamini_hochberg(p: FloatArray) -> FloatArray:
    """Benjamini-Hochberg adjusted p-values (step-up; their minimum is Simes' global p-value)."""
    m = p.size
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1.0)
    return out


CORRECTIONS = {"bonferroni": bonferroni, "bh": benjamini_hochberg}
