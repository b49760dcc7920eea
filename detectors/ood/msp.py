"""Maximum softmax probability on logits (Hendrycks & Gimpel, ICLR 2017)."""

from __future__ import annotations

import numpy as np

from detectors.base import register
from detectors.ood.base import FloatArray, LogitDetector


@register("ood.msp")
class MSPDetector(LogitDetector):
    """Negative maximum softmax probability: an unconfident prediction is anomalous.

    Takes a classifier's logits, not embeddings: ``fit(logits_ref)``, ``score(logits)``. The
    score lies in ``[-1, -1/C]`` for ``C`` classes.

    Parameters
    ----------
    temperature : float
        Softmax temperature (1 is the baseline of the paper).
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
    >>> det = MSPDetector().fit(logits_ref)
    >>> det.score(np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0]])).round(3)
    array([-0.2  , -0.974])
    >>> det.predict(np.zeros((1, 5))).is_ood.tolist()
    [True]
    """

    def __init__(
        self,
        temperature: float = 1.0,
        fpr: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        self.temperature = temperature
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _score(self, X: FloatArray) -> FloatArray:
        Z = X / float(self.temperature)
        Z -= Z.max(axis=1)[:, None]
        np.exp(Z, out=Z)
        # the max of exp(z - max) is exactly 1, so max softmax = 1 / sum
        return -1.0 / Z.sum(axis=1)
