"""The adversarial family: per-record adversarial-input scores with calibrated thresholds.

A per-record adversarial detector reads several *views* of each record (:class:`Views`): the
SSL embedding, the task model's prediction and, optionally, the task model's penultimate
features. Conventions (the same as the OOD family's):

* ``fit(ref, y, calibration=None) -> self`` learns from a labelled, trusted reference and
  calibrates ``threshold_`` at the target false-positive rate ``fpr`` on clean held-out records
  (``calibration``, or a seeded part of ``ref``). Attacks are never used to fit or calibrate.
* ``score(views) -> ndarray`` of shape ``(n,)``; **higher is more adversarial**.
* ``predict(views) -> AdversarialResult``: threshold, flags, conformal tail probabilities and
  evidence (the class the SSL neighbours vote for, per-signal tail probabilities). Both are
  pure.

Subclasses implement ``_fit_model(ref, y)`` and ``_score(views)`` on validated inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detectors.base import Detector, check_array
from detectors.ood.calibration import calibration_split, conformal_threshold, tail_probability

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Views:
    """The views of a batch of ``n`` records that adversarial detectors read.

    Parameters
    ----------
    embedding : array-like of shape (n, d)
        SSL embedding of each record.
    prediction : array-like of int, shape (n,), optional
        The task model's predicted class (needed by detectors that compare with it).
    features : array-like of shape (n, f), optional
        The task model's penultimate features (the record's optional named feature).
    """

    embedding: FloatArray
    prediction: IntArray | None = None
    features: FloatArray | None = None

    def __post_init__(self) -> None:
        emb = check_array(self.embedding, name="embedding")
        object.__setattr__(self, "embedding", emb)
        n = emb.shape[0]
        if self.prediction is not None:
            pred = np.asarray(self.prediction)
            if pred.shape != (n,) or pred.dtype.kind not in "iu":
                raise ValueError(
                    f"prediction must be integer class ids of shape ({n},), got dtype "
                    f"{pred.dtype} shape {pred.shape}"
                )
            object.__setattr__(self, "prediction", pred.astype(np.int64))
        if self.features is not None:
            feats = check_array(self.features, name="features")
            if feats.shape[0] != n:
                raise ValueError(f"features has {feats.shape[0]} rows, embedding has {n}")
            object.__setattr__(self, "features", feats)

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    def take(self, idx: NDArray[np.intp]) -> Views:
        """The rows ``idx`` of every view."""
        return Views(
            self.embedding[idx],
            None if self.prediction is None else self.prediction[idx],
            None if self.features is None else self.features[idx],
        )

    def need(self, view: str, detector: str) -> NDArray[Any]:
        """The named view, or an error naming the fix when the records lack it."""
        value = getattr(self, view)
        if value is None:
            raise ValueError(
                f"{detector} reads the {view!r} view, which these records lack; pass "
                f"Views(embedding, prediction=..., features=...) with {view} set"
            )
        return value


@dataclass(frozen=True)
class AdversarialResult:
    """Per-record adversarial verdicts for one batch.

    Attributes
    ----------
    scores : ndarray of shape (n,)
        Adversarial score of each record (higher is more adversarial).
    threshold : float
        Score above which a record is flagged (calibrated at ``fpr`` on clean held-out data).
    is_adversarial : ndarray of bool, shape (n,)
        ``scores > threshold``.
    tail_prob : ndarray of shape (n,)
        Conformal p-value of each score against the clean calibration scores.
    fpr : float
        Target false-positive rate of the threshold.
    detector : str
        Registered name of the detector.
    ssl_class : ndarray of int, shape (n,), or None
        Evidence: the class the SSL-space neighbours vote for (differs from the model's
        prediction on a successful attack that the SSL encoder does not follow).
    signals : dict of str to ndarray
        Evidence of combined detectors: the tail probability of each signal per record.
    """

    scores: FloatArray
    threshold: float
    is_adversarial: NDArray[np.bool_]
    tail_prob: FloatArray
    fpr: float
    detector: str
    ssl_class: IntArray | None = None
    signals: dict[str, FloatArray] = field(default_factory=dict)

    @property
    def adversarial_rate(self) -> float:
        """Fraction of the batch flagged."""
        return float(self.is_adversarial.mean()) if self.is_adversarial.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (arrays become lists)."""
        return {
            "scores": self.scores.tolist(),
            "threshold": self.threshold,
            "is_adversarial": self.is_adversarial.tolist(),
            "tail_prob": self.tail_prob.tolist(),
            "fpr": self.fpr,
            "detector": self.detector,
            "ssl_class": None if self.ssl_class is None else self.ssl_class.tolist(),
            "signals": {k: v.tolist() for k, v in sorted(self.signals.items())},
        }


