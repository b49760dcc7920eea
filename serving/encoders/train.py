"""Seeded self-supervised training of an :class:`~serving.encoders.nets.Encoder` (torch).

``train_encoder(X, TrainConfig(...))`` fits an encoder on unlabelled rows with SimCLR or VICReg,
holding out ``val_fraction`` of the rows to stop early on the held-out SSL loss, and returns the
encoder restored to its best epoch. Training is reproducible under ``seed`` on the same machine
and device (deterministic algorithms, explicit generators, fixed held-out views).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm

from serving.encoders.augment import image_views, tabular_views
from serving.encoders.data import check_training_array, image_shape_of
from serving.encoders.nets import Encoder, Projector
from serving.encoders.objectives import OBJECTIVES, ssl_loss

CHECKPOINT_FORMAT = "repwatch-encoder-checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all JSON-serialisable, stored in the checkpoint).

    Parameters
    ----------
    objective : {"simclr", "vicreg"}
        Self-supervised objective.
    modality : {"image", "tabular"}
        Chooses the backbone and the augmentations.
    epochs : int
        Maximum epochs.
    batch_size : int
        Rows per step (each row gives two views).
    lr, weight_decay : float
        AdamW parameters (cosine learning-rate schedule over ``epochs``).
    embed_dim, width, proj_dim : int
        Embedding size, backbone width, projector output size.
    val_fraction : float
        Fraction of rows held out for early stopping.
    patience : int
        Epochs without held-out improvement before stopping.
    min_delta : float
        Decrease of the held-out loss that counts as an improvement.
    temperature : float
        NT-Xent temperature (SimCLR only).
    augment : dict, optional
        Keyword arguments of :func:`~serving.encoders.augment.image_views` (``max_shift``,
        ``min_crop``, ``noise_std``, ``erase_prob``, ``max_erase``) or
        :func:`~serving.encoders.augment.tabular_views` (``corruption``, ``noise_std``) that
        override the defaults. Invariance is learnt to exactly these changes: a drift that
        looks like an augmentation is one the embedding is trained to ignore.
    seed : int
        Seeds the split, initialisation, batching and augmentations.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    image_shape : list of int, optional
        ``[c, h, w]`` for images given as flat rows; inferred from 3-D/4-D arrays otherwise.
    """

    objective: str = "simclr"
    modality: str = "tabular"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    embed_dim: int = 32
    width: int = 64
    proj_dim: int = 64
    val_fraction: float = 0.2
    patience: int = 15
    min_delta: float = 1e-6
    temperature: float = 0.2
    augment: dict[str, float] | None = None
    seed: int = 0
    device: str = "auto"
    image_shape: list[int] | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}"
            )
        if self.modality not in ("image", "tabular"):
            raise ValueError(f"unknown modality {self.modality!r}; choose 'image' or 'tabular'")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        allowed = (
            {"max_shift", "min_crop", "noise_std", "erase_prob", "max_erase"}
            if self.modality == "image" else {"corruption", "noise_std"}
        )
        unknown = set(self.augment or {}) - allowed
        if unknown:
            raise ValueError(
                f"unknown {self.modality} augmentation option(s) {sorted(unknown)}; "
                f"known: {sorted(allowed)}"
            )


@dataclass
class TrainResult:
    """What :func:`train_encoder` returns.

    Attributes
    ----------
    encoder : Encoder
        The encoder at its best held-out epoch, in eval mode, on the CPU.
    config : TrainConfig
        The configuration used.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``.
    best_epoch : int
        Epoch (1-based) whose weights were kept.
    stopped_early : bool
        Whether patience ran out before ``epochs``.
    """

    encoder: Encoder
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (CPU and CUDA), switch on deterministic algorithms, return a CPU generator."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def build_encoder(config: TrainConfig, X: NDArray[np.float32]) -> Encoder:
    """Create an untrained encoder whose normalisation statistics come from ``X``.

    Images are only scaled (by the largest absolute value), so that zero padding and erasing
    mean "background"; tabular features are standardised per column.
    """
    sample_shape = tuple(int(s) for s in X.shape[1:])
    if config.modality == "image":
        shape = image_shape_of(X, config.image_shape)
        scale = float(np.abs(X).max()) or 1.0
        mean: Any = np.float32(0.0)
        std: Any = np.float32(scale)
    else:
        shape = None
        mean = X.mean(axis=0).astype(np.float32)
        std = X.std(axis=0).astype(np.float32)
        std[std < 1e-8] = 1.0  # constant columns: leave them centred, not divided by zero
    return Encoder(config.modality, sample_shape, shape, config.embed_dim, config.width, mean, std)


def _views(
    config: TrainConfig, x: torch.Tensor, gen: torch.Generator, pool: torch.Tensor
) -> torch.Tensor:
    opts = dict(config.augment or {})
    if config.modality == "image":
        return image_views(x, gen, **opts)
    return tabular_views(x, gen, pool=pool, **opts)


