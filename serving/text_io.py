"""Text models in the sidecar: OIP ``BYTES`` tensors in, token ids for the ONNX graph out.

A model whose configuration names a ``tokenizer`` (a ``tokenizer.json`` of the ``tokenizers``
library, the ``text`` extra) is served as a text model: its request carries one ``BYTES``
input (default name ``text``, shape ``[n]`` or ``[n, 1]``: one UTF-8 string a row) and the
sidecar feeds the graph ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` = 0 when
the graph asks for them), int64 ``[n, seq]``, padded to the longest row and truncated to
``max_length`` tokens.

On the wire (OIP v2 REST), ``BYTES`` is a JSON list of strings in ``data``, or, with the binary
tensor extension, each element as a 4-byte little-endian length followed by its bytes (what
Triton clients send). Every input is bounded: at most ``MAX_TEXTS`` rows a request and
``MAX_TEXT_BYTES`` bytes a string; a string that is not UTF-8 is a 400 naming its row.

Records of a text model carry an input digest of the token ids without padding, so the same
text gives the same digest in any batch; the raw text never leaves the request path.
"""

from __future__ import annotations

import struct
from hashlib import blake2b
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serving.oip import OIPError, Tensor

MAX_TEXTS = 1024
MAX_TEXT_BYTES = 64 * 1024
DEFAULT_INPUT = "text"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_EXTRA = 'pip install "repwatch[text-serving]" (the tokenizers library)'


def _check_count(name: str, count: int) -> None:
    if count > MAX_TEXTS:
        raise OIPError(f"input {name!r} has {count} strings; at most {MAX_TEXTS} a request", 413)


def _decode(name: str, i: int, raw: bytes) -> str:
    if len(raw) > MAX_TEXT_BYTES:
        raise OIPError(
            f"input {name!r} row {i}: {len(raw)} bytes is over the {MAX_TEXT_BYTES}-byte limit "
            "for one string", 413,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OIPError(f"input {name!r} row {i} is not valid UTF-8: {exc}") from None


def parse_bytes(
    spec: dict[str, Any], name: str, shape: list[int], binary: memoryview, offset: int
) -> tuple[Tensor, int]:
    """Read one ``BYTES`` input (JSON ``data`` or binary); returns the tensor and bytes used.

    The tensor's array is a 1-D object array of ``str``.
    """
    count = 1
    for d in shape:
        count *= d
    _check_count(name, count)
    params = spec.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    texts: list[str] = []
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise OIPError(
                f"input {name!r}: binary_data_size must be a non-negative integer within the "
                f"body ({len(binary) - offset} bytes left)"
            )
        raw = binary[offset : offset + size]
        pos = 0
        for i in range(count):
            if pos + 4 > size:
                raise OIPError(
                    f"input {name!r}: binary BYTES data ends before element {i} of {count} "
                    "(each element is a 4-byte little-endian length, then its bytes)"
                )
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > size:
                raise OIPError(f"input {name!r}: element {i} of {n} bytes runs past its data")
            texts.append(_decode(name, i, bytes(raw[pos + 4 : pos + 4 + n])))
            pos += 4 + n
        if pos != size:
            raise OIPError(
                f"input {name!r}: {size - pos} bytes left over after {count} BYTES elements"
            )
        used = size
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise OIPError(f"input {name!r} (BYTES) needs 'data': a list of strings")
        flat: list[Any] = []
        stack = [data]
        while stack:  # nested lists as shape [n, 1] may be sent; flatten row-major
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
            if len(flat) > count:
                break
        if len(flat) != count:
            raise OIPError(
                f"input {name!r}: data has {len(flat)} strings but shape {shape} needs {count}"
            )
        for i, item in enumerate(flat):
            if not isinstance(item, str):
                raise OIPError(f"input {name!r} row {i}: BYTES data must be strings")
            texts.append(_decode(name, i, item.encode("utf-8")))
        used = 0
    arr = np.empty(count, dtype=object)
    arr[:] = texts
    return Tensor(name, "BYTES", shape, arr), used


class TextInput:
    """Tokenises a model's ``BYTES`` input into the feeds of its ONNX graph.

    Parameters
    ----------
    tokenizer : Path
        ``tokenizer.json`` (``tokenizers`` library).
    graph_inputs : list of str
        Input names of the ONNX graph; must be ``input_ids`` and ``attention_mask``
        (optionally ``token_type_ids``).
    label : str
        The model, for error messages.
    input_name : str
        Name of the ``BYTES`` input requests carry.
    max_length : int
        Truncation length in tokens (the encoder's maximum, 256 for all-MiniLM-L6-v2).
    """

    def __init__(
        self,
        tokenizer: Path,
        graph_inputs: list[str],
        label: str,
        input_name: str = DEFAULT_INPUT,
        max_length: int = 256,
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError(f"{label} is a text model; serving it needs {_EXTRA}") from exc
        if not Path(tokenizer).is_file():
            raise FileNotFoundError(f"{label}: tokenizer file {tokenizer} does not exist")
        unknown = [n for n in graph_inputs if n not in TOKEN_INPUTS]
        if unknown or not {"input_ids", "attention_mask"} <= set(graph_inputs):
            raise ValueError(
                f"{label} has a tokenizer, so its graph must take input_ids and attention_mask "
                f"(optionally token_type_ids); it takes {graph_inputs}"
            )
        try:
            tok = Tokenizer.from_file(str(tokenizer))
        except Exception as exc:
            raise ValueError(f"{label}: cannot read tokenizer {tokenizer}: {exc}") from exc
        tok.enable_truncation(max_length=max_length)
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.tokenizer = tok
        self.graph_inputs = list(graph_inputs)
        self.input_name = input_name
        self.label = label

    def metadata(self) -> list[dict[str, Any]]:
        return [{"name": self.input_name, "datatype": "BYTES", "shape": [-1]}]

    def feeds(self, tensors: list[Tensor]) -> dict[str, NDArray[np.int64]]:
        if len(tensors) != 1 or tensors[0].name != self.input_name:
            names = [t.name for t in tensors]
            raise OIPError(
                f"{self.label} takes one BYTES input {self.input_name!r} (one string a row); "
                f"the request gives {names}"
            )
        t = tensors[0]
        if t.datatype != "BYTES":
            raise OIPError(
                f"input {t.name!r} has datatype {t.datatype}, {self.label} expects BYTES"
            )
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
            raise OIPError(
                f"input {t.name!r} has shape {t.shape}, {self.label} expects [n] or [n, 1]"
            )
        if t.array.size == 0:
            raise OIPError(f"input {t.name!r} is empty; send at least one string")
        batch = self.tokenizer.encode_batch(list(t.array))
        ids = np.asarray([e.ids for e in batch], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in batch], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.graph_inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    @staticmethod
    def digests(feeds: dict[str, NDArray[np.int64]]) -> NDArray[np.uint8]:
        """``(n, 16)`` blake2b digests of each row's token ids without padding."""
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        lengths = mask.sum(axis=1)
        out = np.empty((len(ids), 16), dtype=np.uint8)
        for i, (row, n) in enumerate(zip(ids, lengths, strict=True)):
            out[i] = np.frombuffer(blake2b(row[:n].tobytes(), digest_size=16).digest(), np.uint8)
        return out
