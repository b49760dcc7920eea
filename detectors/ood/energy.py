"""Energy score on logits (Liu et al., NeurIPS 2020)."""

from __future__ import annotations

import numpy as np

from detectors.base import register
from detectors.ood.base import FloatArray, LogitDetector


@register("ood.energy")
class EnergyDetector(LogitDetector):
    """Free energy ``-T logsumexp(logits / T)``: low total evidence is anomalous.

    Takes a classifier's logits, not embeddings: ``fit(logits_ref)``, ``score(logits)``.

    Parameters
    ----------
    temperature : float
        Temperature ``T`` (the paper uses 1).
    fpr : float
        Target false-positive rate of ``threshold_`` on in-distribution logits.
    calibration_fraction : float
        Unused (logit scores learn nothing, so the whole reference calibrates); kept so that
        every OOD detector takes the same arguments.
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
    >>> logits_ref = rng.normal(size=(2000, 5)) + 6.0 * np.eye(5)[y]  # confident classifier
    >>> det = EnergyDetector().fit(logits_ref)
    >>> unsure = rng.normal(size=(3, 5))  # no class stands out
    >>> det.predict(unsure).is_ood.tolist()
    [True, True, True]
    >>> round(float(det.score(np.zeros((1, 5)))[0]), 4)  # -log(5)
    -1.6094
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
        t = float(self.temperature)
        Z = X / t
        m = Z.max(axis=1)
        Z -= m[:, None]
        np.exp(Z, out=Z)
        return -t * (m + np.log(Z.sum(axis=1)))
