"""Mahalanobis distance to the closest class mean, shared shrunk covariance (Lee et al. 2018)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from detectors.base import register
from detectors.ood._blocks import run_blocks
from detectors.ood._gaussian import class_stats, min_sq_distance, shrunk_covariance, whitener
from detectors.ood.base import FloatArray, OODDetector

#: Rows per scoring block: a few MB of float64 at d ~ 128, so a block stays in cache.
_BLOCK_ROWS = 2048


@register("ood.mahalanobis")
class MahalanobisDetector(OODDetector):
    """Squared Mahalanobis distance to the nearest class mean under a shared covariance.

    With labels ``y`` at ``fit`` this is the class-conditional detector of Lee et al. (2018):
    one mean per class and the pooled within-class covariance. Without labels it is the plain
    Mahalanobis distance to the reference mean. The covariance is shrunk towards a scaled
    identity (Ledoit-Wolf by default) so that references with fewer rows than dimensions work.

    Parameters
    ----------
    shrinkage : "ledoit-wolf" or float in [0, 1]
        Covariance shrinkage; ``0.0`` is the plain sample covariance (needs ``n > d``).
    fpr : float
        Target false-positive rate of ``threshold_`` on in-distribution data.
    calibration_fraction : float
        Share of the reference held out (seeded) to calibrate the threshold.
    seed : int or None
        Seed of the calibration split.
    n_jobs : int or None
        Threads scoring row blocks in parallel (``None``: all available cores).

    Attributes
    ----------
    classes_ : ndarray or None
        Class labels seen at ``fit`` (``None`` when fitted without labels).
    center_ : ndarray of shape (d,)
        Mean of the fitted rows (inputs are centred on it before whitening, for accuracy).
    whitener_ : ndarray of shape (d, d)
        ``W`` with ``(x - m)^T Sigma^-1 (x - m) = |(x - m) W|^2``.
    means_white_ : ndarray of shape (n_classes, d)
        Whitened class means.
    shrinkage_ : float
        Shrinkage intensity ``s`` used: ``Sigma = (1 - s) S + ridge_ I``.
    ridge_ : float
        ``s tr(S) / d``, the identity part of the shrunk covariance.
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=3000)
    >>> ref = rng.normal(size=(3000, 8)) + 4.0 * np.eye(8)[y]  # three classes
    >>> det = MahalanobisDetector().fit(ref, y)
    >>> inlier = rng.normal(size=(500, 8)) + 4.0 * np.eye(8)[1]
    >>> outlier = rng.normal(size=(500, 8)) + 4.0 * np.eye(8)[7]  # a class never seen
    >>> res = det.predict(np.vstack([inlier, outlier]))
    >>> round(float(res.is_ood[:500].mean()), 2), round(float(res.is_ood[500:].mean()), 2)
    (0.01, 0.89)
    """

    _min_fit_rows: ClassVar[int] = 2

    classes_: NDArray[Any] | None
    center_: FloatArray
    whitener_: FloatArray
    means_white_: FloatArray
    means_sq_: FloatArray
    shrinkage_: float
    ridge_: float

    def __init__(
        self,
        shrinkage: float | str = "ledoit-wolf",
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.shrinkage = shrinkage
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.n_jobs = n_jobs

    def _fit_model(self, X: FloatArray, y: NDArray[Any] | None) -> None:
        classes, means, resid = class_stats(X, y)
        cov, s, ridge = shrunk_covariance(resid, self.shrinkage)
        self.center_ = X.mean(axis=0)
        self.whitener_ = whitener(cov, X.shape[0])
        self.means_white_ = (means - self.center_) @ self.whitener_
        self.means_sq_ = np.einsum("ij,ij->i", self.means_white_, self.means_white_)
        self.shrinkage_ = s
        self.ridge_ = ridge
        if classes is not None and classes.dtype == object:
            classes = classes.astype(str)  # object arrays cannot be saved without pickle
        self.classes_ = classes

    def _score(self, X: FloatArray) -> FloatArray:
        out = np.empty(X.shape[0])

        def block(lo: int, hi: int) -> None:
            out[lo:hi] = self._score_centered(X[lo:hi] - self.center_)

        run_blocks(block, X.shape[0], _BLOCK_ROWS, self.n_jobs)
        return out

    def _score_centered(self, Xc: FloatArray) -> FloatArray:
        return min_sq_distance(Xc @ self.whitener_, self.means_white_, self.means_sq_)
