"""Chi-square test on class predictions: vs scipy, unseen classes, calibration, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import stats

from detectors.base import NotFittedError
from detectors.drift import ChiSquareDrift

P = [0.4, 0.3, 0.2, 0.1]


def test_statistic_and_p_value_match_scipy() -> None:
    rng = np.random.default_rng(1)
    ref, win = rng.choice(4, 500, p=P), rng.choice(4, 200, p=[0.3, 0.3, 0.3, 0.1])
    res = ChiSquareDrift().fit(ref).predict(win)
    table = np.array([np.bincount(ref, minlength=4), np.bincount(win, minlength=4)])
    expected = stats.chi2_contingency(table, correction=False)
    assert res.statistic == pytest.approx(expected.statistic)
    assert res.p_value == pytest.approx(expected.pvalue)
    assert res.effect_size == pytest.approx(np.sqrt(expected.statistic / 700))
    assert res.threshold == pytest.approx(stats.chi2.isf(0.05, 3))


def test_unseen_class_in_window_is_a_new_column() -> None:
    rng = np.random.default_rng(2)
    det = ChiSquareDrift().fit(rng.choice(3, 300))
    res = det.predict(np.r_[rng.choice(3, 90), np.full(10, 7)])
    assert res.is_drift and res.p_value < 1e-4


def test_accepts_column_vectors_and_integral_floats() -> None:
    rng = np.random.default_rng(3)
    y = rng.choice(3, 100)
    det = ChiSquareDrift().fit(y[:, None])
    assert det.predict(y.astype(float)).statistic == det.predict(y).statistic == 0.0


def test_calibration_under_no_drift(calib: Any) -> None:
    p = calib.null_p_values(
        lambda i: ChiSquareDrift(),
        lambda rng: (rng.choice(4, 200, p=P), rng.choice(4, 100, p=P)),
    )
    calib.assert_calibrated(p)


def test_power() -> None:
    rng = np.random.default_rng(4)
    det = ChiSquareDrift().fit(rng.choice(4, 1000, p=P))
    uniform = [0.25, 0.25, 0.25, 0.25]
    hits = sum(det.predict(rng.choice(4, 300, p=uniform)).is_drift for _ in range(20))
    assert hits >= 19


def test_errors_name_the_problem() -> None:
    with pytest.raises(NotFittedError):
        ChiSquareDrift().predict(np.arange(10))
    det = ChiSquareDrift().fit(np.arange(20) % 3)
    with pytest.raises(ValueError, match="integer class ids"):
        det.predict(np.full(10, 0.5))
    with pytest.raises(ValueError, match="argmax"):
        det.predict(np.ones((10, 3)))
    with pytest.raises(ValueError, match="at least 5"):
        det.predict(np.arange(3))
