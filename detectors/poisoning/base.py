"""The poisoning family: suspicion of labelled feedback records meant for retraining.

A poisoning detector reads a *feedback window*: each record's representation (SSL embedding,
or the task model's features) and the label it arrives with. Conventions:

* ``fit(X_ref, y_ref, X_cal=None, y_cal=None) -> self`` learns from a trusted, clean, labelled
  reference and calibrates ``threshold_`` at ``fpr`` on clean held-out records (``X_cal``, or
  a seeded part of the reference). Poison is never used to fit or calibrate.
* ``score(X, labels) -> ndarray`` of shape ``(n,)``: a per-record suspicion, higher is more
  suspicious. Window detectors (spectral signatures, bursts) score a record in the context of
  the window it came in.
* ``predict(X, labels) -> PoisoningResult``: per-record flags and the window-level poisoning
  rate with a binomial test against ``fpr``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import binom

from detectors.adversarial.base import class_index
from detectors.base import Detector, check_array
from detectors.ood.calibration import calibration_split, conformal_threshold, tail_probability

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class PoisoningResult:
    """Verdicts on one feedback window.

    Attributes
    ----------
    scores : ndarray of shape (n,)
        Suspicion of each record (higher is more suspicious).
    threshold : float
        Score above which a record is flagged (calibrated at ``fpr`` on clean records).
    is_poisoned : ndarray of bool, shape (n,)
        ``scores > threshold``.
    tail_prob : ndarray of shape (n,)
        Conformal p-value of each score against clean calibration scores.
    fpr : float
        Target false-positive rate per record.
    poison_rate : float
        Estimated share of poisoned records in the window, corrected for the expected false
        positives: ``max(0, (flagged / n - fpr) / (1 - fpr))``.
    p_value : float
        Binomial tail ``P(X >= flagged)`` for ``X ~ Bin(n, fpr)``: small when the window holds
        more flagged records than clean data explains.
    evidence : ndarray of int
        Indices of the flagged records, most suspicious first (at most 20).
    neighbour_class : ndarray of int, shape (n,), or None
        The class the trusted reference votes for (label-consistency detectors).
    detector : str
        Registered name of the detector.
    """

    scores: FloatArray
    threshold: float
    is_poisoned: NDArray[np.bool_]
    tail_prob: FloatArray
    fpr: float
    poison_rate: float
    p_value: float
    evidence: IntArray
    neighbour_class: IntArray | None
    detector: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (arrays become lists)."""
        return {
            "scores": self.scores.tolist(),
            "threshold": self.threshold,
            "is_poisoned": self.is_poisoned.tolist(),
            "tail_prob": self.tail_prob.tolist(),
            "fpr": self.fpr,
            "poison_rate": self.poison_rate,
            "p_value": self.p_value,
            "evidence": self.evidence.tolist(),
            "neighbour_class": None
            if self.neighbour_class is None
            else self.neighbour_class.tolist(),
            "detector": self.detector,
        }


def window_result(
    scores: FloatArray, threshold: float, cal_sorted: FloatArray, fpr: float, detector: str,
    neighbour_class: IntArray | None = None, tail: FloatArray | None = None,
) -> PoisoningResult:
    """Assemble a :class:`PoisoningResult` from per-record scores."""
    flagged = scores > threshold
    n, k = scores.shape[0], int(flagged.sum())
    rate = max(0.0, (k / n - fpr) / (1.0 - fpr)) if n else 0.0
    p_value = float(binom.sf(k - 1, n, fpr)) if n else 1.0
    order = np.argsort(-scores, kind="stable")
    evidence = order[flagged[order]][:20].astype(np.int64)
    return PoisoningResult(
        scores=scores,
        threshold=float(threshold),
        is_poisoned=flagged,
        tail_prob=tail_probability(cal_sorted, scores) if tail is None else tail,
        fpr=float(fpr),
        poison_rate=float(rate),
        p_value=p_value,
        evidence=evidence,
        neighbour_class=neighbour_class,
        detector=detector,
    )


