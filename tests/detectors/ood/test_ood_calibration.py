"""Calibration: conformal tail probabilities and the flagged fraction at the target FPR."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detectors.ood import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    MaxLogitDetector,
    MSPDetector,
    OODDetector,
    RelativeMahalanobisDetector,
)
from detectors.ood.calibration import calibration_split, conformal_threshold, tail_probability


def test_tail_probability_is_the_conformal_p_value() -> None:
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    got = tail_probability(cal, np.array([0.0, 2.0, 2.5, 4.0, 9.0]))
    # (1 + #{cal >= s}) / (n + 1)
    np.testing.assert_allclose(got, [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5])


def test_threshold_is_the_conformal_order_statistic() -> None:
    cal = np.arange(1.0, 200.0)  # 199 scores: rank ceil(200 * 0.95) = 190
    assert conformal_threshold(cal, 0.05) == 190.0
    flagged = tail_probability(cal, np.array([190.0, 190.5]))
    assert flagged[0] > 0.05 >= flagged[1]  # score > threshold  <=>  tail <= fpr


def test_too_few_calibration_scores_warn() -> None:
    with pytest.warns(UserWarning, match="at least 99"):
        assert conformal_threshold(np.arange(10.0), 0.01) == 9.0


def test_split_is_seeded_and_disjoint() -> None:
    a_fit, a_cal = calibration_split(1000, 0.25, 7)
    _, b_cal = calibration_split(1000, 0.25, 7)
    np.testing.assert_array_equal(a_cal, b_cal)
    assert len(a_cal) == 250 and not np.intersect1d(a_fit, a_cal).size
    assert not np.array_equal(a_cal, calibration_split(1000, 0.25, 8)[1])
    with pytest.raises(ValueError, match="calibration_fraction"):
        calibration_split(10, 1.0, 0)


Make = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _embeddings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 4, n)
    return rng.normal(size=(n, 12)) + 3.0 * np.eye(12)[y], y


def _logits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 6, n)
    return rng.normal(size=(n, 6)) * 1.5 + 3.0 * np.eye(6)[y], y


CASES = [
    (KNNDetector(k=10), _embeddings),
    (MahalanobisDetector(), _embeddings),
    (RelativeMahalanobisDetector(), _embeddings),
    (EnergyDetector(), _logits),
    (MSPDetector(), _logits),
    (MaxLogitDetector(), _logits),
]


@pytest.mark.parametrize(("det", "data"), CASES, ids=lambda c: getattr(c, "name", ""))
@pytest.mark.parametrize("fpr", [0.01, 0.05])
def test_flagged_fraction_on_held_out_data_is_the_target_fpr(
    det: OODDetector, data: Make, fpr: float
) -> None:
    rng = np.random.default_rng(11)
    X_ref, y_ref = data(20_000, rng)  # 4,000 calibration rows (all 20,000 for logits)
    X_new, _ = data(10_000, rng)
    det = type(det)(**{**det.get_params(), "fpr": fpr}).fit(X_ref, y_ref)
    res = det.predict(X_new)
    assert abs(res.ood_rate - fpr) <= 0.01, (det.name, res.ood_rate)
    # the tail probabilities of fresh in-distribution data are close to uniform
    assert abs(np.mean(res.tail_prob <= 0.5) - 0.5) < 0.03
