"""Relative Mahalanobis distance (Ren et al. 2021): class fit minus background fit."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.cluster.vq import kmeans2

from detectors.base import register
from detectors.ood._gaussian import class_stats, scaled_covariance, whitener
from detectors.ood.base import FloatArray
from detectors.ood.mahalanobis import MahalanobisDetector


@register("ood.relative_mahalanobis")
class RelativeMahalanobisDetector(MahalanobisDetector):
    """``min_c MD_c(x) - MD_0(x)``: class-conditional minus background squared Mahalanobis.

    ``MD_c`` is the class-conditional distance of :class:`MahalanobisDetector`; ``MD_0`` uses one
    Gaussian fitted to the whole reference, shrunk with the same intensity and ridge as the
    class fit. Subtracting it removes the directions every class
    shares, which helps near-OOD (Ren et al. 2021, "A simple fix to Mahalanobis distance").
    Without labels, the classes are ``n_clusters`` seeded k-means clusters of the reference
    (with one class the score would be identically zero).

    Parameters
    ----------
    shrinkage : "ledoit-wolf" or float in [0, 1]
        Shrinkage of both covariances; ``0.0`` is the plain sample covariance.
    n_clusters : int
        Pseudo-classes used when ``fit`` gets no labels.
    fpr : float
        Target false-positive rate of ``threshold_`` on in-distribution data.
    calibration_fraction : float
        Share of the reference held out (seeded) to calibrate the threshold.
    seed : int or None
        Seed of the calibration split and of k-means.
    n_jobs : int or None
        Threads scoring row blocks in parallel (``None``: all available cores).

    Attributes
    ----------
    background_whitener_ : ndarray of shape (d, d)
        Whitener of the background covariance.
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, size=4000)
    >>> ref = rng.normal(size=(4000, 8)) + 5.0 * np.eye(8)[y]
    >>> det = RelativeMahalanobisDetector().fit(ref, y)
    >>> inlier = rng.normal(size=(200, 8)) + 5.0 * np.eye(8)[2]
    >>> near_ood = rng.normal(size=(200, 8)) + 5.0 * np.eye(8)[6]  # an unseen fifth class
    >>> bool(np.median(det.score(near_ood)) > np.quantile(det.score(inlier), 0.99))
    True
    """

    _min_fit_rows: ClassVar[int] = 2

    background_whitener_: FloatArray

    def __init__(
        self,
        shrinkage: float | str = "ledoit-wolf",
        n_clusters: int = 8,
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.shrinkage = shrinkage
        self.n_clusters = n_clusters
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.n_jobs = n_jobs

    def _fit_model(self, X: FloatArray, y: NDArray[Any] | None) -> None:
        if y is None:
            k = max(1, min(self.n_clusters, X.shape[0] // 2))
            _, y = kmeans2(X, k, minit="++", seed=np.random.default_rng(self.seed))
        super()._fit_model(X, y)
        _, _, resid = class_stats(X, None)
        # The background gets the class fit's shrinkage and ridge: then Sigma_0 >= Sigma_c, and
        # directions in which no class varies (constant pixels, dead units) cancel out instead
        # of being weighted by two different ridges.
        cov = scaled_covariance(resid, 1.0 - self.shrinkage_, self.ridge_)
        self.background_whitener_ = whitener(cov, X.shape[0])

    def _score_centered(self, Xc: FloatArray) -> FloatArray:
        # the background Gaussian's mean is center_, the mean of the fitted rows
        Z0 = Xc @ self.background_whitener_
        return super()._score_centered(Xc) - np.einsum("ij,ij->i", Z0, Z0)
