"""Chi-square test of homogeneity on class predictions."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from detectors.base import register
from detectors.drift.base import DriftDetector, DriftResult, FloatArray


def check_labels(y: Any, *, name: str = "y", min_rows: int = 1) -> NDArray[np.int64]:
    """Validate class predictions: 1-D (or one column) integer class ids."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D class ids (or shape (n, 1)), got shape {arr.shape}; "
            "for probabilities pass their argmax"
        )
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
            arr = arr.astype(np.int64)
        else:
            raise ValueError(
                f"{name} must hold integer class ids, got dtype {arr.dtype}; "
                "for probabilities pass their argmax"
            )
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows, at least {min_rows} are needed")
    return arr.astype(np.int64)


@register("drift.chi2")
class ChiSquareDrift(DriftDetector):
    """Has the distribution of predicted classes changed? Pearson's chi-square test.

    The 2 x K contingency table of reference and window class counts is tested for homogeneity
    (both samples random, ``K - 1`` degrees of freedom); a class never seen in the reference
    simply adds a column. The p-value is asymptotic: expected counts below about 5 make it
    approximate, so the window must hold at least ``min_test_rows`` predictions.

    Parameters
    ----------
    alpha : float
        Significance level.
    min_effect_size : float or None
        Gate on Cramér's V ``sqrt(chi2 / (N + n))`` (0: same class mix, 1: disjoint classes).

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.drift import ChiSquareDrift
    >>> rng = np.random.default_rng(0)
    >>> det = ChiSquareDrift().fit(rng.choice(4, size=1000, p=[0.4, 0.3, 0.2, 0.1]))
    >>> det.predict(rng.choice(4, size=300, p=[0.4, 0.3, 0.2, 0.1])).is_drift
    False
    >>> res = det.predict(rng.choice(4, size=300, p=[0.25, 0.25, 0.25, 0.25]))
    >>> res.is_drift, round(res.effect_size, 2)
    (True, 0.22)
    """

    input_kind: ClassVar[str] = "labels"
    min_test_rows = 5

    def __init__(self, alpha: float = 0.05, min_effect_size: float | None = None) -> None:
        self.alpha = alpha
        self.min_effect_size = min_effect_size

    def fit(self, y_ref: Any) -> ChiSquareDrift:
        self._check_params()
        y = check_labels(y_ref, name="y_ref", min_rows=self.min_test_rows)
        self.classes_, self.ref_counts_ = np.unique(y, return_counts=True)
        return self

    def _table(self, y: Any) -> tuple[NDArray[np.int64], int]:
        self._check_fitted()
        labels = check_labels(y, name="y", min_rows=self.min_test_rows)
        classes, counts = np.unique(labels, return_counts=True)
        allc = np.union1d(self.classes_, classes)
        table = np.zeros((2, allc.size), dtype=np.int64)
        table[0, np.searchsorted(allc, self.classes_)] = self.ref_counts_
        table[1, np.searchsorted(allc, classes)] = counts
        return table, labels.size

    @staticmethod
    def _chi2(table: NDArray[np.int64]) -> float:
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        return float(((table - expected) ** 2 / expected).sum())

    def score(self, y: Any) -> FloatArray:
        """Pearson's chi-square statistic, as a shape-``(1,)`` array."""
        table, _ = self._table(y)
        return np.array([self._chi2(table)])

    def predict(self, y: Any) -> DriftResult:
        """Chi-square homogeneity test of the window's class counts against the reference."""
        table, n = self._table(y)
        dof = table.shape[1] - 1
        stat = self._chi2(table)
        p = float(stats.chi2.sf(stat, dof)) if dof > 0 else 1.0
        N = int(self.ref_counts_.sum())
        return self._result(
            statistic=stat,
            p_value=p,
            threshold=float(stats.chi2.isf(self.alpha, dof)) if dof > 0 else float("inf"),
            n_ref=N,
            n_test=n,
            effect_size=float(np.sqrt(stat / (N + n))),
            effect_size_name="cramers_v",
        )
