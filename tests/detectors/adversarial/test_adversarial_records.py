"""Per-record adversarial detectors: exact scores, calibration at the target FPR, evidence."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.adversarial import (
    CombinedAdversarialDetector,
    DisagreementDetector,
    LIDDetector,
    Views,
)
from detectors.adversarial.combined import SIGNALS

CENTRES = 3.0 * np.eye(4, 8)


def _views(rng: np.random.Generator, n: int, flip: bool = False) -> tuple[Views, np.ndarray]:
    y = rng.integers(0, 4, n)
    Z = rng.normal(size=(n, 8)) + CENTRES[y]
    F = rng.normal(size=(n, 8)) + CENTRES[y]
    pred = (y + 1) % 4 if flip else y
    return Views(Z, pred, F), y


def test_disagreement_score_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    ref, y = _views(rng, 300)
    det = DisagreementDetector(k=3).fit(ref, y)
    q, _ = _views(rng, 20, flip=True)
    R = det.reference_
    Q = q.embedding / np.linalg.norm(q.embedding, axis=1, keepdims=True)
    expected = []
    for qi, p in zip(Q, q.prediction, strict=True):
        d = np.linalg.norm(R - qi, axis=1)
        kth = [np.sort(d[det.ref_class_ == c])[2] for c in range(4)]
        other = min(kth[c] for c in range(4) if c != p)
        expected.append(np.log(kth[p] + 1e-6) - np.log(other + 1e-6))
    np.testing.assert_allclose(det.score(q), expected, rtol=1e-9, atol=1e-9)
    res = det.predict(q)
    assert res.ssl_class is not None and res.ssl_class.shape == (20,)


def test_lid_matches_the_mle_formula() -> None:
    rng = np.random.default_rng(1)
    F = rng.normal(size=(200, 4))
    det = LIDDetector(k=5, view="features").fit(Views(np.zeros((200, 1)), features=F),
                                                 np.zeros(200, dtype=int))
    q = rng.normal(size=(3, 4))
    got = det.score(Views(np.zeros((3, 1)), features=q))
    for g, x in zip(got, q, strict=True):
        d = np.sort(np.linalg.norm(det.reference_ - x, axis=1))[:5]
        assert g == pytest.approx(-1.0 / np.mean(np.log(d / d[-1])), rel=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DisagreementDetector(fpr=0.05),
        lambda: LIDDetector(fpr=0.05),
        lambda: CombinedAdversarialDetector(fpr=0.05),
        lambda: CombinedAdversarialDetector(fpr=0.05, combine="fisher"),
    ],
    ids=["disagreement", "lid", "combined-min", "combined-fisher"],
)
def test_clean_flag_rate_is_within_one_point_of_the_target(make) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    ref, y = _views(rng, 800)
    cal, _ = _views(rng, 4000)
    det = make().fit(ref, y, calibration=cal)
    test, _ = _views(rng, 8000)
    rate = det.predict(test).adversarial_rate
    # 4000 calibration + 8000 test records: sd of the rate about 0.004
    assert abs(rate - 0.05) <= 0.01, rate


def test_combined_flags_flipped_predictions_and_gives_evidence() -> None:
    rng = np.random.default_rng(3)
    ref, y = _views(rng, 2000)
    cal, _ = _views(rng, 600)
    det = CombinedAdversarialDetector(fpr=0.01).fit(ref, y, calibration=cal)
    # only the disagreement signal sees this attack (the features did not move): the
    # default min-combination is not diluted by the three uninformative signals
    attacked, y_true = _views(rng, 300, flip=True)
    res = det.predict(attacked)
    assert res.adversarial_rate > 0.8
    assert set(res.signals) == set(SIGNALS)
    assert res.ssl_class is not None and (res.ssl_class == y_true).mean() > 0.85
    # the leave-one-out calibration statistic is the detector's own calibration scores
    assert det.calibration_scores_.shape == (600,)


def test_combined_leave_one_out_tails_match_a_direct_count() -> None:
    rng = np.random.default_rng(4)
    ref, y = _views(rng, 500)
    cal, _ = _views(rng, 50)
    det = CombinedAdversarialDetector(signals=("disagreement", "lid"), combine="fisher", fpr=0.1)
    det.fit(ref, y, calibration=cal)
    S = det._signal_scores(cal)
    tails = np.array([[np.sum(np.delete(s, i) >= s[i]) + 1 for i in range(50)] for s in S]) / 50
    expected = np.sort(-2 * np.log(tails).sum(axis=0))
    np.testing.assert_allclose(det.calibration_scores_, expected)


def test_missing_view_and_bad_input_name_the_fix() -> None:
    rng = np.random.default_rng(5)
    ref, y = _views(rng, 200)
    det = DisagreementDetector().fit(ref, y)
    with pytest.raises(ValueError, match="prediction"):
        det.score(Views(ref.embedding))
    with pytest.raises(ValueError, match="7 dims"):
        det.score(Views(np.zeros((2, 7)), np.zeros(2, dtype=int)))
    with pytest.raises(ValueError, match="integer class ids"):
        Views(np.zeros((2, 8)), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        Views(np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match="unknown signal"):
        CombinedAdversarialDetector(signals=("nope",)).fit(ref, y)
    with pytest.raises(TypeError, match="Views"):
        det.score(ref.embedding)  # type: ignore[arg-type]


def test_a_prediction_of_a_class_the_reference_lacks_scores_highest() -> None:
    rng = np.random.default_rng(6)
    ref, y = _views(rng, 400)
    det = DisagreementDetector().fit(ref, y)
    q = Views(ref.embedding[:5], np.full(5, 99))
    assert (det.score(q) > det.threshold_).all()
