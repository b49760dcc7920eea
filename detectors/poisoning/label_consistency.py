"""kNN label consistency of feedback records against the trusted reference (SSL space)."""

from __future__ import annotations

import numpy as np

from detectors.adversarial._neighbors import LabelledNeighbours, class_margin
from detectors.base import register
from detectors.poisoning.base import FloatArray, IntArray, PoisoningDetector


@register("poisoning.label_consistency")
class LabelConsistencyDetector(LabelledNeighbours, PoisoningDetector):
    """Does the trusted reference agree with the label a feedback record arrives with?

    ``score = log d_k(claimed label) - log d_k(nearest other class)``, with ``d_k(c)`` the
    distance to the ``k``-th nearest trusted reference record of class ``c`` (L2-normalised
    embeddings). Random label flips and dirty-label backdoors (a trigger pasted on images of
    one class, labelled as another) both arrive with labels that their SSL neighbourhood
    contradicts; clean feedback scores well below 0.

    Parameters
    ----------
    k : int
        Neighbour rank within each class.
    normalize : bool
        L2-normalise the representation first.
    fpr : float
        Target false-positive rate per clean record.
    calibration_fraction, seed
        The hold-out used when ``fit`` gets no ``X_cal``.

    Attributes
    ----------
    reference_ : ndarray of shape (n_ref, d)
        The trusted reference (normalised).
    ref_class_ : ndarray of int
        Index into ``classes_`` of each reference row.
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = 3.0 * np.eye(5, 8)
    >>> y = rng.integers(0, 5, 2500)
    >>> det = LabelConsistencyDetector(fpr=0.01).fit(rng.normal(size=(2500, 8)) + centres[y], y)
    >>> yw = rng.integers(0, 5, 1000)
    >>> Xw = rng.normal(size=(1000, 8)) + centres[yw]
    >>> claimed = yw.copy()
    >>> claimed[:50] = (yw[:50] + 1) % 5  # 5 % of the labels flipped
    >>> res = det.predict(Xw, claimed)
    >>> round(float(res.is_poisoned[:50].mean()), 2), round(float(res.is_poisoned[50:].mean()), 3)
    (0.88, 0.015)
    >>> round(res.poison_rate, 3), res.p_value < 1e-6
    (0.048, True)
    """

    reference_: FloatArray
    ref_class_: IntArray

    def __init__(
        self,
        k: int = 5,
        normalize: bool = True,
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        self.k = k
        self.normalize = normalize
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _fit_model(self, X: FloatArray, y: IntArray) -> None:
        self._fit_reference(X, y)

    def _distances(self, X: FloatArray) -> FloatArray:
        return self._class_distances(X)

    def _score(self, X: FloatArray, labels: IntArray) -> FloatArray:
        return class_margin(self._distances(X), self.label_index(labels))[0]

    def _neighbour_class(self, X: FloatArray) -> IntArray:
        return self.classes_[self._distances(X).argmin(axis=1)].astype(np.int64)
