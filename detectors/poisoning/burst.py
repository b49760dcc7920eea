"""Bursts of near-duplicates within a feedback window (a trigger pasted many times)."""

from __future__ import annotations

import numpy as np

from detectors.adversarial._neighbors import knn_distances, normalize_rows
from detectors.base import register
from detectors.poisoning.base import (
    FloatArray,
    IntArray,
    PoisoningDetector,
    clean_window_scores,
)


@register("poisoning.burst")
class BurstDetector(PoisoningDetector):
    """Tight clusters of near-identical records with one label inside a feedback window.

    A record's score is ``-log`` of the distance to its ``cluster - 1``-th nearest *other*
    record of the window with the same label (L2-normalised representation): high when at
    least ``cluster`` records (itself included) sit closer together than clean feedback ever
    does. Calibrated at ``fpr`` on clean windows of ``window_size`` records drawn without
    replacement from held-out trusted data.

    Parameters
    ----------
    cluster : int
        Records (including itself) that make a burst.
    window_size : int
        Records per feedback window in calibration.
    n_windows : int
        Clean calibration windows.
    fpr : float
        Target false-positive rate per clean record.
    calibration_fraction, seed
        The hold-out used when ``fit`` gets no ``X_cal``; the seed also draws the windows.

    Attributes
    ----------
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, 3000)
    >>> X = rng.normal(size=(3000, 8)) + 3.0 * np.eye(4, 8)[y]
    >>> det = BurstDetector(window_size=500, fpr=0.01).fit(X, y)
    >>> yw = rng.integers(0, 4, 500)
    >>> Xw = rng.normal(size=(500, 8)) + 3.0 * np.eye(4, 8)[yw]
    >>> Xw[:20] = Xw[0] + 0.01 * rng.normal(size=(20, 8))  # one record sent 20 times, jittered
    >>> yw[:20] = 2
    >>> res = det.predict(Xw, yw)
    >>> round(float(res.is_poisoned[:20].mean()), 2), round(float(res.is_poisoned[20:].mean()), 3)
    (1.0, 0.008)
    """

    def __init__(
        self,
        cluster: int = 3,
        window_size: int = 500,
        n_windows: int = 40,
        fpr: float = 0.01,
        calibration_fraction: float = 0.3,
        seed: int | None = 0,
    ) -> None:
        self.cluster = cluster
        self.window_size = window_size
        self.n_windows = n_windows
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _fit_model(self, X: FloatArray, y: IntArray) -> None:
        if self.cluster < 2:
            raise ValueError(f"cluster must be at least 2, got {self.cluster}")

    def _score(self, X: FloatArray, labels: IntArray) -> FloatArray:
        Q = normalize_rows(X)
        out = np.full(X.shape[0], -np.log(4.0))  # no same-label company: as far as it gets
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            if rows.size < self.cluster:
                continue
            d = knn_distances(Q[rows], Q[rows], self.cluster)[:, -1]  # column 0 is itself
            out[rows] = -np.log(np.maximum(d, 1e-9))
        return out

    def _calibration_scores(self, X: FloatArray, y: IntArray) -> FloatArray:
        return clean_window_scores(
            self._score, X, y, self.window_size, self.n_windows, self.seed
        )
