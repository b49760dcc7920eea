"""Split-conformal calibration shared by every OOD detector.

A detector is fitted on one part of the reference and scores the held-out rest; those
*calibration scores* are exchangeable with the scores of future in-distribution records. From
them:

* the **tail probability** of a score ``s`` is the conformal p-value
  ``(1 + #{cal >= s}) / (n_cal + 1)`` (the ``+1`` counts the record itself, so under
  exchangeability ``P(tail <= a) <= a`` for every ``a``);
* the **threshold** at a target false-positive rate ``fpr`` is the smallest calibration score
  ``t`` with ``(1 + #{cal > t}) / (n_cal + 1) <= fpr``: the order statistic of rank
  ``ceil((n_cal + 1) * (1 - fpr))``. A record is flagged when ``score > threshold``; with no ties
  this is exactly ``tail <= fpr``, and the flagged fraction of in-distribution data lies in
  ``[fpr - 1/(n_cal + 1), fpr]`` in expectation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def calibration_split(
    n: int, fraction: float, seed: int | None, max_rows: int | None = None
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Seeded split of ``n`` reference rows into ``(fit_idx, cal_idx)``, both sorted.

    At least one row goes to each side; ``fraction`` is the share held out for calibration,
    at most ``max_rows`` rows (the rest of the share is fitted on). The cap keeps calibration
    linear in ``n`` for detectors whose scoring cost grows with the fitted reference (kNN:
    ``0.2 n`` queries against ``0.8 n`` rows is quadratic); the conformal guarantee needs only
    calibration rows the model did not see, not a fixed share of them.
    """
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_calibration must be >= 1 or None, got {max_rows}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(
            f"the reference has {n} rows; at least 2 are needed to fit and to hold out "
            "calibration data"
        )
    n_cal = min(n - 1, max(1, round(fraction * n)), max_rows or n)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_cal:]), np.sort(perm[:n_cal])


def conformal_threshold(cal_sorted: FloatArray, fpr: float) -> float:
    """Score threshold at the target false-positive rate from sorted calibration scores.

    When there are too few calibration scores for ``fpr`` (``n_cal < 1/fpr - 1``) the exact
    conformal threshold is infinite; the largest calibration score is returned instead, with a
    warning that names the fix.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    n = cal_sorted.shape[0]
    rank = math.ceil((n + 1) * (1.0 - fpr))  # 1-based order statistic
    if rank > n:
        warnings.warn(
            f"{n} calibration scores cannot certify fpr={fpr}: at least "
            f"{math.ceil(1.0 / fpr) - 1} are needed; the threshold is the largest calibration "
            "score. Use a larger reference or a larger calibration_fraction.",
            UserWarning,
            stacklevel=3,
        )
        rank = n
    return float(cal_sorted[rank - 1])


def tail_probability(cal_sorted: FloatArray, scores: FloatArray) -> FloatArray:
    """Conformal p-value ``(1 + #{cal >= s}) / (n_cal + 1)`` of each score."""
    n = cal_sorted.shape[0]
    n_below = np.searchsorted(cal_sorted, scores, side="left")
    return (1.0 + (n - n_below)) / (n + 1.0)