class PoisoningDetector(Detector):
    """Family base: validation, calibration split, threshold, :class:`PoisoningResult`."""

    name: ClassVar[str] = "poisoning"

    fpr: float
    calibration_fraction: float
    seed: int | None
    classes_: IntArray
    n_features_in_: int
    threshold_: float
    calibration_scores_: FloatArray

    def _fit_model(self, X: FloatArray, y: IntArray) -> None:
        raise NotImplementedError

    def _score(self, X: FloatArray, labels: IntArray) -> FloatArray:
        raise NotImplementedError

    def _calibration_scores(self, X: FloatArray, y: IntArray) -> FloatArray:
        """Scores of clean records (window detectors score clean windows here)."""
        return self._score(X, y)

    def _neighbour_class(self, X: FloatArray) -> IntArray | None:
        return None

    def fit(
        self, X_ref: ArrayLike, y_ref: ArrayLike, X_cal: ArrayLike | None = None,
        y_cal: ArrayLike | None = None,
    ) -> Self:
        """Learn from a trusted labelled reference; calibrate on clean held-out records."""
        X = check_array(X_ref, name="X_ref", min_rows=2)
        y = check_labels(y_ref, X.shape[0], "y_ref")
        for key in list(self._learned()):
            delattr(self, key)
        if X_cal is None:
            fit_idx, cal_idx = calibration_split(X.shape[0], self.calibration_fraction, self.seed)
            Xf, yf, Xc, yc = X[fit_idx], y[fit_idx], X[cal_idx], y[cal_idx]
        else:
            Xc = check_array(X_cal, name="X_cal", dim=X.shape[1])
            yc = check_labels(y_cal, Xc.shape[0], "y_cal")
            Xf, yf = X, y
        self.n_features_in_ = int(X.shape[1])
        self.classes_ = np.unique(yf)
        self._fit_model(Xf, yf)
        cal = np.sort(self._calibration_scores(Xc, yc))
        self.calibration_scores_ = cal
        self.threshold_ = conformal_threshold(cal, self.fpr)
        return self

    def score(self, X: ArrayLike, labels: ArrayLike) -> FloatArray:
        """Suspicion of each record of the window (shape ``(n,)``)."""
        self._check_fitted()
        Xv = check_array(X, dim=self.n_features_in_)
        return self._score(Xv, check_labels(labels, Xv.shape[0], "labels"))

    def predict(self, X: ArrayLike, labels: ArrayLike) -> PoisoningResult:
        """Per-record flags and the window's poisoning rate."""
        scores = self.score(X, labels)
        Xv = check_array(X, dim=self.n_features_in_)
        return window_result(
            scores, self.threshold_, self.calibration_scores_, self.fpr, self.name,
            self._neighbour_class(Xv),
        )

    def label_index(self, labels: IntArray) -> IntArray:
        """Position of each label in ``classes_`` (``-1``: a class the reference lacks)."""
        return class_index(self.classes_, labels)


def clean_window_scores(
    score: Callable[[FloatArray, IntArray], FloatArray], X: FloatArray, y: IntArray,
    window_size: int, n_windows: int, seed: int | None,
) -> FloatArray:
    """``score`` of every record of ``n_windows`` clean windows, concatenated.

    Each window holds ``window_size`` records (all of them when there are fewer) drawn
    without replacement from ``X, y`` with a generator seeded by ``seed``: the calibration of
    the window detectors, which score a record in the context of its window.
    """
    rng = np.random.default_rng(seed)
    size = min(window_size, X.shape[0])
    return np.concatenate([
        score(X[w], y[w])
        for w in (rng.choice(X.shape[0], size, replace=False) for _ in range(n_windows))
    ])


def check_labels(y: ArrayLike | None, n: int, name: str) -> IntArray:
    """Integer labels of shape ``(n,)``, or an error naming the problem."""
    if y is None:
        raise ValueError(f"{name} is required: the label each record arrived with")
    labels = np.asarray(y)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{name} must be integer class labels of shape ({n},), got dtype {labels.dtype} "
            f"shape {labels.shape}"
        )
    return labels.astype(np.int64)
