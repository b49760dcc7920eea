"""The OOD family: per-record out-of-distribution scores with calibrated thresholds.

Every detector here follows one API, whether it reads embeddings or logits:

* ``fit(X_ref, y=None) -> self`` learns from in-distribution reference rows and calibrates
  ``threshold_`` at the target false-positive rate ``fpr`` on a seeded held-out part of the
  reference (see :mod:`detectors.ood.calibration`);
* ``score(X) -> ndarray`` of shape ``(n,)``; **higher is more anomalous**, for every detector;
* ``predict(X) -> OODResult`` adds the threshold, the flag and the calibrated tail probability
  of each record. Both are pure: scoring never touches the reference.

Subclasses implement ``_fit_model(X, y)`` and ``_score(X)`` on validated arrays. Detectors with
nothing to learn (:class:`LogitDetector`) calibrate on the whole reference instead of holding
part of it out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detectors.base import RecordDetector, check_array
from detectors.ood.calibration import (
    calibration_split,
    conformal_threshold,
    tail_probability,
)

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class OODResult:
    """Per-record OOD verdicts for one batch.

    Attributes
    ----------
    scores : ndarray of shape (n,)
        OOD score of each record (higher is more anomalous).
    threshold : float
        Score above which a record is flagged (calibrated at ``fpr`` on held-out reference).
    is_ood : ndarray of bool, shape (n,)
        ``scores > threshold``.
    tail_prob : ndarray of shape (n,)
        Calibrated tail probability (conformal p-value) of each score: the chance that an
        in-distribution record scores at least as high. Small is anomalous.
    fpr : float
        Target false-positive rate the threshold was calibrated for.
    detector : str
        Registered name of the detector that produced the result.
    """

    scores: FloatArray
    threshold: float
    is_ood: NDArray[np.bool_]
    tail_prob: FloatArray
    fpr: float
    detector: str

    @property
    def flags(self) -> NDArray[np.bool_]:
        """``is_ood`` under the name every per-record result uses."""
        return self.is_ood

    @property
    def ood_rate(self) -> float:
        """Fraction of the batch flagged (the metric to alert on)."""
        return float(self.is_ood.mean()) if self.is_ood.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (arrays become lists)."""
        out = asdict(self)
        for key in ("scores", "is_ood", "tail_prob"):
            out[key] = out[key].tolist()
        return out


class OODDetector(RecordDetector):
    """Family base: validation, calibration split, threshold and :class:`OODResult`.

    Subclasses store ``fpr``, ``calibration_fraction`` and ``seed`` in ``__init__`` (plus their
    own hyper-parameters) and implement :meth:`_fit_model` and :meth:`_score`.
    """

    name: ClassVar[str] = "ood"
    #: False for detectors with nothing to learn: they calibrate on the whole reference.
    _holdout: ClassVar[bool] = True
    #: Smallest number of rows :meth:`_fit_model` accepts.
    _min_fit_rows: ClassVar[int] = 1

    fpr: float
    calibration_fraction: float
    seed: int | None
    n_features_in_: int
    threshold_: float
    calibration_scores_: FloatArray

    # --- to implement -----------------------------------------------------------------------
    def _fit_model(self, X: FloatArray, y: NDArray[Any] | None) -> None:
        raise NotImplementedError

    def _score(self, X: FloatArray) -> FloatArray:
        raise NotImplementedError

    # --- public API -------------------------------------------------------------------------
    def fit(self, X_ref: ArrayLike, y: ArrayLike | None = None) -> Self:
        """Learn from in-distribution reference rows and calibrate ``threshold_``.

        Parameters
        ----------
        X_ref : array-like of shape (n, d)
            In-distribution reference (embeddings, or logits for logit detectors).
        y : array-like of shape (n,), optional
            Class labels; used by detectors that can (class-conditional Mahalanobis), ignored
            by the others.
        """
        X = check_array(X_ref, name="X_ref", min_rows=2)
        labels = _check_labels(y, X.shape[0])
        for key in list(self._learned()):  # a refit starts clean
            delattr(self, key)
        if self._holdout:
            fit_idx, cal_idx = calibration_split(
                X.shape[0],
                self.calibration_fraction,
                self.seed,
                getattr(self, "max_calibration", None),  # detectors that cap it (kNN)
            )
        else:
            fit_idx = cal_idx = np.arange(X.shape[0])
        if fit_idx.shape[0] < self._min_fit_rows:
            raise ValueError(
                f"{type(self).__name__} needs at least {self._min_fit_rows} reference rows after "
                f"holding out calibration data, got {fit_idx.shape[0]} of {X.shape[0]}; "
                "pass a larger reference or lower calibration_fraction"
            )
        self._fit_model(X[fit_idx], None if labels is None else labels[fit_idx])
        cal = np.sort(self._score(X[cal_idx]))
        self.n_features_in_ = int(X.shape[1])
        self.calibration_scores_ = cal
        self.threshold_ = conformal_threshold(cal, self.fpr)
        return self

    def score(self, X: ArrayLike) -> FloatArray:
        """OOD score of each row of ``X`` (shape ``(n,)``; higher is more anomalous)."""
        self._check_fitted()
        return self._score(check_array(X, dim=self.n_features_in_))

    def predict(self, X: ArrayLike) -> OODResult:
        """Scores, threshold, flags and calibrated tail probabilities for a batch."""
        scores = self.score(X)
        return OODResult(
            scores=scores,
            threshold=float(self.threshold_),
            is_ood=scores > self.threshold_,
            tail_prob=tail_probability(self.calibration_scores_, scores),
            fpr=float(self.fpr),
            detector=self.name,
        )


class LogitDetector(OODDetector):
    """Base of the scores computed from a classifier's logits (energy, MSP, max-logit).

    ``fit(logits_ref)`` only calibrates the threshold, on every reference row (there is nothing
    else to learn, so nothing needs holding out); any 2-D float array is accepted as logits.
    """

    _holdout: ClassVar[bool] = False
    input_kind: ClassVar[str] = "logits"

    def _fit_model(self, X: FloatArray, y: NDArray[Any] | None) -> None:
        return None


def _check_labels(y: ArrayLike | None, n: int) -> NDArray[Any] | None:
    if y is None:
        return None
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) to match X_ref, got {labels.shape}")
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise ValueError("y contains NaN or inf; pass integer or string class labels")
    return labels
