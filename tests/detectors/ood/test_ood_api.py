"""The family API on every registered ``ood.*`` detector: errors, state, purity, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detectors.base import NotFittedError, load, registered
from detectors.ood import LogitDetector, OODDetector, OODResult, RelativeMahalanobisDetector

NAMES = sorted(n for n in registered() if n.startswith("ood."))


def _make(name: str) -> OODDetector:
    det = registered()[name]()
    assert isinstance(det, OODDetector)
    return det


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    X = rng.normal(size=(600, 5)) + 3.0 * np.eye(5)[y]
    return X, y, rng.normal(size=(40, 5)) * 3.0


def test_the_family_is_complete() -> None:
    assert set(NAMES) >= {
        "ood.knn",
        "ood.mahalanobis",
        "ood.relative_mahalanobis",
        "ood.energy",
        "ood.msp",
        "ood.maxlogit",
    }


@pytest.mark.parametrize("name", NAMES)
def test_predict_result(name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    X, y, Q = data
    det = _make(name).fit(X, y)
    res = det.predict(Q)
    assert isinstance(res, OODResult) and res.detector == name
    assert res.scores.shape == res.is_ood.shape == res.tail_prob.shape == (40,)
    np.testing.assert_array_equal(res.is_ood, res.scores > det.threshold_)
    assert ((res.tail_prob > 0) & (res.tail_prob <= 1)).all()
    assert res.to_dict()["threshold"] == det.threshold_
    with pytest.raises(AttributeError):
        res.threshold = 0.0  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_errors_name_the_problem(
    name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    X, y, Q = data
    det = _make(name)
    with pytest.raises(NotFittedError, match="not fitted"):
        det.score(Q)
    det.fit(X, y)
    bad = Q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        det.score(bad)
    with pytest.raises(ValueError, match="4 features, the detector was fitted on 5"):
        det.predict(Q[:, :4])
    with pytest.raises(ValueError, match="2-D"):
        det.score(Q[0])
    with pytest.raises(ValueError, match="y must have shape"):
        _make(name).fit(X, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        _make(name).fit(np.where(np.arange(5) == 1, np.inf, X))


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips(
    name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    X, y, Q = data
    det = _make(name).fit(X, y)
    clone = type(det).from_state(*det.get_state())
    np.testing.assert_array_equal(clone.score(Q), det.score(Q))
    det.save(tmp_path / "det.npz")
    loaded = load(tmp_path / "det.npz")
    assert type(loaded) is type(det) and loaded.get_params() == det.get_params()
    a, b = loaded.predict(Q), det.predict(Q)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a.tail_prob, b.tail_prob)
    assert a.threshold == b.threshold


@pytest.mark.parametrize("name", NAMES)
def test_predict_is_pure_and_refit_is_deterministic(
    name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    X, y, Q = data
    det = _make(name).fit(X, y)
    arrays, meta = det.get_state()
    before = {k: v.copy() for k, v in arrays.items()}
    det.predict(Q)
    after, meta_after = det.get_state()
    assert meta_after == meta
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)
    again = _make(name).fit(X, y)
    np.testing.assert_array_equal(again.score(Q), det.score(Q))
    det.fit(X)  # refit without labels starts from a clean slate
    assert det.threshold_ == _make(name).fit(X).threshold_


@pytest.mark.parametrize("name", NAMES)
def test_far_from_the_reference_scores_higher(
    name: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    X, y, _ = data
    det = _make(name).fit(X, y)
    noise = np.random.default_rng(1).normal(size=(200, 5)) * 0.1
    if isinstance(det, LogitDetector):
        far = noise  # flat logits: no class stands out
    elif isinstance(det, RelativeMahalanobisDetector):
        # away from every class along a direction in which the classes differ (by design it
        # ignores directions without between-class variance)
        far = noise + np.array([-6.0, 6.0, 0.0, 0.0, 0.0])
    else:
        far = noise + np.array([0.0, 0.0, 0.0, 6.0, 6.0])  # dimensions no class points along
    assert np.median(det.score(far)) > np.quantile(det.score(X), 0.99)
