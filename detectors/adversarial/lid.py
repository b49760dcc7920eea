"""Local intrinsic dimensionality of a record among its reference neighbours (Ma et al., 2018)."""

from __future__ import annotations

import numpy as np

from detectors.adversarial._neighbors import knn_distances, normalize_rows
from detectors.adversarial.base import AdversarialDetector, FloatArray, IntArray, Views
from detectors.adversarial.disagreement import check_dim
from detectors.base import register

_VIEWS = ("features", "embedding")


@register("adversarial.lid")
class LIDDetector(AdversarialDetector):
    """Maximum-likelihood LID estimate from the ``k`` nearest reference distances.

    ``LID(x) = -(1/k * sum_i log(d_i / d_k))^-1`` (Levina & Bickel's estimator, as used by
    Ma et al., ICLR 2018). Adversarial perturbations push records off the data manifold into
    regions whose neighbourhood looks higher-dimensional. Ma et al. train a classifier on LID
    of known attacks; here the raw LID of one view is the score, calibrated on clean records
    only.

    Parameters
    ----------
    k : int
        Neighbours in the estimate.
    view : {"features", "embedding"}
        Which view of the records to read (the task model's penultimate features by default).
    normalize : bool
        L2-normalise the view first.
    fpr, calibration_fraction, seed
        As in :class:`~detectors.adversarial.DisagreementDetector`.

    Attributes
    ----------
    reference_ : ndarray of shape (n_ref, d)
        The reference rows of the view.
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> basis = rng.normal(size=(2, 10))  # clean data lies on a 2-d plane in 10-d
    >>> y = np.zeros(1500, dtype=int)
    >>> ref = Views(np.zeros((1500, 1)), features=rng.normal(size=(1500, 2)) @ basis)
    >>> det = LIDDetector(k=20, fpr=0.05).fit(ref, y)
    >>> on = rng.normal(size=(300, 2)) @ basis
    >>> off = on + 0.5 * rng.normal(size=(300, 10))  # pushed off the plane
    >>> res = det.predict(Views(np.zeros((600, 1)), features=np.vstack([on, off])))
    >>> flags = res.is_adversarial
    >>> round(float(flags[:300].mean()), 2), round(float(flags[300:].mean()), 2)
    (0.02, 0.98)
    """

    reference_: FloatArray
    n_features_in_: int

    def __init__(
        self,
        k: int = 20,
        view: str = "features",
        normalize: bool = False,
        fpr: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        self.k = k
        self.view = view
        self.normalize = normalize
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _rows(self, views: Views) -> FloatArray:
        if self.view not in _VIEWS:
            raise ValueError(f"view must be one of {_VIEWS}, got {self.view!r}")
        X: FloatArray = views.need(self.view, self.name)
        return normalize_rows(X) if self.normalize else X

    def _fit_model(self, ref: Views, y: IntArray) -> None:
        if self.k < 2:
            raise ValueError(f"k must be at least 2 for a LID estimate, got {self.k}")
        X = self._rows(ref)
        if X.shape[0] < self.k:
            raise ValueError(f"LID with k={self.k} needs at least k reference rows, got {len(X)}")
        self.reference_ = X.copy()
        self.n_features_in_ = int(X.shape[1])

    def _score(self, views: Views) -> FloatArray:
        X = check_dim(self._rows(views), self.n_features_in_)
        d = knn_distances(X, self.reference_, self.k)
        return lid_mle(d)


def lid_mle(d: FloatArray, eps: float = 1e-12) -> FloatArray:
    """LID estimate of each row of ascending neighbour distances ``d`` of shape ``(n, k)``."""
    d = np.maximum(d, eps)
    logs = np.log(d / d[:, -1:])  # <= 0; the last column is 0
    mean = logs[:, :-1].sum(axis=1) / d.shape[1]
    # duplicates of the reference give mean 0: the estimate is then unbounded; cap it
    out: FloatArray = -1.0 / np.minimum(mean, -1e-6)
    return out