class AdversarialDetector(Detector):
    """Family base: validation, calibration, threshold and :class:`AdversarialResult`."""

    name: ClassVar[str] = "adversarial"

    fpr: float
    calibration_fraction: float
    seed: int | None
    classes_: IntArray
    threshold_: float
    calibration_scores_: FloatArray

    # --- to implement -----------------------------------------------------------------------
    def _fit_model(self, ref: Views, y: IntArray) -> None:
        raise NotImplementedError

    def _score(self, views: Views) -> FloatArray:
        raise NotImplementedError

    def _calibration_scores(self, cal: Views) -> FloatArray:
        """Scores of the clean calibration records (combined detectors override this)."""
        return self._score(cal)

    def _ssl_class(self, views: Views) -> IntArray | None:
        return None

    def _signals(self, views: Views) -> dict[str, FloatArray]:
        return {}

    # --- public API -------------------------------------------------------------------------
    def fit(self, ref: Views, y: ArrayLike, calibration: Views | None = None) -> Self:
        """Learn from a labelled trusted reference; calibrate ``threshold_`` on clean data.

        Parameters
        ----------
        ref : Views
            Clean, trusted reference records (their views).
        y : array-like of int, shape (n,)
            True labels of the reference records.
        calibration : Views, optional
            Clean held-out records (with the model's predictions) to calibrate on. When
            omitted, a seeded ``calibration_fraction`` of ``ref`` is held out and its labels
            stand in for the model's predictions where none are given.
        """
        labels = _check_labels(ref, y)
        for key in list(self._learned()):  # a refit starts clean
            delattr(self, key)
        if calibration is None:
            fit_idx, cal_idx = calibration_split(len(ref), self.calibration_fraction, self.seed)
            fit_views, cal = ref.take(fit_idx), ref.take(cal_idx)
            if cal.prediction is None:
                cal = Views(cal.embedding, labels[cal_idx], cal.features)
            labels = labels[fit_idx]
        else:
            fit_views = ref
            cal = calibration
        self.classes_ = np.unique(labels)
        self._fit_model(fit_views, labels)
        scores = np.sort(self._calibration_scores(cal))
        self.calibration_scores_ = scores
        self.threshold_ = conformal_threshold(scores, self.fpr)
        return self

    def fit_reference(self, ref: Views, y: ArrayLike) -> Self:
        """Learn from the reference only, without calibrating a threshold.

        For detectors used as one signal of a combination, which calibrates the combined
        statistic itself; :meth:`score` works afterwards, :meth:`predict` needs :meth:`fit`.
        """
        labels = _check_labels(ref, y)
        for key in list(self._learned()):
            delattr(self, key)
        self.classes_ = np.unique(labels)
        self._fit_model(ref, labels)
        return self

    def score(self, views: Views) -> FloatArray:
        """Adversarial score of each record (shape ``(n,)``; higher is more adversarial)."""
        self._check_fitted()
        if not isinstance(views, Views):
            raise TypeError(f"score reads a Views batch, got {type(views).__name__}")
        return self._score(views)

    def predict(self, views: Views) -> AdversarialResult:
        """Scores, threshold, flags, tail probabilities and evidence for a batch."""
        scores = self.score(views)
        return AdversarialResult(
            scores=scores,
            threshold=float(self.threshold_),
            is_adversarial=scores > self.threshold_,
            tail_prob=tail_probability(self.calibration_scores_, scores),
            fpr=float(self.fpr),
            detector=self.name,
            ssl_class=self._ssl_class(views),
            signals=self._signals(views),
        )


def class_index(classes: IntArray, labels: IntArray) -> IntArray:
    """Position of each label in ``classes`` (``-1`` for a class never seen at fit)."""
    pos = np.searchsorted(classes, labels)
    pos = np.clip(pos, 0, classes.shape[0] - 1)
    return np.where(classes[pos] == labels, pos, -1).astype(np.int64)


def _check_labels(ref: Views, y: ArrayLike) -> IntArray:
    if not isinstance(ref, Views):
        raise TypeError(f"ref must be a Views, got {type(ref).__name__}")
    labels = np.asarray(y)
    if labels.shape != (len(ref),) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"y must be integer class labels of shape ({len(ref)},), got dtype "
            f"{labels.dtype} shape {labels.shape}"
        )
    return labels.astype(np.int64)
