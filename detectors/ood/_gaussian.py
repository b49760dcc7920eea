"""Gaussian fits shared by the Mahalanobis detectors: shrunk covariance and its whitener."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def ledoit_wolf_shrinkage(Xc: FloatArray) -> float:
    """Ledoit-Wolf (2004) optimal shrinkage towards ``mu * I`` of centred rows ``Xc``.

    Same estimator as ``sklearn.covariance.ledoit_wolf(Xc, assume_centered=True)``, in numpy.
    """
    n, d = Xc.shape
    X2 = Xc**2
    emp_trace = X2.sum(axis=0) / n
    mu = emp_trace.sum() / d
    beta_ = float(np.sum(X2.T @ X2))
    delta_ = float(np.sum((Xc.T @ Xc) ** 2)) / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * emp_trace.sum() + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0.0 else float(beta / delta)


def shrunk_covariance(
    Xc: FloatArray, shrinkage: float | str
) -> tuple[FloatArray, float, float]:
    """``(cov, s, ridge)``: ``cov = (1 - s) S + ridge I`` of centred rows, ``ridge = s tr(S)/d``.

    ``s`` is given or Ledoit-Wolf's.
    """
    d = Xc.shape[1]
    if shrinkage == "ledoit-wolf":
        s = ledoit_wolf_shrinkage(Xc)
    elif isinstance(shrinkage, int | float) and 0.0 <= shrinkage <= 1.0:
        s = float(shrinkage)
    else:
        raise ValueError(f"shrinkage must be 'ledoit-wolf' or a float in [0, 1], got {shrinkage!r}")
    emp = (Xc.T @ Xc) / Xc.shape[0]
    ridge = s * float(np.trace(emp)) / d
    return scaled_covariance(Xc, 1.0 - s, ridge), s, ridge


def scaled_covariance(Xc: FloatArray, scale: float, ridge: float) -> FloatArray:
    """``scale * S + ridge * I`` for centred rows ``Xc`` (``S`` their covariance)."""
    cov = (Xc.T @ Xc) * (scale / Xc.shape[0])
    cov[np.diag_indices(Xc.shape[1])] += ridge
    return cov


def whitener(cov: FloatArray, n: int) -> FloatArray:
    """``W`` with ``(x - m)^T cov^-1 (x - m) = |(x - m) W|^2``.

    Raises a ``ValueError`` naming the fix when ``cov`` is singular (e.g. ``n < d`` without
    shrinkage, or constant features).
    """
    d = cov.shape[0]
    evals, evecs = np.linalg.eigh(cov)
    floor = max(float(evals[-1]), 1e-300) * 1e-12
    if evals[0] <= floor:
        raise ValueError(
            f"the covariance of {n} reference rows in {d} dimensions is singular (smallest "
            f"eigenvalue {evals[0]:.3g}); use shrinkage='ledoit-wolf' (or a positive float), "
            "more reference rows, or drop constant features"
        )
    W: FloatArray = evecs / np.sqrt(evals)
    return W


def class_stats(
    X: FloatArray, y: NDArray[Any] | None
) -> tuple[NDArray[Any] | None, FloatArray, FloatArray]:
    """``(classes, means, residuals)``: per-class means and rows centred on their class mean."""
    if y is None:
        mean = X.mean(axis=0, keepdims=True)
        return None, mean, X - mean
    classes, inv = np.unique(y, return_inverse=True)
    counts = np.bincount(inv, minlength=classes.shape[0]).astype(np.float64)
    means = np.zeros((classes.shape[0], X.shape[1]))
    np.add.at(means, inv, X)
    means /= counts[:, None]
    return classes, means, X - means[inv]


def min_sq_distance(Z: FloatArray, centres: FloatArray, centre_sq: FloatArray) -> FloatArray:
    """``min_c |Z - centres_c|^2`` for whitened rows (expanded form, float64)."""
    if centres.shape[0] == 1:
        diff = Z - centres[0]
        return np.einsum("ij,ij->i", diff, diff)
    z_sq = np.einsum("ij,ij->i", Z, Z)
    cross = Z @ centres.T
    cross *= -2.0
    cross += centre_sq
    return np.maximum(z_sq + cross.min(axis=1), 0.0)
