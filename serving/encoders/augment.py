"""Batch augmentations for contrastive and non-contrastive training (torch; ``train`` extra).

Every function draws its randomness from an explicit :class:`torch.Generator`, so training is
reproducible under a seed, and works on a whole batch at once (no Python loop per sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def image_views(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    max_shift: float = 1.0,
    min_crop: float = 0.75,
    noise_std: float = 0.1,
    erase_prob: float = 0.5,
    max_erase: float = 0.4,
) -> torch.Tensor:
    """One random view of a batch of small images, shape ``(n, c, h, w)``, values normalised.

    Applies, per image: a random crop of ``min_crop``..1 of each side resized back to ``h × w``
    (zoom), a shift of up to ``max_shift`` pixels in each direction, Gaussian pixel noise and,
    with probability ``erase_prob``, erasing of one rectangle of up to ``max_erase`` of each side.

    Parameters
    ----------
    x : torch.Tensor
        Images, ``(n, c, h, w)``.
    gen : torch.Generator
        Source of randomness (on the CPU; draws are moved to ``x.device``).
    max_shift, min_crop, noise_std, erase_prob, max_erase : float
        Strength of each augmentation.

    Returns
    -------
    torch.Tensor
        Augmented images, same shape and device as ``x``.
    """
    n, _, h, w = x.shape

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(x.device)

    # Crop + shift as one affine resampling: scale < 1 zooms into a crop, translation shifts.
    scale = min_crop + (1.0 - min_crop) * u(n)
    tx = (2 * u(n) - 1) * (2 * max_shift / w)
    ty = (2 * u(n) - 1) * (2 * max_shift / h)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out + noise_std * torch.randn(out.shape, generator=gen).to(x.device)
    # Random erasing: one axis-aligned rectangle per selected image.
    eh = (1 + (u(n) * max_erase * h)).long().clamp(max=h)
    ew = (1 + (u(n) * max_erase * w)).long().clamp(max=w)
    y0 = (u(n) * (h - eh + 1)).long()
    x0 = (u(n) * (w - ew + 1)).long()
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & (u(n) < erase_prob)[:, None, None]
    return out.masked_fill(mask[:, None, :, :], 0.0)


def tabular_views(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    corruption: float = 0.4,
    noise_std: float = 0.1,
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """One random view of a batch of feature vectors, shape ``(n, d)``, standardised.

    SCARF-style corruption (Bahri et al. 2022): each feature of each row is, with probability
    ``corruption``, replaced by the same feature of a random row of ``pool`` (its empirical
    marginal); then Gaussian noise of ``noise_std`` (in standard deviations) is added.

    Parameters
    ----------
    x : torch.Tensor
        Standardised features, ``(n, d)``.
    gen : torch.Generator
        Source of randomness.
    corruption : float
        Fraction of features replaced per row, in ``[0, 1)``.
    noise_std : float
        Standard deviation of the added noise.
    pool : torch.Tensor, optional
        Rows to draw replacement values from (the training set); defaults to the batch itself.

    Returns
    -------
    torch.Tensor
        Augmented features, same shape and device as ``x``.
    """
    n, d = x.shape
    src = x if pool is None else pool
    rows = torch.randint(0, src.shape[0], (n, d), generator=gen).to(x.device)
    replacement = torch.gather(src, 0, rows)
    mask = (torch.rand(n, d, generator=gen) < corruption).to(x.device)
    out = torch.where(mask, replacement, x)
    return out + noise_std * torch.randn(n, d, generator=gen).to(x.device)
