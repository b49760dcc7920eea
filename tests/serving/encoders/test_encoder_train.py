"""Objectives, augmentations and seeded SSL training of the encoders."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from serving.encoders.augment import image_views, tabular_views  # noqa: E402
from serving.encoders.objectives import nt_xent, ssl_loss, vicreg  # noqa: E402
from serving.encoders.train import TrainConfig, train_encoder  # noqa: E402

torch.set_num_threads(1)


def _blobs(n: int = 240, d: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(4, d))
    return (centres[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def _images(n: int = 200, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float32)
    return X[np.random.default_rng(seed).choice(len(X), n, replace=False)]


def test_nt_xent_matches_direct_formula() -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    tau = 0.5
    z = np.concatenate([z1.numpy(), z2.numpy()]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / tau
    n = 5
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        others = [j for j in range(2 * n) if j != i]
        losses.append(-sim[i, pos] + math.log(sum(math.exp(sim[i, j]) for j in others)))
    assert float(nt_xent(z1, z2, temperature=tau)) == pytest.approx(np.mean(losses), rel=1e-5)


def test_vicreg_terms() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 4, generator=g) * 2.0
    # Identical, well-spread, nearly decorrelated views: only a small covariance term is left.
    assert float(vicreg(z, z)) < 0.5
    # A collapsed embedding pays the full variance hinge: 25 * (1 - sqrt(eps)) per view pair.
    collapsed = torch.zeros(64, 4)
    assert float(vicreg(collapsed, collapsed)) == pytest.approx(25 * (1 - 1e-2), rel=1e-4)
    with pytest.raises(ValueError, match="unknown objective 'byol'"):
        ssl_loss("byol", z, z)


def test_image_views_are_seeded_and_change_the_image() -> None:
    x = torch.from_numpy(_images(16)).reshape(-1, 1, 8, 8) / 16
    a = image_views(x, torch.Generator().manual_seed(3))
    b = image_views(x, torch.Generator().manual_seed(3))
    c = image_views(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Augmented, yet on average closer to its own source image than to the other images.
    d = torch.cdist(a.flatten(1), x.flatten(1))
    own = d.diagonal().mean()
    others = (d.sum() - d.diagonal().sum()) / (16 * 15)
    assert own < 0.9 * others


def test_tabular_views_corrupt_the_expected_fraction_from_the_marginals() -> None:
    x = torch.arange(2000 * 5, dtype=torch.float32).reshape(2000, 5)
    pool = -1 - torch.arange(300 * 5, dtype=torch.float32).reshape(300, 5)
    v = tabular_views(x, torch.Generator().manual_seed(0), corruption=0.4, noise_std=0.0, pool=pool)
    replaced = v < 0
    assert replaced.float().mean().item() == pytest.approx(0.4, abs=0.02)
    # Each replaced value comes from the same column of the pool (its empirical marginal).
    col = torch.arange(5).expand(2000, 5)
    pool_col = ((-1 - v[replaced]).long()) % 5
    assert torch.equal(pool_col, col[replaced])


@pytest.mark.parametrize(
    ("objective", "modality"),
    [("simclr", "tabular"), ("vicreg", "tabular"), ("simclr", "image"), ("vicreg", "image")],
)
def test_a_few_epochs_lower_the_loss(objective: str, modality: str) -> None:
    X = _blobs() if modality == "tabular" else _images(240)
    cfg = TrainConfig(
        objective=objective, modality=modality, epochs=15, batch_size=64, embed_dim=8,
        width=16, proj_dim=16, patience=100, seed=0, device="cpu",
    )
    res = train_encoder(X, cfg, progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 15
    # Tabular blobs plateau early (same-cluster negatives look alike); images keep improving.
    assert np.mean(losses[-3:]) < 0.97 * losses[0]
    assert res.history[res.best_epoch - 1]["val_loss"] < 0.97 * res.history[0]["val_loss"]
    emb = res.encoder(torch.from_numpy(X[:5]))
    assert emb.shape == (5, 8)


def test_training_is_reproducible_under_its_seed() -> None:
    X = _blobs()
    cfg = TrainConfig(epochs=3, batch_size=64, embed_dim=8, width=16, seed=7, device="cpu")

    def weights(c: TrainConfig) -> list[np.ndarray]:
        enc = train_encoder(X, c, progress=False).encoder
        return [t.numpy().copy() for t in enc.state_dict().values()]

    a, b = weights(cfg), weights(cfg)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = weights(TrainConfig(**{**cfg.__dict__, "seed": 8}))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_augmentation_options_reach_the_views() -> None:
    X = _blobs()
    base = TrainConfig(epochs=1, batch_size=64, embed_dim=4, width=8, device="cpu")
    # No corruption and no noise: both views are the input itself, so SimCLR's positives are
    # perfect and the loss sits far below the default-augmentation run's.
    plain = train_encoder(
        X, replace(base, augment={"corruption": 0.0, "noise_std": 0.0}), progress=False
    )
    noisy = train_encoder(X, base, progress=False)
    assert plain.history[0]["val_loss"] < noisy.history[0]["val_loss"] - 0.1


def test_early_stopping_keeps_the_best_epoch() -> None:
    X = _blobs()
    # A min_delta nothing can beat: epoch 1 stays best and patience runs out after 3 more.
    cfg = TrainConfig(epochs=50, batch_size=64, embed_dim=8, width=16, patience=3,
                      min_delta=1e9, device="cpu")
    res = train_encoder(X, cfg, progress=False)
    assert res.stopped_early
    assert len(res.history) == 4
    assert res.best_epoch == 1


def test_bad_training_input_names_the_problem() -> None:
    X = _blobs()
    cfg = TrainConfig(epochs=1, device="cpu")
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first at index \(3, 2\)\)"):
        train_encoder(bad, cfg, progress=False)
    with pytest.raises(ValueError, match="must be 2-D"):
        train_encoder(X.reshape(-1, 2, 5), cfg, progress=False)
    with pytest.raises(ValueError, match="numeric"):
        train_encoder(np.array([["a"] * 3] * 20), cfg, progress=False)
    with pytest.raises(ValueError, match="not square images"):
        train_encoder(X, TrainConfig(modality="image", epochs=1), progress=False)
    with pytest.raises(ValueError, match="at least 8 are needed"):
        train_encoder(X[:4], cfg, progress=False)
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(objective="moco")
    msg = r"unknown tabular augmentation option\(s\) \['min_crop'\]"
    with pytest.raises(ValueError, match=msg):
        TrainConfig(augment={"min_crop": 0.5})
    with pytest.raises(ValueError, match="no CUDA device"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        train_encoder(X, TrainConfig(epochs=1, device="cuda"), progress=False)
