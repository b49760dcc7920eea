"""repwatch detectors: pure numpy/scipy algorithms on embeddings (no I/O).

Families: :mod:`detectors.drift`, :mod:`detectors.ood`, :mod:`detectors.adversarial`,
:mod:`detectors.poisoning`. The shared contract is in :mod:`detectors.base`.
"""

from detectors.base import Detector, NotFittedError, load, load_state, registered

__all__ = ["Detector", "NotFittedError", "load", "load_state", "registered"]
