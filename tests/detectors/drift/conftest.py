"""Shared helpers for the drift tests: one BLAS thread and the calibration harness.

The calibration tests run ~1000 tiny fits each; multi-threaded BLAS on 300x300 matrices on a
shared 2-core machine is ~10x slower than one thread, so every drift test runs single-threaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from scipy import stats


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(1):
        yield


def _null_p_values(
    make: Callable[[int], Any],
    data: Callable[[np.random.Generator], tuple[Any, Any]],
    trials: int = 1000,
    seed: int = 20261128,
) -> np.ndarray:
    """p-values of ``trials`` seeded no-drift experiments (fresh reference and window each)."""
    rng = np.random.default_rng(seed)
    out = np.empty(trials)
    for i in range(trials):
        ref, test = data(rng)
        out[i] = make(i).fit(ref).predict(test).p_value
    return out


def _assert_calibrated(
    p: np.ndarray, n_permutations: int | None = None, uniform: bool = True
) -> None:
    """FPR at 0.05 in [0.03, 0.07]; p-values uniform (KS test at 0.01).

    Permutation p-values live on the grid ``k / (B + 1)``; subtracting ``U / (B + 1)`` spreads
    each atom over its cell, which is exactly uniform for a valid permutation test.
    """
    fpr = float(np.mean(p <= 0.05))
    assert 0.03 <= fpr <= 0.07, f"false-positive rate {fpr:.3f} outside [0.03, 0.07]"
    if uniform:
        u = p
        if n_permutations is not None:
            u = p - np.random.default_rng(0).random(p.size) / (n_permutations + 1)
        ks = stats.kstest(u, "uniform")
        assert ks.pvalue > 0.01, f"p-values not uniform: KS D={ks.statistic:.3f}, p={ks.pvalue:.4f}"


def _gaussian_pairs(N: int, n: int, d: int) -> Callable[[np.random.Generator], tuple[Any, Any]]:
    return lambda rng: (rng.normal(size=(N, d)), rng.normal(size=(n, d)))


class Calibration:
    """The calibration harness handed to tests by the ``calib`` fixture."""

    null_p_values = staticmethod(_null_p_values)
    assert_calibrated = staticmethod(_assert_calibrated)
    gaussian_pairs = staticmethod(_gaussian_pairs)


@pytest.fixture
def calib() -> type[Calibration]:
    return Calibration
