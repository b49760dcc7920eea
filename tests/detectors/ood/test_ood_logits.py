"""Logit scores (energy, MSP, max-logit) against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from detectors.ood import EnergyDetector, MaxLogitDetector, MSPDetector


@pytest.fixture
def logits() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 3000)
    ref = rng.normal(size=(3000, 10)) + 5.0 * np.eye(10)[y]
    test = rng.normal(size=(500, 10)) * 30.0  # large magnitudes: the stable forms matter
    return ref, test


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_energy_matches_scipy(logits: tuple[np.ndarray, np.ndarray], t: float) -> None:
    ref, test = logits
    got = EnergyDetector(temperature=t).fit(ref).score(test)
    np.testing.assert_allclose(got, -t * logsumexp(test / t, axis=1), rtol=1e-12)


@pytest.mark.parametrize("t", [1.0, 1000.0])
def test_msp_matches_scipy(logits: tuple[np.ndarray, np.ndarray], t: float) -> None:
    ref, test = logits
    got = MSPDetector(temperature=t).fit(ref).score(test)
    np.testing.assert_allclose(got, -softmax(test / t, axis=1).max(axis=1), rtol=1e-12)


def test_maxlogit(logits: tuple[np.ndarray, np.ndarray]) -> None:
    ref, test = logits
    np.testing.assert_array_equal(MaxLogitDetector().fit(ref).score(test), -test.max(axis=1))


@pytest.mark.parametrize("cls", [EnergyDetector, MSPDetector, MaxLogitDetector])
def test_unconfident_logits_score_higher(logits: tuple[np.ndarray, np.ndarray], cls: type) -> None:
    ref, _ = logits
    det = cls().fit(ref)
    flat = np.random.default_rng(1).normal(size=(200, 10))  # no class stands out
    assert det.predict(flat).ood_rate > 0.8
    assert det.predict(ref).ood_rate <= 0.012


def test_logit_detectors_calibrate_on_the_whole_reference(
    logits: tuple[np.ndarray, np.ndarray],
) -> None:
    ref, _ = logits
    assert EnergyDetector().fit(ref).calibration_scores_.shape == (3000,)
