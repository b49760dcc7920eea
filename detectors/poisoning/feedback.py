"""One suspicion score per feedback record from label consistency, spectral signatures, bursts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from detectors.base import Detector, check_array, load_state, register
from detectors.ood.calibration import conformal_threshold, tail_probability
from detectors.poisoning.base import (
    FloatArray,
    IntArray,
    PoisoningDetector,
    PoisoningResult,
    check_labels,
    clean_window_scores,
    window_result,
)
from detectors.poisoning.burst import BurstDetector
from detectors.poisoning.label_consistency import LabelConsistencyDetector
from detectors.poisoning.spectral import SpectralSignatureDetector

SIGNALS = ("label_consistency", "spectral", "burst")
#: How the signals are combined (state layout): min tail, one threshold from clean windows.
COMBINATION = "min-p/joint-1"


@register("poisoning.feedback")
class FeedbackPoisoningDetector(PoisoningDetector):
    """Calibrated poisoning signals combined into one test at ``fpr`` (min-p).

    Each signal turns a record's score into a conformal tail probability against its own
    clean calibration scores; the record's combined score is ``-log`` of the smallest of
    these tails, and one threshold on it is calibrated at ``fpr`` on clean windows of
    ``window_size`` records drawn from the trusted data. A user does not know which attack
    comes, so the combination is judged as one detector: its clean flag rate is ``fpr``
    whatever the correlation of the signals (a union of ``m`` tests at ``fpr / m`` each spends
    the budget blindly, and its per-signal thresholds sit at the edge of a small calibration
    set). The windowed signals (spectral signatures, bursts) score a record against the rest
    of its window, so they and the joint threshold calibrate on windows drawn from the
    reference and the held-out records together: a larger pool steadies thresholds that a
    few hundred held-out records leave to chance. Label consistency calibrates on the
    held-out records only (a reference record is its own neighbour); its in-sample scores in
    the joint pool are low, which leaves it a little more than its share of ``fpr``.

    A signal with ``n`` calibration scores has no tail below ``1 / (n + 1)``: keep ``fpr``
    above about ``m / (n + 1)`` for the smallest ``n``, or that signal cannot reach the
    threshold. The result's ``neighbour_class`` is the class the trusted reference votes
    for; :meth:`signal_flags` says which signal crossed the threshold.

    Parameters
    ----------
    signals : sequence of str
        Any of ``"label_consistency"``, ``"spectral"``, ``"burst"``.
    window_size : int
        Records per feedback window (the windowed signals and the joint threshold calibrate
        on clean windows of this size).
    fpr : float
        Target false-positive rate per clean record (all signals together).
    calibration_fraction, seed
        The hold-out used when ``fit`` gets no ``X_cal``, and the signals' seed.
    n_windows : int
        Clean windows drawn to calibrate the joint threshold.

    Attributes
    ----------
    threshold_ : float
        Threshold on the combined score ``-log(min tail)``, calibrated at ``fpr``.
    calibration_scores_ : ndarray
        Sorted combined scores of the clean calibration windows.

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
    (1.0, 0.029)
    """

    _components: list[PoisoningDetector]

    def __init__(
        self,
        signals: Sequence[str] = SIGNALS,
        window_size: int = 500,
        fpr: float = 0.01,
        calibration_fraction: float = 0.3,
        seed: int | None = 0,
        n_windows: int = 40,
    ) -> None:
        self.signals = signals
        self.window_size = window_size
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.n_windows = n_windows

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
        if self.n_windows < 1:
            raise ValueError(f"n_windows must be at least 1, got {self.n_windows}")
        if X_cal is None:  # the signals hold out their own share of the reference
            pool, y_pool = X, y
        else:
            Xc = check_array(X_cal, name="X_cal", dim=X.shape[1])
            yc = check_labels(y_cal, Xc.shape[0], "y_cal")
            pool, y_pool = np.vstack([X, Xc]), np.concatenate([y, yc])
        each = self.fpr  # the signals' own thresholds serve standalone use only
        self._components = []
        for n in names:
            det = self._make(n, each)
            if isinstance(det, LabelConsistencyDetector):
                det.fit(X, y, X_cal, y_cal)
            else:  # windowed: calibrate on windows of all the trusted records
                det.fit(X, y, pool, y_pool)
            self._components.append(det)
        self.n_features_in_ = int(X.shape[1])
        self.classes_ = np.unique(y)
        cal = np.sort(clean_window_scores(
            self._score, pool, y_pool, self.window_size, self.n_windows, self.seed
        ))
        self.calibration_scores_ = cal
        self.threshold_ = conformal_threshold(cal, self.fpr)
        return self

    def _tails(self, X: FloatArray, labels: IntArray) -> FloatArray:
        return np.vstack([
            tail_probability(c.calibration_scores_, c.score(X, labels)) for c in self._components
        ])

    def _score(self, X: FloatArray, labels: IntArray) -> FloatArray:
        return -np.log(self._tails(X, labels).min(axis=0))

    def signal_flags(self, X: ArrayLike, labels: ArrayLike) -> dict[str, NDArray[np.bool_]]:
        """Which signal takes which record over the combined threshold (evidence)."""
        self._check_fitted()
        Xv = check_array(X, dim=self.n_features_in_)
        tails = self._tails(Xv, check_labels(labels, Xv.shape[0], "labels"))
        return {n: -np.log(t) > self.threshold_ for n, t in zip(self.signals, tails, strict=True)}

    def predict(self, X: ArrayLike, labels: ArrayLike) -> PoisoningResult:
        scores = self.score(X, labels)
        Xv = check_array(X, dim=self.n_features_in_)
        votes = None
        for c in self._components:
            if isinstance(c, LabelConsistencyDetector):
                votes = c._neighbour_class(Xv)
        return window_result(scores, self.threshold_, self.calibration_scores_, self.fpr,
                             self.name, votes)

    def _extra_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays: dict[str, NDArray[Any]] = {}
        metas = []
        for i, det in enumerate(getattr(self, "_components", [])):
            a, m = det.get_state()
            arrays.update({f"{i}.{k}": v for k, v in a.items()})
            metas.append(m)
        return arrays, {"components": metas, "combination": COMBINATION}

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        if meta.get("combination") != COMBINATION:
            raise ValueError(
                f"poisoning.feedback state combines its signals as "
                f"{meta.get('combination', 'a Bonferroni union')!r}, this repwatch as "
                f"{COMBINATION!r}: refit the detector on the trusted reference"
            )
        comps: list[Detector] = []
        for i, m in enumerate(meta.get("components", [])):
            prefix = f"{i}."
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            comps.append(load_state(sub, m))
        self._components = comps  # type: ignore[assignment]
