"""Spectral signatures per class (Tran et al., 2018), thresholds calibrated on clean windows."""

from __future__ import annotations

import numpy as np

from detectors.base import register
from detectors.ood._gaussian import class_stats, shrunk_covariance, whitener
from detectors.poisoning.base import (
    FloatArray,
    IntArray,
    PoisoningDetector,
    clean_window_scores,
)


@register("poisoning.spectral")
class SpectralSignatureDetector(PoisoningDetector):
    """Outlier score along the top singular direction of each class in a feedback window.

    Poisoned records of a class (flipped labels, a backdoor trigger) shift together along a
    direction the clean class does not vary in; in the window's whitened, class-centred
    representation that direction is the top singular vector, and each record's squared
    projection on it is its score (Tran, Li & Madry, NeurIPS 2018). Unlike the paper and
    ART's ``SpectralSignatureDefense``, which remove a fixed fraction per class, the
    threshold is calibrated at ``fpr`` on clean windows of ``window_size`` records drawn from
    held-out trusted data: a clean window loses about ``fpr`` of its records, a poisoned one
    what stands out. Classes are centred and whitened with the trusted reference's class
    means and pooled covariance (Ledoit-Wolf shrinkage).

    Parameters
    ----------
    window_size : int
        Records per feedback window (calibration draws clean windows of this size). The
        held-out clean records should number several times ``window_size``: windows drawn
        from a small pool overlap, and the threshold inherits the pool's sampling error.
    n_windows : int
        Clean windows drawn for calibration.
    fpr : float
        Target false-positive rate per clean record.
    calibration_fraction, seed
        The hold-out used when ``fit`` gets no ``X_cal``; the seed also draws the windows.

    Attributes
    ----------
    means_ : ndarray of shape (n_classes, d)
        Trusted class means.
    whitener_ : ndarray of shape (d, d)
        Whitening of the pooled within-class covariance.
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 3000)
    >>> X = rng.normal(size=(3000, 6)) + 5.0 * np.eye(3, 6)[y]
    >>> det = SpectralSignatureDetector(window_size=600, fpr=0.01).fit(X, y)
    >>> yw = rng.integers(0, 3, 600)
    >>> Xw = rng.normal(size=(600, 6)) + 5.0 * np.eye(3, 6)[yw]
    >>> Xw[:30] += 4.0 * np.eye(6)[5]  # 5 % carry a trigger along an unused direction
    >>> res = det.predict(Xw, yw)
    >>> round(float(res.is_poisoned[:30].mean()), 2), round(float(res.is_poisoned[30:].mean()), 3)
    (0.93, 0.009)
    """

    means_: FloatArray
    whitener_: FloatArray

    def __init__(
        self,
        window_size: int = 500,
        n_windows: int = 40,
        fpr: float = 0.01,
        calibration_fraction: float = 0.3,
        seed: int | None = 0,
    ) -> None:
        self.window_size = window_size
        self.n_windows = n_windows
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _fit_model(self, X: FloatArray, y: IntArray) -> None:
        _, means, resid = class_stats(X, self.label_index(y))
        cov = shrunk_covariance(resid, "ledoit-wolf")[0]
        self.means_ = means
        self.whitener_ = whitener(cov, X.shape[0])

    def _score(self, X: FloatArray, labels: IntArray) -> FloatArray:
        idx = self.label_index(labels)
        out = np.zeros(X.shape[0])
        for c in np.unique(idx):
            rows = np.flatnonzero(idx == c)
            if c < 0:  # a class the reference lacks: no clean geometry to compare with
                out[rows] = np.inf
                continue
            Z = (X[rows] - self.means_[c]) @ self.whitener_
            if rows.size < 2:
                out[rows] = np.einsum("ij,ij->i", Z, Z) / Z.shape[1]
                continue
            v = np.linalg.svd(Z, full_matrices=False)[2][0]
            out[rows] = (Z @ v) ** 2
        return out

    def _calibration_scores(self, X: FloatArray, y: IntArray) -> FloatArray:
        return clean_window_scores(
            self._score, X, y, self.window_size, self.n_windows, self.seed
        )
