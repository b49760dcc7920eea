"""Adversarial inputs per record, and black-box query attacks per client.

Per record (:class:`Views` of SSL embedding, prediction and penultimate features in;
:class:`AdversarialResult` out): :class:`DisagreementDetector` (``adversarial.disagreement``,
SSL kNN vote against the model's prediction), :class:`LIDDetector` (``adversarial.lid``),
:class:`CombinedAdversarialDetector` (``adversarial.combined``: those plus class-conditional
Mahalanobis and SSL kNN distance, combined through clean-data tail probabilities).
Per client: :class:`QueryAttackDetector` (``adversarial.query``) with the content hashes of
:mod:`detectors.adversarial.hashing`.
"""

from detectors.adversarial.base import AdversarialDetector, AdversarialResult, Views
from detectors.adversarial.combined import CombinedAdversarialDetector
from detectors.adversarial.disagreement import DisagreementDetector
from detectors.adversarial.hashing import content_digest, window_hashes
from detectors.adversarial.lid import LIDDetector
from detectors.adversarial.query import ClientAlert, QueryAttackDetector, QueryResult

__all__ = [
    "AdversarialDetector",
    "AdversarialResult",
    "ClientAlert",
    "CombinedAdversarialDetector",
    "DisagreementDetector",
    "LIDDetector",
    "QueryAttackDetector",
    "QueryResult",
    "Views",
    "content_digest",
    "window_hashes",
]
