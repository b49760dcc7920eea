"""SSL-vs-model disagreement: do the record's SSL neighbours back the model's prediction?"""

from __future__ import annotations

import numpy as np

from detectors.adversarial._neighbors import LabelledNeighbours, class_margin
from detectors.adversarial.base import (
    AdversarialDetector,
    FloatArray,
    IntArray,
    Views,
    class_index,
)
from detectors.base import register


@register("adversarial.disagreement")
class DisagreementDetector(LabelledNeighbours, AdversarialDetector):
    """Disagreement between the model's prediction and a kNN vote in SSL embedding space.

    An attack on the task model moves its prediction; it need not move the record's SSL
    embedding (a separate network, trained without labels) out of the true class's
    neighbourhood. As in Deep k-NN credibility (Papernot & McDaniel, 2018), the labelled
    trusted reference votes on the record's class, here with a continuous score:

    ``score = log d_k(predicted class) - log d_k(nearest other class)``

    where ``d_k(c)`` is the distance (L2-normalised embeddings) to the ``k``-th nearest
    reference record of class ``c``. Clean records score well below 0; a record whose
    neighbours belong to another class than the prediction scores above 0.

    Parameters
    ----------
    k : int
        Neighbour rank within each class.
    normalize : bool
        L2-normalise embeddings first (cosine geometry, as the SSL objective trains).
    fpr : float
        Target false-positive rate of ``threshold_`` on clean records.
    calibration_fraction : float
        Share of the reference held out (seeded) when no ``calibration`` set is given.
    seed : int or None
        Seed of that split.

    Attributes
    ----------
    classes_ : ndarray of int
        Class labels of the reference.
    reference_ : ndarray of shape (n_ref, d)
        The (normalised) reference embeddings.
    ref_class_ : ndarray of int, shape (n_ref,)
        Index into ``classes_`` of each reference row.
    threshold_ : float
        Score threshold at ``fpr``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> centres = 3.0 * np.eye(4, 8)
    >>> y = rng.integers(0, 4, 2000)
    >>> ref = Views(rng.normal(size=(2000, 8)) + centres[y], prediction=y)
    >>> det = DisagreementDetector(fpr=0.05).fit(ref, y)
    >>> yt = rng.integers(0, 4, 400)
    >>> Z = rng.normal(size=(400, 8)) + centres[yt]
    >>> clean = det.predict(Views(Z, prediction=yt))
    >>> attacked = det.predict(Views(Z, prediction=(yt + 1) % 4))  # the prediction flipped
    >>> round(clean.adversarial_rate, 2), round(attacked.adversarial_rate, 2)
    (0.02, 0.98)
    >>> bool((attacked.ssl_class == yt).mean() > 0.9)  # the evidence names the true class
    True
    """

    reference_: FloatArray
    ref_class_: IntArray

    def __init__(
        self,
        k: int = 5,
        normalize: bool = True,
        fpr: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int | None = 0,
    ) -> None:
        self.k = k
        self.normalize = normalize
        self.fpr = fpr
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _fit_model(self, ref: Views, y: IntArray) -> None:
        self._fit_reference(ref.embedding, y)
        self.n_features_in_ = int(ref.embedding.shape[1])

    def _distances(self, views: Views) -> FloatArray:
        return self._class_distances(check_dim(views.embedding, self.n_features_in_))

    def _score(self, views: Views) -> FloatArray:
        pred = class_index(self.classes_, views.need("prediction", self.name))
        return class_margin(self._distances(views), pred)[0]

    def _ssl_class(self, views: Views) -> IntArray:
        nearest = self._distances(views).argmin(axis=1)
        return self.classes_[nearest].astype(np.int64)


def check_dim(X: FloatArray, dim: int) -> FloatArray:
    """``X`` itself, or an error naming both dimensions."""
    if X.shape[1] != dim:
        raise ValueError(f"embedding has {X.shape[1]} dims, the detector was fitted on {dim}")
    return X
