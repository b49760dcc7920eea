"""Run and check exported encoders with onnxruntime (no torch: this is the inference path).

:class:`OnnxEncoder` wraps an ``onnxruntime.InferenceSession`` of any graph with a named
embedding output (a repwatch export, a bundled model or a user's own graph) and validates
inputs before they reach the runtime, so errors name the problem instead of an ORT stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray


def output_names(path: str | Path) -> list[str]:
    """Names of a graph's outputs, read with ``onnx`` if present, else with onnxruntime."""
    return [o.name for o in _session(path).get_outputs()]


def _session(path: str | Path, providers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), opts, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ValueError(f"onnxruntime cannot load {path}: {exc}") from exc


class OnnxEncoder:
    """An ONNX graph used as an encoder: ``embed(X)`` returns its named embedding output.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    output : str
        Name of the embedding output (``"embedding"`` for repwatch exports).
    providers : list of str, optional
        onnxruntime execution providers; CPU by default.

    Raises
    ------
    ValueError
        When the graph has no output called ``output`` (the message lists the ones it has),
        or more than one input.
    """

    def __init__(
        self, path: str | Path, output: str = "embedding", providers: list[str] | None = None
    ) -> None:
        self.path = Path(path)
        self.session = _session(self.path, providers)
        names = [o.name for o in self.session.get_outputs()]
        if output not in names:
            raise ValueError(
                f"ONNX model {self.path.name} has no output named {output!r}; its outputs are "
                f"{names}. Pass the right name, or export with a named embedding output."
            )
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(
                f"ONNX model {self.path.name} has {len(inputs)} inputs "
                f"{[i.name for i in inputs]}; an encoder takes exactly one tensor"
            )
        self.output = output
        self.input_name: str = inputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)
        dims = self.session.get_outputs()[names.index(output)].shape
        self.embed_dim: int | None = dims[-1] if isinstance(dims[-1], int) else None

    def check_input(self, X: Any) -> NDArray[np.float32]:
        """Validate a batch against the graph's input: numeric, finite, right fixed dims."""
        arr = np.asarray(X)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"input must be a numeric array, got dtype {arr.dtype}")
        if arr.ndim != len(self.input_shape):
            raise ValueError(
                f"input has shape {arr.shape}, model {self.path.name} expects "
                f"{len(self.input_shape)}-D input {self.input_shape} (batch first)"
            )
        for axis, (got, want) in enumerate(zip(arr.shape, self.input_shape, strict=True)):
            if isinstance(want, int) and got != want:
                raise ValueError(
                    f"input has {got} values on axis {axis} (shape {arr.shape}); model "
                    f"{self.path.name} expects {self.input_shape}"
                )
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(
                f"input contains NaN or inf (first at index {tuple(int(i) for i in bad)})"
            )
        return arr

    def run(self, X: Any, outputs: list[str] | None = None) -> dict[str, NDArray[Any]]:
        """Run the graph on a validated batch; returns ``{output name: array}``."""
        names = outputs or [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {self.input_name: self.check_input(X)})
        return dict(zip(names, values, strict=True))

    def embed(self, X: Any) -> NDArray[np.float32]:
        """Embeddings of a batch, shape ``(n, embed_dim)``."""
        return np.asarray(self.run(X, [self.output])[self.output], dtype=np.float32)
