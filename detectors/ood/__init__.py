"""Per-record out-of-distribution detectors on embeddings and logits.

Embeddings: :class:`KNNDetector` (``ood.knn``), :class:`MahalanobisDetector`
(``ood.mahalanobis``), :class:`RelativeMahalanobisDetector` (``ood.relative_mahalanobis``).
Logits: :class:`EnergyDetector` (``ood.energy``), :class:`MSPDetector` (``ood.msp``),
:class:`MaxLogitDetector` (``ood.maxlogit``). All return :class:`OODResult` from ``predict``;
higher scores are more anomalous; thresholds are calibrated on held-out reference data.
"""

from detectors.ood.base import LogitDetector, OODDetector, OODResult
from detectors.ood.energy import EnergyDetector
from detectors.ood.knn import KNNDetector
from detectors.ood.mahalanobis import MahalanobisDetector
from detectors.ood.maxlogit import MaxLogitDetector
from detectors.ood.msp import MSPDetector
from detectors.ood.relative_mahalanobis import RelativeMahalanobisDetector

__all__ = [
    "EnergyDetector",
    "KNNDetector",
    "LogitDetector",
    "MSPDetector",
    "MahalanobisDetector",
    "MaxLogitDetector",
    "OODDetector",
    "OODResult",
    "RelativeMahalanobisDetector",
]
