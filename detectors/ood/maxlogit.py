"""Maximum logit on logits (Hendrycks et al., ICML 2022)."""

from __future__ import annotations

from detectors.base import register
from detectors.ood.base import FloatArray, LogitDetector


@register("ood.maxlogit")
class MaxLogitDetector(LogitDetector):
    """Negative maximum logit: weak evidence for every class is anomalous.

    Takes a classifier's logits, not embeddings: ``fit(logits_ref)``, ``score(logits)``. Unlike
    the softmax probability it keeps the logits' scale, which helps with many classes.

    Parameters
    ----------
    fpr : float
        Target false-positive rate of ``threshold_`` on in-distribution logits.
    calibration_fraction : float
        Unused (the whole reference calibrates); kept for a uniform signature.
    seed : int or None
        Unused, for the same reason.

    Attributes
    ----------
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 5, size=2000)
    >>> logits_ref = rng.normal(size=(2000, 5)) + 6.0 * np.eye(5)[y]
    >>> det = MaxLogitDetector().fit(logits_ref)
    >>> det.score(np.array([[1.0, 2.0, 3.0, 0.0, 0.0]])).tolist()
    [-3.0]
    >>> det.predict(rng.normal(size=(4, 5))).is_ood.tolist()
    [True, True, True, True]
    """

    def __init__(
        self,
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _score(self, X: FloatArray) -> FloatArray:
        return -X.max(axis=1)
