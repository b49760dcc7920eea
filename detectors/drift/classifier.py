"""Classifier two-sample test: can a cross-validated domain classifier tell the windows apart?"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from scipy import linalg, stats

from detectors.base import check_array, register
from detectors.drift.base import (
    DriftDetector,
    DriftResult,
    FloatArray,
    permutation_p_value,
    resolve_bandwidth,
)


@register("drift.classifier")
class ClassifierDrift(DriftDetector):
    """Domain-classifier test with leave-one-out predictions and a permutation-calibrated AUC.

    A ridge-regularised least-squares classifier (a linear discriminant; with
    ``features="rff"`` a kernel classifier through random Fourier features) learns to tell
    reference rows (label 0) from window rows (label 1). Its leave-one-out predictions come in
    closed form from the hat matrix, ``(yhat_i - h_ii y_i) / (1 - h_ii)``, so every row is
    scored by a model that never saw it, at the cost of one fit. The statistic is the AUC of
    those held-out scores. Because the hat matrix does not depend on the labels, the same
    closed form scores ``n_permutations`` label permutations in one matrix product, and the
    p-value ``(1 + #{perm >= observed}) / (1 + B)`` is exact in finite samples.

    Parameters
    ----------
    alpha : float
        Significance level.
    n_permutations : int
        Number of label permutations ``B``.
    features : {"linear", "rff"}
        ``"linear"``: the centred embeddings (detects changes in the mean). ``"rff"``:
        ``n_features`` random Fourier features of a Gaussian kernel (also changes in spread
        and shape).
    n_features : int
        Number of random Fourier features (even) for ``features="rff"``.
    bandwidth : float or None
        Gaussian kernel bandwidth for ``features="rff"`` (``None``: median heuristic).
    ridge : float
        Ridge penalty, relative to the mean squared feature norm.
    min_effect_size : float or None
        Gate on ``2 AUC - 1`` (clipped at 0): 0 for indistinguishable windows, 1 for perfectly
        separable ones.
    seed : int or None
        Seeds permutations and random features; with an int ``predict`` is deterministic.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.drift import ClassifierDrift
    >>> rng = np.random.default_rng(0)
    >>> det = ClassifierDrift(seed=0).fit(rng.normal(size=(400, 8)))
    >>> det.predict(rng.normal(size=(200, 8))).is_drift
    False
    >>> res = det.predict(rng.normal(size=(200, 8)) + 0.4)
    >>> res.is_drift, round(res.statistic, 2)
    (True, 0.8)
    """

    min_test_rows = 2

    def __init__(
        self,
        alpha: float = 0.05,
        n_permutations: int = 100,
        features: Literal["linear", "rff"] = "linear",
        n_features: int = 256,
        bandwidth: float | None = None,
        ridge: float = 1e-3,
        min_effect_size: float | None = None,
        seed: int | None = 0,
    ) -> None:
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.features = features
        self.n_features = n_features
        self.bandwidth = bandwidth
        self.ridge = ridge
        self.min_effect_size = min_effect_size
        self.seed = seed

    def fit(self, X_ref: Any) -> ClassifierDrift:
        self._check_params()
        if self.features not in ("linear", "rff"):
            raise ValueError(f"features must be 'linear' or 'rff', got {self.features!r}")
        if (1 + self.n_permutations) * self.alpha < 1:
            raise ValueError(
                f"n_permutations={self.n_permutations} can never reach alpha={self.alpha}; "
                f"use at least {int(np.ceil(1 / self.alpha)) - 1}"
            )
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        X = check_array(X_ref, name="X_ref", min_rows=2)
        self.n_features_in_ = X.shape[1]
        self.x_ref_ = X
        if self.features == "rff":
            if self.n_features < 2 or self.n_features % 2:
                raise ValueError(f"n_features must be an even number >= 2, got {self.n_features}")
            self.bandwidth_ = resolve_bandwidth(self.bandwidth, X, self.seed)
            rng = np.random.default_rng(self.seed)
            self.omega_ = rng.normal(0.0, 1.0 / self.bandwidth_, (X.shape[1], self.n_features // 2))
        return self

    def _design(self, P: FloatArray) -> FloatArray:
        if self.features == "rff":
            proj = P @ self.omega_
            P = np.hstack([np.cos(proj), np.sin(proj)])
        P = P - P.mean(axis=0)  # label-free centring keeps permutations exchangeable
        return np.hstack([P, np.ones((P.shape[0], 1))])

    def _held_out_aucs(self, Y: FloatArray, n_perm: int) -> FloatArray:
        """AUC of the leave-one-out scores for the true labels (first) and each permutation."""
        N, n = self.x_ref_.shape[0], Y.shape[0]
        F = self._design(np.vstack([self.x_ref_, Y]))
        G = F.T @ F
        G[np.diag_indices_from(G)] += self.ridge * np.trace(G) / G.shape[0]
        cho = linalg.cho_factor(G)
        lev = np.einsum("ij,ji->i", F, linalg.cho_solve(cho, F.T))  # hat-matrix diagonal
        labels = np.zeros((N + n, 1 + n_perm))
        labels[N:, 0] = 1.0
        if n_perm:
            rng = np.random.default_rng(self.seed)
            labels[:, 1:] = rng.permuted(np.repeat(labels[:, :1], n_perm, axis=1), axis=0)
        fitted = F @ linalg.cho_solve(cho, F.T @ labels)
        loo = (fitted - lev[:, None] * labels) / (1.0 - lev)[:, None]
        ranks = stats.rankdata(loo, axis=0)
        rank_sum = (ranks * labels).sum(axis=0)
        aucs: FloatArray = (rank_sum - n * (n + 1) / 2) / (N * n)
        return aucs

    def score(self, X: Any) -> FloatArray:
        """Held-out AUC of the domain classifier, as a shape-``(1,)`` array."""
        return self._held_out_aucs(self._check_test(X), 0)

    def predict(self, X: Any) -> DriftResult:
        """Permutation test of the domain classifier's held-out AUC."""
        Y = self._check_test(X)
        aucs = self._held_out_aucs(Y, self.n_permutations)
        auc, null = float(aucs[0]), aucs[1:]
        return self._result(
            statistic=auc,
            p_value=permutation_p_value(auc, null),
            threshold=float(np.quantile(null, 1.0 - self.alpha)),
            n_ref=self.x_ref_.shape[0],
            n_test=Y.shape[0],
            effect_size=max(0.0, 2.0 * auc - 1.0),
            effect_size_name="classifier_gini",
        )
