"""``repwatch encoder …``: train an SSL encoder, export it to ONNX, embed an array.

The lead CLI calls :func:`register` with its sub-parsers. Every subcommand stores its handler
as ``func`` (``args.func(args) -> int`` exit code). torch is imported only inside the
``train``/``export`` handlers, so ``repwatch --help`` works without the ``train`` extra.
Run standalone with ``python -m serving.encoders.cli``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_TRAIN_EXTRA = 'the encoder commands need the train extra: pip install "repwatch[train]"'


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``encoder`` command (``train``, ``export``, ``embed``) to ``subparsers``."""
    enc = subparsers.add_parser(
        "encoder",
        help="train a self-supervised encoder and export it to ONNX",
        description="Self-supervised encoders: train on unlabelled data, export to ONNX.",
    )
    sub = enc.add_subparsers(dest="encoder_command", metavar="{train,export,embed}")
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train an encoder on an unlabelled array file (.npy/.npz/.parquet)",
        description="Train an encoder with SimCLR or VICReg; writes a checkpoint (.pt).",
    )
    t.add_argument("data", type=Path, help="unlabelled array: .npy, .npz or .parquet")
    t.add_argument("--key", help="array name inside an .npz archive (default: its only array)")
    t.add_argument("--objective", choices=("simclr", "vicreg"), default="simclr",
                   help="self-supervised objective: contrastive SimCLR or non-contrastive VICReg")
    t.add_argument("--modality", choices=("image", "tabular"), default="tabular",
                   help="chooses the backbone (CNN or MLP) and the augmentations")
    t.add_argument("--image-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="shape of one image when rows are flat (default: square, 1 channel)")
    t.add_argument("--epochs", type=int, default=100, help="most epochs to train")
    t.add_argument("--batch-size", type=int, default=256,
                   help="rows per step (each row gives two augmented views)")
    t.add_argument("--lr", type=float, default=2e-3,
                   help="AdamW learning rate (cosine schedule over the epochs)")
    t.add_argument("--embed-dim", type=int, default=32, help="embedding size")
    t.add_argument("--width", type=int, default=64, help="backbone width (channels or units)")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="rows held out for early stopping")
    t.add_argument("--patience", type=int, default=15,
                   help="epochs without held-out improvement before stopping early")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, weights and views")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    t.add_argument("--out", type=Path, default=Path("encoder.pt"), help="checkpoint path")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=_train_cmd)

    e = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (dynamic batch, output 'embedding')",
        description="Export a trained checkpoint to ONNX and check it matches torch to 1e-5.",
    )
    e.add_argument("checkpoint", type=Path, help="checkpoint from `repwatch encoder train`")
    e.add_argument("--out", type=Path, help="ONNX path (default: checkpoint with .onnx)")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    e.set_defaults(func=_export_cmd)

    m = sub.add_parser(
        "embed",
        help="run an ONNX encoder on an array file and save the embeddings (.npy)",
        description="Embed an array with any ONNX graph that has a named embedding output.",
    )
    m.add_argument("model", type=Path, help="ONNX model")
    m.add_argument("data", type=Path, help="array file: .npy, .npz or .parquet")
    m.add_argument("--key", help="array name inside an .npz archive (default: its only array)")
    m.add_argument("--output", default="embedding", help="name of the embedding output")
    m.add_argument("--out", type=Path, default=Path("embeddings.npy"),
                   help="where to save the embeddings (.npy)")
    m.set_defaults(func=_embed_cmd)
    return enc


def _fail(command: str, message: str) -> int:
    print(f"repwatch encoder {command}: error: {message}", file=sys.stderr)
    return 2


def _train_cmd(args: argparse.Namespace) -> int:
    from serving.encoders.data import check_training_array, load_array

    try:
        X = check_training_array(
            load_array(args.data, args.key), modality=args.modality,
            image_shape=args.image_shape, name=args.data.name,
        )
    except (OSError, ValueError, ImportError) as exc:
        return _fail("train", str(exc))
    try:
        from serving.encoders.train import TrainConfig, save_checkpoint, train_encoder
    except ImportError as exc:
        return _fail("train", f"{_TRAIN_EXTRA} ({exc})")
    try:
        config = TrainConfig(
            objective=args.objective, modality=args.modality, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, embed_dim=args.embed_dim,
            width=args.width, val_fraction=args.val_fraction, patience=args.patience,
            seed=args.seed, device=args.device,
            image_shape=list(args.image_shape) if args.image_shape else None,
        )
        result = train_encoder(X, config, progress=not args.no_progress)
    except ValueError as exc:
        return _fail("train", str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(result, args.out)
    best = result.history[result.best_epoch - 1] if result.best_epoch else result.history[-1]
    print(
        f"trained {config.objective} {config.modality} encoder on {X.shape[0]} rows: "
        f"best epoch {result.best_epoch}/{len(result.history)}, held-out loss "
        f"{best['val_loss']:.4f}{' (stopped early)' if result.stopped_early else ''}; "
        f"checkpoint {args.out}"
    )
    return 0


def _export_cmd(args: argparse.Namespace) -> int:
    try:
        import torch

        from serving.encoders.export import export_onnx, verify_export
        from serving.encoders.train import load_checkpoint
    except ImportError as exc:
        return _fail("export", f"{_TRAIN_EXTRA} ({exc})")
    try:
        encoder, _meta = load_checkpoint(args.checkpoint)
    except (OSError, ValueError) as exc:
        return _fail("export", str(exc))
    import numpy as np

    out = args.out or args.checkpoint.with_suffix(".onnx")
    # Check the graph on inputs at the data's own scale (the normalisation buffers).
    rng = np.random.default_rng(0)
    shape = (16, *encoder.input_shape)
    mean = encoder.mean.numpy()
    std = encoder.std.numpy()
    if encoder.image_shape is not None:
        sample = rng.uniform(0.0, 1.0, size=shape) * std
    else:
        sample = mean + std * rng.standard_normal(shape)
    sample = sample.astype(np.float32)
    try:
        export_onnx(encoder, torch.from_numpy(sample[:4]), out, opset=args.opset)
        diff = verify_export(encoder, out, sample)
    except (ValueError, AssertionError) as exc:
        return _fail("export", str(exc))
    print(
        f"exported {out}: input 'input' [batch, {', '.join(map(str, encoder.input_shape))}], "
        f"output 'embedding' [batch, {encoder.embed_dim}], max |onnx - torch| = {diff:.2e}"
    )
    return 0


def _embed_cmd(args: argparse.Namespace) -> int:
    import numpy as np

    from serving.encoders.data import load_array
    from serving.encoders.onnx_io import OnnxEncoder

    try:
        runner = OnnxEncoder(args.model, output=args.output)
        emb = runner.embed(load_array(args.data, args.key))
    except (OSError, ValueError, ImportError) as exc:
        return _fail("embed", str(exc))
    np.save(args.out, emb)
    print(f"wrote {emb.shape[0]} embeddings of dim {emb.shape[1]} to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m serving.encoders.cli encoder train …``."""
    from monitor.cli_format import Parser

    parser = Parser(prog="repwatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
