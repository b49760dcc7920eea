"""Poisoned feedback: labelled records meant for retraining, judged against trusted data.

:class:`LabelConsistencyDetector` (``poisoning.label_consistency``: kNN labels in SSL space),
:class:`SpectralSignatureDetector` (``poisoning.spectral``: per-class spectral signatures with
thresholds calibrated on clean windows), :class:`BurstDetector` (``poisoning.burst``:
near-duplicate clusters within a window) and their union :class:`FeedbackPoisoningDetector`
(``poisoning.feedback``). All return :class:`PoisoningResult`: a suspicion per record and the
window's poisoning rate.
"""

from detectors.poisoning.base import PoisoningDetector, PoisoningResult
from detectors.poisoning.burst import BurstDetector
from detectors.poisoning.feedback import FeedbackPoisoningDetector
from detectors.poisoning.label_consistency import LabelConsistencyDetector
from detectors.poisoning.spectral import SpectralSignatureDetector

__all__ = [
    "BurstDetector",
    "FeedbackPoisoningDetector",
    "LabelConsistencyDetector",
    "PoisoningDetector",
    "PoisoningResult",
    "SpectralSignatureDetector",
]
