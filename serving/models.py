"""A served model: its ONNX session (or upstream, in tap mode), SSL encoder, and inference.

Which output is the embedding: ``embedding_output`` of the task graph when it has one;
otherwise the separate SSL encoder (``encoder_path``) run on the same input, on the record
stream's thread (off the request path). Which output is the logits: ``logits_output``, or an
output called ``logits`` when there is one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.config import ModelConfig
from serving.batching import Batcher
from serving.oip import InferRequest, OIPError
from serving.session import ModelSession
from serving.text_io import DEFAULT_INPUT, TextInput

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"


@dataclass(slots=True)
class Inference:
    """What one infer call produced: the response outputs and the parts a record needs."""

    outputs: list[tuple[str, NDArray[Any], bool]]
    embeddings: NDArray[Any] | None  # (n, d) when the task graph computes them
    logits: NDArray[Any] | None
    inputs: NDArray[Any]  # the input the encoder/digest read, (n, ...)
    penultimate: NDArray[Any] | None = None  # (n, f) when the model config streams it


class ServedModel:
    def __init__(
        self,
        config: ModelConfig,
        *,
        intra_op_threads: int = 0,
        nan_policy: str = "reject",
        dynamic_batching: bool = False,
        max_batch_size: int = 32,
        batch_timeout: float = 0.001,
    ) -> None:
        self.config = config
        self.name = config.name
        self.version = config.version
        self.tap = config.upstream_url is not None
        self.check_finite = nan_policy == "reject"
        label = f"model {config.name!r}"
        self.session: ModelSession | None = None
        self.encoder: ModelSession | None = None
        self.batcher: Batcher | None = None
        if config.path is None and config.upstream_url is None:
            raise ValueError(f"{label}: give 'path' (an ONNX file) or 'upstream_url' (tap mode)")
        if config.path is not None:
            self.session = ModelSession(config.path, label, intra_op_threads=intra_op_threads)
        self.text: TextInput | None = None  # a text model: BYTES in, tokenised here
        if config.tokenizer is not None:
            if self.session is None:
                raise ValueError(f"{label}: 'tokenizer' needs 'path' (tap mode sends no text)")
            self.text = TextInput(
                config.tokenizer,
                [i.name for i in self.session.inputs],
                label,
                config.input_name or DEFAULT_INPUT,
            )
        if config.encoder_path is not None:
            self.encoder = ModelSession(
                config.encoder_path, f"SSL encoder of {label}", intra_op_threads=intra_op_threads
            )
            if config.embedding_output not in self.encoder.output_names:
                raise ValueError(
                    f"SSL encoder of {label} has no output {config.embedding_output!r}; "
                    f"it has {self.encoder.output_names} (set embedding_output)"
                )
        self.embedding_index: int | None = None
        self.logits_index: int | None = None
        self.penultimate_index: int | None = None
        if self.session is not None:
            names = self.session.output_names
            if self.encoder is None:
                if config.embedding_output not in names:
                    raise ValueError(
                        f"{label} has no output {config.embedding_output!r} and no encoder_path; "
                        f"its outputs are {names} (set embedding_output or encoder_path)"
                    )
                self.embedding_index = names.index(config.embedding_output)
            logits = config.logits_output or ("logits" if "logits" in names else None)
            if logits is not None:
                if logits not in names:
                    raise ValueError(f"{label} has no logits output {logits!r}; it has {names}")
                self.logits_index = names.index(logits)
            pen = config.penultimate_output
            if pen is not None:
                if pen not in names:
                    raise ValueError(f"{label} has no output {pen!r} to stream as the "
                                     f"penultimate feature; its outputs are {names} (set "
                                     "penultimate_output)")
                self.penultimate_index = names.index(pen)
            if dynamic_batching and self.text is not None:
                log.info("%s: text rows differ in length; dynamic batching is off for it", label)
            elif dynamic_batching and self.session.batchable:
                self.batcher = Batcher(self.session, max_batch_size, batch_timeout)
            elif dynamic_batching:
                log.warning("%s: no dynamic batch axis; dynamic batching is off for it", label)
        elif self.encoder is None:
            raise ValueError(
                f"{label}: tap mode needs encoder_path (the SSL encoder to embed with)"
            )
        elif config.penultimate_output is not None:
            raise ValueError(f"{label}: penultimate_output needs 'path' (tap mode cannot read "
                             "the task model's layers)")
        self.logits_name = config.logits_output or "logits"
        source = self.session or self.encoder
        assert source is not None
        self.input_name = config.input_name or source.inputs[0].name
        if self.text is not None:
            self.input_name = self.text.input_name
        self.embedding_dim = config.embedding_dim
        if self.embedding_dim is None:
            emb_spec = (self.encoder or self.session).outputs  # type: ignore[union-attr]
            for spec in emb_spec:
                if spec.name == config.embedding_output and spec.shape and spec.shape[-1] > 0:
                    self.embedding_dim = spec.shape[-1]
        self._output_names = self.session.output_names if self.session else []

    # ---- metadata ------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        return (self.session or self.encoder).providers  # type: ignore[union-attr]

    def metadata(self) -> dict[str, Any]:
        assert self.session is not None
        params: dict[str, Any] = {"execution_providers": self.session.providers}
        if self.encoder is not None:
            params["encoder_execution_providers"] = self.encoder.providers
        params["embedding_output"] = self.config.embedding_output
        params["dynamic_batching"] = self.batcher is not None
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": self.text.metadata()
            if self.text is not None
            else [s.as_metadata() for s in self.session.inputs],
            "outputs": [s.as_metadata() for s in self.session.outputs],
            "parameters": params,
        }

    # ---- inference -----------------------------------------------------------------------
    def prepare(self, request: InferRequest) -> dict[str, NDArray[Any]]:
        assert self.session is not None
        if self.text is not None:
            feeds = self.text.feeds(request.inputs)
        else:
            feeds = self.session.feeds(request.inputs)
        if self.check_finite and self.text is None:
            for name, arr in feeds.items():
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    raise OIPError(
                        f"input {name!r} contains NaN or inf (serving.nan_policy is 'reject')"
                    )
        if request.outputs is not None:
            unknown = [n for n in request.outputs if n not in self._output_names]
            if unknown:
                raise OIPError(
                    f"requested outputs {unknown} are not outputs of model {self.name!r}; "
                    f"it has {self._output_names}"
                )
        return feeds

    def run(self, feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        assert self.session is not None
        return self.session.run(feeds)

    def finish(
        self, request: InferRequest, feeds: dict[str, NDArray[Any]], results: list[NDArray[Any]]
    ) -> Inference:
        names = self._output_names
        if request.outputs is None:
            binary = request.binary_default
            outputs = [(n, r, binary) for n, r in zip(names, results, strict=True)]
        else:
            by_name = dict(zip(names, results, strict=True))
            outputs = [(n, by_name[n], b) for n, b in request.outputs.items()]
        emb = None if self.embedding_index is None else results[self.embedding_index]
        logits = None if self.logits_index is None else results[self.logits_index]
        inputs = feeds[self.input_name] if self.text is None else TextInput.digests(feeds)
        pen = None if self.penultimate_index is None else results[self.penultimate_index]
        return Inference(outputs, emb, logits, inputs, pen)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
