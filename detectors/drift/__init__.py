"""Drift detectors on embeddings: batch two-sample tests and sequential change detection.

======================  ================================  =========================================
name                    class                             what it tests
======================  ================================  =========================================
``drift.mmd``           :class:`MMDDrift`                 kernel two-sample test (permutation null)
``drift.ks``            :class:`KSDrift`                  per-feature KS, Bonferroni / BH
``drift.chi2``          :class:`ChiSquareDrift`           class-prediction mix (chi-square)
``drift.classifier``    :class:`ClassifierDrift`          held-out domain-classifier AUC
``drift.mmd_online``    :class:`OnlineMMDDrift`           sequential MMD calibrated to an ERT
======================  ================================  =========================================

Batch detectors return :class:`DriftResult`; the online detector :class:`OnlineDriftResult`.
"""

from detectors.drift.base import DriftResult, OnlineDriftResult
from detectors.drift.chi2 import ChiSquareDrift
from detectors.drift.classifier import ClassifierDrift
from detectors.drift.ks import KSDrift
from detectors.drift.mmd import MMDDrift
from detectors.drift.online_mmd import OnlineMMDDrift

__all__ = [
    "ChiSquareDrift",
    "ClassifierDrift",
    "DriftResult",
    "KSDrift",
    "MMDDrift",
    "OnlineDriftResult",
    "OnlineMMDDrift",
]
