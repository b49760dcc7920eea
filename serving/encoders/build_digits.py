"""Build the bundled digits demo models: ``python -m serving.encoders.build_digits``.

Data: scikit-learn's digits (1797 8×8 images, pixel intensities 0..16). Digits 0–7 are the
in-distribution task; digits 8 and 9 are never seen in training and serve as semantic OOD.
The 0–7 images are split per class (seeded) into train / validation / test (60/20/20).

Two networks, both fed the raw 64 pixel values (the graphs divide by 16 themselves):

* an SSL encoder (VICReg by default, no labels) trained on the train split, early-stopped on
  validation;
* a task classifier: its own small CNN trained with labels on the train split (kept separate
  from the SSL encoder so that "the model's penultimate features" and "the SSL embedding" are
  two different representations to compare).

Written to ``serving/encoders/models/`` (or ``--out``): ``digits_classifier.onnx`` (outputs
``logits``, ``embedding`` = SSL embedding, ``penultimate`` = classifier features),
``digits_encoder.onnx`` (output ``embedding``), ``digits.json`` (metadata, split indices,
metrics, weight hashes) and ``digits_card.md`` (the model card). Deterministic under ``--seed``
on one machine: the same weight hashes on every rebuild.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from serving.encoders.augment import image_views
from serving.encoders.export import export_onnx, verify_export
from serving.encoders.nets import Encoder
from serving.encoders.train import TrainConfig, seed_everything, train_encoder

MODELS_DIR = Path(__file__).parent / "models"
N_CLASSES = 8
EMBED_DIM = 32
WIDTH = 24
PIXEL_MAX = 16.0


class DigitsClassifier(nn.Module):
    """Task CNN: raw pixels → (logits, penultimate features)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = Encoder(
            "image", (64,), (1, 8, 8), EMBED_DIM, WIDTH, np.float32(0.0), np.float32(PIXEL_MAX)
        )
        self.head = nn.Linear(EMBED_DIM, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsBundle(nn.Module):
    """The exported two-headed graph: classifier logits, SSL embedding, classifier features."""

    def __init__(self, classifier: DigitsClassifier, encoder: Encoder) -> None:
        super().__init__()
        self.classifier = classifier
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.classifier.features(x)
        return self.classifier.head(feats), self.encoder(x), feats


def load_digits_data() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Raw digits pixels ``(1797, 64)`` float32 in 0..16 and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def split_indices(y: NDArray[np.int64], seed: int) -> dict[str, list[int]]:
    """Per-class 60/20/20 split of the 0–7 rows; every 8 and 9 goes to ``ood``."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_tr, n_va = round(0.6 * len(idx)), round(0.2 * len(idx))
        parts["train"] += idx[:n_tr].tolist()
        parts["val"] += idx[n_tr : n_tr + n_va].tolist()
        parts["test"] += idx[n_tr + n_va :].tolist()
    out = {k: sorted(v) for k, v in parts.items()}
    out["ood"] = np.flatnonzero(y >= N_CLASSES).tolist()
    return out


def train_classifier(
    X: NDArray[np.float32],
    y: NDArray[np.int64],
    X_val: NDArray[np.float32],
    y_val: NDArray[np.int64],
    *,
    seed: int,
    epochs: int = 60,
    patience: int = 10,
    batch_size: int = 64,
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Supervised training with light augmentation; keeps the best validation-loss epoch."""
    gen = seed_everything(seed)
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    xv, yv = torch.from_numpy(X_val), torch.from_numpy(y_val)
    best, best_state, best_epoch, bad = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(len(xt) // batch_size):
            rows = perm[s * batch_size : (s + 1) * batch_size]
            xb = model.trunk.prepare(xt[rows])
            xb = image_views(xb, gen, max_shift=1.0, min_crop=0.9, noise_std=0.05, erase_prob=0.0)
            loss = F.cross_entropy(model.head(F.relu(model.trunk.backbone(xb))), yt[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(model(xv), yv))
        if val_loss < best - 1e-6:
            best, best_epoch, bad = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), {"best_epoch": best_epoch, "val_loss": best, "epochs_run": epoch}


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in name order (the determinism check)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _knn_accuracy(
    train: NDArray[Any], y_train: NDArray[Any], test: NDArray[Any], y_test: NDArray[Any], k: int = 5
) -> float:
    """Cosine k-NN probe accuracy (labels used only to evaluate, never to train the encoder)."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    nn_idx = np.argsort(-(b @ a.T), axis=1)[:, :k]
    votes = y_train[nn_idx]
    pred = np.array([np.bincount(v, minlength=N_CLASSES).argmax() for v in votes])
    return float((pred == y_test).mean())


def build(
    out_dir: str | Path = MODELS_DIR,
    *,
    seed: int = 0,
    ssl_epochs: int = 150,
    clf_epochs: int = 60,
    objective: str = "vicreg",
    progress: bool = True,
) -> dict[str, Any]:
    """Train both networks, export them, verify the graphs and write metadata and card.

    Returns
    -------
    dict
        The metadata written to ``digits.json``.
    """
    torch.set_num_threads(1)  # bit-for-bit reproducibility does not survive thread changes
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    X, y = load_digits_data()
    split = split_indices(y, seed)
    tr, va, te = (np.asarray(split[k]) for k in ("train", "val", "test"))

    ssl = train_encoder(
        X[tr],
        TrainConfig(
            objective=objective, modality="image", epochs=ssl_epochs, batch_size=256,
            embed_dim=EMBED_DIM, width=WIDTH, proj_dim=64, patience=20, seed=seed,
            device="cpu", image_shape=[1, 8, 8],
        ),
        X_val=X[va],
        progress=progress,
    )
    encoder = ssl.encoder
    if float(encoder.std) != PIXEL_MAX:
        raise RuntimeError(f"expected pixel scale {PIXEL_MAX}, the data gave {float(encoder.std)}")
    classifier, clf_info = train_classifier(
        X[tr], y[tr], X[va], y[va], seed=seed, epochs=clf_epochs
    )
    train_seconds = time.perf_counter() - t0

    bundle = DigitsBundle(classifier, encoder).eval()
    example = torch.from_numpy(X[:4])
    clf_path = export_onnx(
        bundle, example, out / "digits_classifier.onnx",
        output_names=("logits", "embedding", "penultimate"),
    )
    enc_path = export_onnx(encoder, example, out / "digits_encoder.onnx")
    err_clf = verify_export(
        bundle, clf_path, X, output_names=("logits", "embedding", "penultimate")
    )
    err_enc = verify_export(encoder, enc_path, X)

    with torch.no_grad():
        logits = classifier(torch.from_numpy(X)).numpy()
        emb = encoder(torch.from_numpy(X)).numpy()
        feats = classifier.features(torch.from_numpy(X)).numpy()
    acc = {k: float((logits[idx].argmax(1) == y[idx]).mean()) for k, idx in
           (("train", tr), ("val", va), ("test", te))}
    metrics = {
        "classifier_accuracy": acc,
        "ssl_knn5_test_accuracy": _knn_accuracy(emb[tr], y[tr], emb[te], y[te]),
        "penultimate_knn5_test_accuracy": _knn_accuracy(feats[tr], y[tr], feats[te], y[te]),
        "raw_pixels_knn5_test_accuracy": _knn_accuracy(X[tr], y[tr], X[te], y[te]),
        "ssl_best_epoch": ssl.best_epoch,
        "ssl_epochs_run": len(ssl.history),
        "ssl_best_val_loss": min(h["val_loss"] for h in ssl.history),
        "classifier_best_epoch": clf_info["best_epoch"],
        "classifier_epochs_run": clf_info["epochs_run"],
        "max_abs_onnx_torch_diff": {"digits_classifier": err_clf, "digits_encoder": err_enc},
        "train_seconds": round(train_seconds, 1),
    }
    meta = _metadata(seed, objective, split, metrics, classifier, encoder, out)
    (out / "digits.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "digits_card.md").write_text(_card(meta))
    return meta


def _metadata(
    seed: int, objective: str, split: dict[str, list[int]], metrics: dict[str, Any],
    classifier: nn.Module, encoder: nn.Module, out: Path,
) -> dict[str, Any]:
    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    return {
        "name": "digits",
        "format_version": 1,
        "data": "sklearn.datasets.load_digits (UCI optical digits, 1797 images 8x8)",
        "input": {
            "name": "input", "dtype": "float32", "shape": ["batch", 64],
            "layout": "row-major 8x8 image, sklearn's digits.data",
        },
        "normalisation": {
            "expects": "raw pixel intensities in [0, 16] (sklearn's digits.data as float32)",
            "in_graph": "x / 16", "pixel_max": PIXEL_MAX,
        },
        "models": {
            "digits_classifier.onnx": {
                "outputs": {
                    "logits": ["batch", N_CLASSES],
                    "embedding": ["batch", EMBED_DIM],
                    "penultimate": ["batch", EMBED_DIM],
                },
                "sha256": sha(out / "digits_classifier.onnx"),
                "bytes": (out / "digits_classifier.onnx").stat().st_size,
            },
            "digits_encoder.onnx": {
                "outputs": {"embedding": ["batch", EMBED_DIM]},
                "sha256": sha(out / "digits_encoder.onnx"),
                "bytes": (out / "digits_encoder.onnx").stat().st_size,
            },
        },
        "classes": list(range(N_CLASSES)),
        "ood_classes": [8, 9],
        "embedding_dim": EMBED_DIM,
        "ssl_objective": objective,
        "seed": seed,
        "split": {"rule": "per class 60/20/20 of digits 0-7, numpy default_rng(seed)", **split},
        "metrics": metrics,
        "weights_sha256": {
            "classifier": weights_hash(classifier), "encoder": weights_hash(encoder),
        },
        "rebuild": f"python -m serving.encoders.build_digits --seed {seed}",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }


_OBJECTIVE_TEXT = {
    "vicreg": "VICReg (variance-invariance-covariance; weights 25/25/1)",
    "simclr": "SimCLR (NT-Xent, temperature 0.2)",
}


def _card(meta: dict[str, Any]) -> str:
    m = meta["metrics"]
    acc = m["classifier_accuracy"]
    s = meta["split"]
    models = meta["models"]
    d = meta["embedding_dim"]
    kib = {k: f'{v["bytes"] / 1024:.0f} KiB' for k, v in models.items()}
    clf_outputs = (
        f"`logits` `[batch, 8]`, `embedding` `[batch, {d}]` (SSL), "
        f"`penultimate` `[batch, {d}]` (classifier features)"
    )
    max_diff = max(m["max_abs_onnx_torch_diff"].values())
    accs = f'{acc["train"]:.4f} / {acc["val"]:.4f} / {acc["test"]:.4f}'
    return f"""# Model card: repwatch digits demo models

Built by `{meta["rebuild"]}` (torch {meta["versions"]["torch"]}, one CPU thread,
{m["train_seconds"]} s of training). Machine-readable metadata: `digits.json`.

## Files

| file | input | outputs | size |
| --- | --- | --- | --- |
| `digits_classifier.onnx` | `input` float32 `[batch, 64]` | {clf_outputs} | \
{kib["digits_classifier.onnx"]} |
| `digits_encoder.onnx` | `input` float32 `[batch, 64]` | `embedding` `[batch, {d}]` | \
{kib["digits_encoder.onnx"]} |

ONNX opset 18, dynamic batch axis. **Input**: the 64 raw pixel intensities of one 8×8 digit,
row-major, in 0..16, exactly `sklearn.datasets.load_digits().data` as float32. The graphs
divide by 16 themselves; do not normalise before calling them.

## Data and split

scikit-learn's bundled digits (UCI optical recognition of handwritten digits, 1797 images).
Digits **0–7** are the task; digits **8 and 9** ({len(s["ood"])} images) are never used in
training and are held out as semantic out-of-distribution data. The 0–7 images are split per
class with `numpy.random.default_rng({meta["seed"]})` into train {len(s["train"])} /
validation {len(s["val"])} / test {len(s["test"])}; the indices (into the full 1797-row array) are
listed in `digits.json` under `split`.

## Networks

* **SSL encoder** (`embedding`): a 3-block CNN ({meta["embedding_dim"]}-d output) trained
  without labels on the train split with {_OBJECTIVE_TEXT[meta["ssl_objective"]]}
  (2-layer projection head discarded after training); augmentations: random zoom-crop, ±1 px
  shift, Gaussian noise, random erasing. Early-stopped on the validation split's SSL loss
  (best epoch {m["ssl_best_epoch"]} of {m["ssl_epochs_run"]} run).
* **Task classifier** (`logits`, `penultimate`): its own CNN of the same shape plus a linear
  head, trained with labels (cross-entropy, light shift/noise augmentation) on the train split,
  early-stopped on validation loss (best epoch {m["classifier_best_epoch"]}). It is a separate
  network from the SSL encoder on purpose, so that the classifier's penultimate features and
  the SSL embedding are two different representations to compare.

## Metrics (test split, digits 0–7)

| metric | value |
| --- | --- |
| classifier accuracy (train / val / test) | {accs} |
| 5-NN accuracy on SSL embedding (cosine; labels only evaluate) | \
{m["ssl_knn5_test_accuracy"]:.4f} |
| 5-NN accuracy on classifier penultimate features | \
{m["penultimate_knn5_test_accuracy"]:.4f} |
| 5-NN accuracy on raw pixels | {m["raw_pixels_knn5_test_accuracy"]:.4f} |
| max \\|onnxruntime − torch\\| over all 1797 images | {max_diff:.2e} |

## Rebuild

```
pip install "repwatch[train]"
{meta["rebuild"]}
```

Rebuilding is deterministic under the seed on one machine: `weights_sha256` in `digits.json`
comes out the same on every run (other CPUs or library versions may differ in the last bits).

## Limits

Tiny 8×8 images from 1990s scans by 43 writers: a demo and test fixture, not a production
digit recogniser. OOD classes 8 and 9 share strokes with 0–7 (3, 5, 0), which is the point.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ssl-epochs", type=int, default=150)
    parser.add_argument("--clf-epochs", type=int, default=60)
    parser.add_argument("--objective", choices=("simclr", "vicreg"), default="vicreg")
    args = parser.parse_args(argv)
    meta = build(
        args.out, seed=args.seed, ssl_epochs=args.ssl_epochs, clf_epochs=args.clf_epochs,
        objective=args.objective,
    )
    m = meta["metrics"]
    print(
        f"test accuracy {m['classifier_accuracy']['test']:.4f}, SSL 5-NN "
        f"{m['ssl_knn5_test_accuracy']:.4f}, trained in {m['train_seconds']} s; "
        f"weights {meta['weights_sha256']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
