"""One suspicion score per feedback record from label consistency, spectral signatures, bursts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detectors.base import Detector, check_array, load_state, register
from detectors.ood.calibration import tail_probability
from detectors.poisoning.base import (
    FloatArray,
    IntArray,
    PoisoningDetector,
    PoisoningResult,
    check_labels,
    window_result,
)
from detectors.poisoning.burst import BurstDetector
from detectors.poisoning.label_consistency import LabelConsistencyDetector
from detectors.poisoning.spectral import SpectralSignatureDetector

SIGNALS = ("label_consistency", "spectral", "burst")


@register("poisoning.feedback")
class FeedbackPoisoningDetector(PoisoningDetector):
    """Union of calibrated poisoning signals, each at ``fpr / n_signals`` (Bonferroni).

    Every signal is calibrated on clean held-out trusted records at ``fpr / n_signals``; a
    record is flagged when any signal flags it, so a clean record is flagged with
    probability at most ``fpr``. The suspicion score is ``-log(n_signals * min_tail)``
    (flagged above ``-log(fpr)``); the result's ``neighbour_class`` is the class the trusted
    reference votes for.

    Parameters
    ----------
    signals : sequence of str
        Any of ``"label_consistency"``, ``"spectral"``, ``"burst"``.
    window_size : int
        Records per feedback window (the windowed signals calibrate on clean windows of
        this size).
    fpr : float
        Target false-positive rate per clean record (all signals together).
    calibration_fraction, seed
        The hold-out used when ``fit`` gets no ``X_cal``, and the signals' seed.

    Attributes
    ----------
    threshold_ : float
        ``-log(fpr)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 4, 3000)
    >>> X = rng.normal(size=(3000, 8)) + 3.0 * np.eye(4, 8)[y]
    >>> det = FeedbackPoisoningDetector(window_size=400, fpr=0.02).fit(X, y)
    >>> yw = rng.integers(0, 4, 400)
    >>> Xw = rng.normal(size=(400, 8)) + 3.0 * np.eye(4, 8)[yw]
    >>> lw = yw.copy()
    >>> lw[:20] = (yw[:20] + 1) % 4  # 5 % flipped
    >>> res = det.predict(Xw, lw)
    >>> round(float(res.is_poisoned[:20].mean()), 2), round(float(res.is_poisoned[20:].mean()), 3)
    (1.0, 0.026)
    """

    _components: list[PoisoningDetector]

    def __init__(
        self,
        signals: Sequence[str] = SIGNALS,
        window_size: int = 500,
        fpr: float = 0.01,
        calibration_fraction: float = 0.3,
        seed: int | None = 0,
    ) -> None:
        self.signals = signals
        self.window_size = window_size
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _make(self, name: str, fpr: float) -> PoisoningDetector:
        if name == "label_consistency":
            return LabelConsistencyDetector(fpr=fpr, seed=self.seed)
        if name == "spectral":
            return SpectralSignatureDetector(self.window_size, fpr=fpr, seed=self.seed)
        if name == "burst":
            return BurstDetector(window_size=self.window_size, fpr=fpr, seed=self.seed)
        raise ValueError(f"unknown signal {name!r}; choose from {list(SIGNALS)}")

    def fit(
        self, X_ref: ArrayLike, y_ref: ArrayLike, X_cal: ArrayLike | None = None,
        y_cal: ArrayLike | None = None,
    ) -> FeedbackPoisoningDetector:
        names = list(self.signals)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"signals must be distinct names from {list(SIGNALS)}, got {names}")
        X = check_array(X_ref, name="X_ref", min_rows=2)
        y = check_labels(y_ref, X.shape[0], "y_ref")
        for key in list(self._learned()):
            delattr(self, key)
        each = self.fpr / len(names)
        self._components = [self._make(n, each).fit(X, y, X_cal, y_cal) for n in names]
        self.n_features_in_ = int(X.shape[1])
        self.classes_ = np.unique(y)
        self.threshold_ = float(-np.log(self.fpr))
        # calibration_scores_ keeps the contract of the family: the combined score of the
        # first signal's calibration records is not available for windowed signals, so the
        # tail probability of a record is its Bonferroni-adjusted smallest signal tail
        self.calibration_scores_ = np.empty(0)
        return self

    def _tails(self, X: FloatArray, labels: IntArray) -> FloatArray:
        return np.vstack([
            tail_probability(c.calibration_scores_, c.score(X, labels)) for c in self._components
        ])

    def _score(self, X: FloatArray, labels: IntArray) -> FloatArray:
        m = len(self._components)
        return -np.log(np.minimum(1.0, m * self._tails(X, labels).min(axis=0)))

    def signal_flags(self, X: ArrayLike, labels: ArrayLike) -> dict[str, NDArray[np.bool_]]:
        """Which signal flags which record (evidence)."""
        self._check_fitted()
        Xv = check_array(X, dim=self.n_features_in_)
        lab = check_labels(labels, Xv.shape[0], "labels")
        return {
            n: c.score(Xv, lab) > c.threshold_
            for n, c in zip(self.signals, self._components, strict=True)
        }

    def predict(self, X: ArrayLike, labels: ArrayLike) -> PoisoningResult:
        scores = self.score(X, labels)
        Xv = check_array(X, dim=self.n_features_in_)
        m = len(self._components)
        tail = np.minimum(1.0, m * self._tails(Xv, check_labels(labels, Xv.shape[0], "labels"))
                          .min(axis=0))
        votes = None
        for c in self._components:
            if isinstance(c, LabelConsistencyDetector):
                votes = c._neighbour_class(Xv)
        return window_result(scores, self.threshold_, self.calibration_scores_, self.fpr,
                             self.name, votes, tail)

    def _extra_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays: dict[str, NDArray[Any]] = {}
        metas = []
        for i, det in enumerate(getattr(self, "_components", [])):
            a, m = det.get_state()
            arrays.update({f"{i}.{k}": v for k, v in a.items()})
            metas.append(m)
        return arrays, {"components": metas}

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        comps: list[Detector] = []
        for i, m in enumerate(meta.get("components", [])):
            prefix = f"{i}."
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            comps.append(load_state(sub, m))
        self._components = comps  # type: ignore[assignment]