def train_encoder(
    X: NDArray[Any],
    config: TrainConfig,
    *,
    X_val: NDArray[Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train an encoder on unlabelled rows ``X`` with a self-supervised objective.

    Parameters
    ----------
    X : ndarray
        Training data: ``(n, d)`` for tabular, ``(n, h, w)``, ``(n, c, h, w)`` or flat
        ``(n, c*h*w)`` (with ``config.image_shape``, or a square ``d``) for images. Must be
        finite; at least 8 rows.
    config : TrainConfig
        Hyper-parameters and seed.
    X_val : ndarray, optional
        Held-out rows for early stopping; when omitted, ``config.val_fraction`` of ``X`` is
        held out (chosen with ``config.seed``).
    progress : bool
        Show a tqdm progress bar with the current train and held-out loss.

    Returns
    -------
    TrainResult
        The encoder at its best held-out epoch and the loss history.
    """
    X = check_training_array(X, modality=config.modality, image_shape=config.image_shape)
    gen = seed_everything(config.seed)
    device = resolve_device(config.device)

    if X_val is None:
        order = torch.randperm(X.shape[0], generator=gen).numpy()
        n_val = max(2, round(config.val_fraction * X.shape[0]))
        if X.shape[0] - n_val < 2:
            raise ValueError(
                f"X has {X.shape[0]} rows: too few to hold out {n_val} for validation"
            )
        X_val = X[np.sort(order[:n_val])]
        X = X[np.sort(order[n_val:])]
    else:
        X_val = check_training_array(
            X_val, modality=config.modality, image_shape=config.image_shape, min_rows=2,
            name="X_val",
        )
        if X_val.shape[1:] != X.shape[1:]:
            raise ValueError(f"X_val samples have shape {X_val.shape[1:]}, X's {X.shape[1:]}")
    n_train = X.shape[0]

    encoder = build_encoder(config, X).to(device)
    projector = Projector(config.embed_dim, 2 * config.proj_dim, config.proj_dim).to(device)
    params = [*encoder.parameters(), *projector.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)

    with torch.no_grad():
        x_train = encoder.prepare(torch.from_numpy(X).to(device))
        x_val = encoder.prepare(torch.from_numpy(X_val).to(device))
    # The held-out views are drawn once, so the early-stopping signal is not augmentation noise.
    val_gen = torch.Generator().manual_seed(config.seed + 1)
    val_v1 = _views(config, x_val, val_gen, x_train)
    val_v2 = _views(config, x_val, val_gen, x_train)

    batch = min(config.batch_size, n_train)
    steps = max(1, n_train // batch)  # drop the ragged last batch: BN needs > 1 row
    result = TrainResult(encoder=encoder, config=config)
    best_loss, best_state, bad_epochs = math.inf, None, 0
    bar = tqdm(range(1, config.epochs + 1), desc=f"{config.objective}", disable=not progress)
    for epoch in bar:
        encoder.train()
        projector.train()
        perm = torch.randperm(n_train, generator=gen).to(device)
        total = 0.0
        for s in range(steps):
            xb = x_train[perm[s * batch : (s + 1) * batch]]
            v1, v2 = _views(config, xb, gen, x_train), _views(config, xb, gen, x_train)
            z1 = projector(encoder.backbone(v1))
            z2 = projector(encoder.backbone(v2))
            loss = ssl_loss(config.objective, z1, z2, config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        sched.step()
        val_loss = _held_out_loss(config, encoder, projector, val_v1, val_v2)
        train_loss = total / steps
        result.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if val_loss < best_loss - config.min_delta:
            best_loss, bad_epochs, result.best_epoch = val_loss, 0, epoch
            best_state = copy.deepcopy(encoder.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                result.stopped_early = True
                break
    bar.close()
    if best_state is not None:
        encoder.load_state_dict(best_state)
    result.encoder = encoder.cpu().eval()
    return result


def _held_out_loss(
    config: TrainConfig,
    encoder: Encoder,
    projector: Projector,
    v1: torch.Tensor,
    v2: torch.Tensor,
) -> float:
    encoder.eval()
    projector.eval()
    with torch.no_grad():
        z1 = projector(encoder.backbone(v1))
        z2 = projector(encoder.backbone(v2))
        return float(ssl_loss(config.objective, z1, z2, config.temperature))


# --- checkpoints ----------------------------------------------------------------------------


def save_checkpoint(result: TrainResult, path: str | Path) -> None:
    """Save the encoder weights, its constructor arguments, config and history (no pickle).

    Load with :func:`load_checkpoint` (``torch.load(weights_only=True)`` under the hood).
    """
    enc = result.encoder
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(result.config),
        "encoder": {
            "modality": enc.modality,
            "input_shape": list(enc.input_shape),
            "image_shape": list(enc.image_shape) if enc.image_shape else None,
            "embed_dim": enc.embed_dim,
            "width": result.config.width,
        },
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
    }
    state = {k: v.detach().cpu() for k, v in enc.state_dict().items()}
    torch.save({"meta_json": json.dumps(meta), "state_dict": state}, Path(path))


def load_checkpoint(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(encoder, meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(blob["meta_json"])
    except Exception as exc:
        raise ValueError(
            f"{path} is not a repwatch encoder checkpoint (write one with "
            f"`repwatch encoder train`): {exc}"
        ) from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    e = meta["encoder"]
    state = blob["state_dict"]
    encoder = Encoder(
        e["modality"],
        tuple(e["input_shape"]),
        tuple(e["image_shape"]) if e["image_shape"] else None,
        e["embed_dim"],
        e["width"],
        state["mean"],
        state["std"],
    )
    encoder.load_state_dict(state)
    return encoder.eval(), meta
