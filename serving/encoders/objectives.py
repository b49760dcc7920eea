"""Self-supervised objectives: SimCLR's NT-Xent and VICReg (torch; ``train`` extra).

Both take the projector outputs of two augmented views of the same batch, ``z1`` and ``z2`` of
shape ``(n, d)``, where row ``i`` of ``z1`` and row ``i`` of ``z2`` are the positive pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("simclr", "vicreg")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Normalised temperature-scaled cross-entropy (SimCLR, Chen et al. 2020).

    Parameters
    ----------
    z1, z2 : torch.Tensor
        Projections of two views, shape ``(n, d)``; row ``i`` of each is a positive pair and
        every other row of both views is a negative.
    temperature : float
        Softmax temperature applied to cosine similarities.

    Returns
    -------
    torch.Tensor
        Scalar loss, averaged over the ``2 n`` anchors.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.T / temperature
    # An anchor is never its own negative.
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def vicreg(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Variance-invariance-covariance regularisation (VICReg, Bardes et al. 2022).

    Parameters
    ----------
    z1, z2 : torch.Tensor
        Projections of two views, shape ``(n, d)`` with ``n >= 2``.
    sim_weight, var_weight, cov_weight : float
        Weights of the invariance (MSE), variance (hinge on each dimension's std at 1) and
        covariance (squared off-diagonal covariances) terms; defaults from the paper.
    eps : float
        Added to the variance before the square root, for stability.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        zc = z - z.mean(dim=0)
        std = torch.sqrt(zc.var(dim=0) + eps)
        variance = variance + F.relu(1.0 - std).mean() / 2
        cov = zc.T @ zc / (n - 1)
        off = cov - torch.diag(torch.diagonal(cov))
        covariance = covariance + off.pow(2).sum() / d
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def ssl_loss(
    objective: str, z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Dispatch to :func:`nt_xent` (``"simclr"``, with ``temperature``) or :func:`vicreg`."""
    if objective == "simclr":
        return nt_xent(z1, z2, temperature=temperature)
    if objective == "vicreg":
        return vicreg(z1, z2)
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
