"""Encoder networks (torch; ``train`` extra).

An :class:`Encoder` maps *raw* inputs to an embedding: it standardises with statistics stored as
buffers (so the exported ONNX graph takes the data as users have it), reshapes a flat vector to
an image when the modality is ``image``, and runs a small backbone. The :class:`Projector` is
used only during self-supervised training and is never exported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConvBackbone(nn.Module):
    """Small CNN for small images (8×8 to ~32×32): three 3×3 conv blocks, global pooling, linear.

    Parameters
    ----------
    channels : int
        Input channels.
    width : int
        Channels of the first conv block (the next two use ``2 * width``).
    embed_dim : int
        Output dimension.
    """

    def __init__(self, channels: int, width: int, embed_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out = nn.Linear(2 * width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class MLPBackbone(nn.Module):
    """Two hidden layers with batch norm, for tabular/vector data.

    Parameters
    ----------
    in_dim : int
        Input features.
    width : int
        Hidden units.
    embed_dim : int
        Output dimension.
    """

    def __init__(self, in_dim: int, width: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Raw input → embedding: standardise, reshape (images), backbone.

    Parameters
    ----------
    modality : {"image", "tabular"}
        Chooses the backbone.
    input_shape : tuple of int
        Shape of one sample *as the model receives it* (without batch): ``(d,)`` for tabular,
        ``(c, h, w)`` or flat ``(c * h * w,)`` for images (see ``image_shape``).
    image_shape : tuple of int, optional
        ``(c, h, w)`` of the images; required for ``image``.
    embed_dim : int
        Embedding dimension.
    width : int
        Backbone width.
    mean, std : array-like
        Standardisation statistics, broadcastable to one sample of ``input_shape``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        modality: str,
        input_shape: tuple[int, ...],
        image_shape: tuple[int, int, int] | None,
        embed_dim: int,
        width: int,
        mean: Any,
        std: Any,
    ) -> None:
        super().__init__()
        self.modality = modality
        self.input_shape = tuple(input_shape)
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.embed_dim = embed_dim
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.backbone: nn.Module
        if modality == "image":
            if self.image_shape is None:
                raise ValueError("image modality needs image_shape (c, h, w)")
            self.backbone = ConvBackbone(self.image_shape[0], width, embed_dim)
        elif modality == "tabular":
            self.backbone = MLPBackbone(int(self.input_shape[0]), width, embed_dim)
        else:
            raise ValueError(f"unknown modality {modality!r}; choose 'image' or 'tabular'")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise raw inputs and put images in ``(n, c, h, w)`` layout."""
        x = (x - self.mean) / self.std
        if self.image_shape is not None:
            x = x.reshape(-1, *self.image_shape)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))


class Projector(nn.Module):
    """SSL projection head (training only): linear, batch norm, ReLU, linear."""

    def __init__(self, embed_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
