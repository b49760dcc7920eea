"""Complementary adversarial signals combined through their clean-data tail probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.adversarial.base import AdversarialDetector, FloatArray, IntArray, Views
from detectors.adversarial.disagreement import DisagreementDetector
from detectors.adversarial.lid import LIDDetector
from detectors.base import Detector, load_state, register
from detectors.ood.calibration import tail_probability
from detectors.ood.knn import KNNDetector
from detectors.ood.mahalanobis import MahalanobisDetector

#: signal name -> (view it reads, needs labels at fit)
SIGNALS: dict[str, tuple[str, bool]] = {
    "disagreement": ("embedding", True),  # SSL kNN vote against the model's prediction
    "mahalanobis": ("features", True),  # class-conditional, penultimate features
    "lid": ("features", False),  # local intrinsic dimensionality, penultimate features
    "knn": ("embedding", False),  # distance to the SSL reference (off-manifold records)
}
COMBINE = ("fisher", "min")


def _component(name: str, seed: int | None) -> Detector:
    # The components' own thresholds are never used (the combination is calibrated on the
    # outer clean calibration set); the OOD components hold out little and calibrate loosely.
    if name == "disagreement":
        return DisagreementDetector(k=5, seed=seed)
    if name == "lid":
        return LIDDetector(k=20, view="features", seed=seed)
    if name == "mahalanobis":
        return MahalanobisDetector(fpr=0.2, calibration_fraction=0.1, seed=seed, n_jobs=1)
    if name == "knn":
        return KNNDetector(k=1, fpr=0.2, calibration_fraction=0.1, seed=seed, n_jobs=1)
    raise ValueError(f"unknown signal {name!r}; choose from {sorted(SIGNALS)}")


@register("adversarial.combined")
class CombinedAdversarialDetector(AdversarialDetector):
    """Per-record adversarial score from complementary signals, calibrated on clean data only.

    No single signal is enough on the bundled digits model: the SSL-vs-model disagreement
    fails where the perturbation also moves the SSL embedding, distances in the model's
    feature space fail where the attack lands deep inside the wrong class. Each signal is
    turned into a conformal tail probability against clean held-out records, and the tail
    probabilities are combined (``-log min p``, or Fisher's ``-2 sum log p``). The combined
    statistic's threshold is calibrated on the same clean records with leave-one-out tail
    probabilities, so that calibration records are treated like future ones. Attacks are
    never seen at fit.

    Parameters
    ----------
    signals : sequence of str
        Any of ``"disagreement"`` (:class:`DisagreementDetector`, SSL embedding +
        prediction), ``"mahalanobis"`` (class-conditional Mahalanobis on the penultimate
        features), ``"lid"`` (:class:`LIDDetector` on the penultimate features) and ``"knn"``
        (kNN distance to the SSL reference).
    combine : {"min", "fisher"}
        How tail probabilities are combined: ``-log min p`` flags a record that any one signal
        finds extreme (the signals work in different regimes, so this is the default);
        Fisher's ``-2 sum log p`` rewards several moderately small ones.
    fpr : float
        Target false-positive rate of ``threshold_`` on clean records.
    calibration_fraction, seed
        The hold-out used when ``fit`` gets no ``calibration`` set, and the components' seed.

    Attributes
    ----------
    signal_calibration_ : ndarray of shape (n_signals, n_cal)
        Each signal's sorted clean calibration scores.
    threshold_ : float
        Threshold of the combined statistic at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = 4.0 * np.eye(3, 6)
    >>> y = rng.integers(0, 3, 3000)
    >>> Z = rng.normal(size=(3000, 6)) + centres[y]
    >>> F = rng.normal(size=(3000, 6)) + centres[y]
    >>> ref = Views(Z[:2000], prediction=y[:2000], features=F[:2000])
    >>> cal = Views(Z[2000:2500], prediction=y[2000:2500], features=F[2000:2500])
    >>> det = CombinedAdversarialDetector(fpr=0.05).fit(ref, y[:2000], calibration=cal)
    >>> clean = det.predict(Views(Z[2500:], prediction=y[2500:], features=F[2500:]))
    >>> flipped = (y[2500:] + 1) % 3  # the model now predicts another class
    >>> attack = Views(Z[2500:], prediction=flipped, features=F[2500:] + 3 * np.eye(3, 6)[flipped])
    >>> round(clean.adversarial_rate, 2), round(det.predict(attack).adversarial_rate, 2)
    (0.05, 1.0)
    >>> sorted(clean.signals)
    ['disagreement', 'knn', 'lid', 'mahalanobis']
    """

    signal_calibration_: FloatArray
    _components: list[Detector]

    def __init__(
        self,
        signals: Sequence[str] = ("disagreement", "mahalanobis", "lid", "knn"),
        combine: str = "min",
        fpr: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        self.signals = signals
        self.combine = combine
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _fit_model(self, ref: Views, y: IntArray) -> None:
        names = list(self.signals)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"signals must be distinct names from {sorted(SIGNALS)}, got {names}")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        comps = []
        for name in names:
            det = _component(name, self.seed)
            view, labelled = SIGNALS[name]
            if isinstance(det, AdversarialDetector):
                det.fit_reference(ref, y)
            else:
                det.fit(ref.need(view, self.name), y if labelled else None)  # type: ignore[attr-defined]
            comps.append(det)
        self._components = comps

    def _signal_scores(self, views: Views) -> FloatArray:
        cols = []
        for name, det in zip(self.signals, self._components, strict=True):
            if isinstance(det, AdversarialDetector):
                cols.append(det.score(views))
            else:
                cols.append(det.score(views.need(SIGNALS[name][0], self.name)))  # type: ignore[attr-defined]
        return np.vstack(cols)

    def _statistic(self, tails: FloatArray) -> FloatArray:
        if self.combine == "fisher":
            out: FloatArray = -2.0 * np.log(tails).sum(axis=0)
            return out
        return -np.log(tails.min(axis=0))

    def _calibration_scores(self, cal: Views) -> FloatArray:
        S = self._signal_scores(cal)
        n = S.shape[1]
        self.signal_calibration_ = np.sort(S, axis=1)
        # leave-one-out tail: (1 + #{j != i: s_j >= s_i}) / n = #{j: s_j >= s_i} / n
        tails = np.vstack([
            (n - np.searchsorted(srt, s, side="left")) / n
            for srt, s in zip(self.signal_calibration_, S, strict=True)
        ])
        return self._statistic(tails)

    def signal_tails(self, views: Views) -> dict[str, FloatArray]:
        """Tail probability of each signal per record (the evidence of :meth:`predict`)."""
        self._check_fitted()
        S = self._signal_scores(views)
        return {
            name: tail_probability(srt, s)
            for name, srt, s in zip(self.signals, self.signal_calibration_, S, strict=True)
        }

    def _score(self, views: Views) -> FloatArray:
        return self._statistic(np.vstack(list(self.signal_tails(views).values())))

    def _signals(self, views: Views) -> dict[str, FloatArray]:
        return self.signal_tails(views)

    def _ssl_class(self, views: Views) -> IntArray | None:
        for det in self._components:
            if isinstance(det, DisagreementDetector):
                return det._ssl_class(views)
        return None

    # --- state: the components nest their own arrays + JSON ---------------------------------
    def _extra_state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        arrays: dict[str, NDArray[Any]] = {}
        metas = []
        for i, det in enumerate(getattr(self, "_components", [])):
            a, m = det.get_state()
            arrays.update({f"{i}.{k}": v for k, v in a.items()})
            metas.append(m)
        return arrays, {"components": metas}

    def _load_extra_state(self, arrays: dict[str, NDArray[Any]], meta: dict[str, Any]) -> None:
        comps = []
        for i, m in enumerate(meta.get("components", [])):
            prefix = f"{i}."
            sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            comps.append(load_state(sub, m))
        self._components = comps
