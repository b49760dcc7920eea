"""The demo's shipped security inputs are what they claim, checked on onnxruntime (no torch):
PGD inputs within their budget flip the bundled classifier, probe sequences carry no exact
repeats, label flips are wrong and the backdoor pastes one trigger onto images of other classes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from monitor.demo.assets import SECURITY, SecurityAssets, load_security

EPS_PIXELS = 0.2 * 16 + 0.01  # PGD eps on [0, 1], on the 0..16 pixel scale, + float16 rounding


@pytest.fixture(scope="module")
def assets() -> SecurityAssets:
    return load_security()


@pytest.fixture(scope="module")
def digits() -> tuple[Any, ...]:
    import onnxruntime as ort

    from serving.encoders.models import DIGITS_CLASSIFIER, digits_data

    X, y, split = digits_data()
    sess = ort.InferenceSession(str(DIGITS_CLASSIFIER), providers=["CPUExecutionProvider"])
    return X, y, split, lambda A: sess.run(["logits"], {"input": A.astype(np.float32)})[0]


def test_the_assets_ship_small() -> None:
    assert SECURITY.stat().st_size < 100_000


def test_pgd_inputs_stay_within_budget_and_flip_the_classifier(assets, digits) -> None:
    X, y, split, logits = digits
    assert len(assets.pgd) >= 200
    assert set(assets.pgd_src) <= set(split["test"])  # images the models never trained on
    assert np.array_equal(assets.pgd_label, y[assets.pgd_src])
    delta = np.abs(assets.pgd - X[assets.pgd_src]).max(axis=1)
    assert delta.max() <= EPS_PIXELS and np.median(delta) > 1.0  # perturbed, within budget
    assert assets.pgd.min() >= 0 and assets.pgd.max() <= 16
    assert (logits(assets.pgd).argmax(axis=1) != assets.pgd_label).all()
    # ... while the clean images they came from are mostly classified right
    assert (logits(X[assets.pgd_src]).argmax(axis=1) == assets.pgd_label).mean() > 0.9


def test_probe_sequences_are_deduplicated_attack_queries(assets, digits) -> None:
    from detectors.adversarial import content_digest

    for name in ("probe_hsj", "probe_square"):
        Q = getattr(assets, name)
        assert len(Q) >= 50, name
        assert len(np.unique(content_digest(Q))) == len(Q), f"{name} repeats a query"
        assert Q.min() >= 0 and Q.max() <= 16
    # HopSkipJump walks the decision boundary: most consecutive queries are close together,
    # far closer than two distinct test images.
    X, _, split, _ = digits
    step = np.abs(np.diff(assets.probe_hsj, axis=0)).max(axis=1)
    test = X[split["test"]]
    between = np.abs(test[1:] - test[:-1]).max(axis=1)
    assert np.median(step) < 0.1 * np.median(between)


def test_poisoned_feedback_is_wrong_and_the_backdoor_is_one_pattern(assets, digits) -> None:
    X, y, split, _ = digits
    assert set(assets.flip_idx) <= set(split["test"])
    assert (assets.flip_label != y[assets.flip_idx]).all()
    assert assets.flip_label.min() >= 0 and assets.flip_label.max() <= 7
    target = assets.meta["backdoor_target"]
    assert (assets.backdoor_label == target).all() and (y[assets.backdoor_src] != target).all()
    changed = assets.backdoor != X[assets.backdoor_src]
    trigger = np.flatnonzero(changed.any(axis=0))
    assert 0 < len(trigger) <= 8  # a few pixels, the same ones on every image
    assert (assets.backdoor[:, trigger] == 16).all()
    assert not changed[:, np.setdiff1d(np.arange(64), trigger)].any()
