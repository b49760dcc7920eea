"""Export encoders to ONNX and prove the graph matches torch (torch; ``train`` extra).

Graphs have one float32 input named ``input`` with a dynamic batch axis and named outputs
(``embedding`` for an encoder), opset 18, weights embedded in the single ``.onnx`` file.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from serving.encoders.onnx_io import OnnxEncoder

OPSET = 18
# The exporter's optimiser logs every pass at INFO and warns about torchvision ops we never use.
_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's INFO/WARNING chatter for the duration of an export."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's own exporter trips its pytree deprecation; nothing a user can act on.
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    output_names: Sequence[str] = ("embedding",),
    input_name: str = "input",
    opset: int = OPSET,
) -> Path:
    """Export ``module`` (in eval mode, on the CPU) to a single self-contained ONNX file.

    Parameters
    ----------
    module : nn.Module
        Returns one tensor, or a tuple matching ``output_names``.
    example : torch.Tensor
        An example batch (batch size >= 2, so the batch axis is not specialised).
    path : str or Path
        Destination ``.onnx`` file.
    output_names : sequence of str
        Names of the graph outputs, in the order the module returns them.
    input_name : str
        Name of the graph input.
    opset : int
        ONNX opset (>= 17).

    Returns
    -------
    Path
        The written file.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; repwatch exports use opset >= 17")
    if example.shape[0] < 2:
        raise ValueError("example batch must have at least 2 rows so the batch axis stays dynamic")
    path = Path(path)
    module = module.cpu().eval()
    example = example.detach().cpu().float()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:  # only the legacy exporter returns None
        raise RuntimeError("torch.onnx.export returned no program")
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    strip_debug_metadata(path)
    return path


def strip_debug_metadata(path: str | Path) -> None:
    """Remove the exporter's per-node debug metadata (stack traces, FX nodes) from a file.

    They hold the build machine's source paths and line numbers, so two builds of the same
    weights from different checkouts would differ byte for byte; they are not needed to run.
    """
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = ""
    onnx.save(model, str(path))


def torch_outputs(module: nn.Module, X: NDArray[Any]) -> list[NDArray[np.float32]]:
    """The module's outputs on ``X`` (CPU, eval mode) as numpy arrays."""
    module = module.cpu().eval()
    with torch.no_grad():
        out: Any = module(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.numpy() for o in outs]


def verify_export(
    module: nn.Module,
    path: str | Path,
    X: NDArray[Any],
    *,
    output_names: Sequence[str] = ("embedding",),
    atol: float = 1e-5,
) -> float:
    """Run ``X`` through torch and onnxruntime; raise if any output differs by more than ``atol``.

    Returns
    -------
    float
        The largest absolute difference seen.
    """
    runner = OnnxEncoder(path, output=output_names[0])
    got = runner.run(X, list(output_names))
    worst = 0.0
    for name, ref in zip(output_names, torch_outputs(module, X), strict=True):
        if got[name].shape != ref.shape:
            raise AssertionError(
                f"output {name!r}: onnxruntime shape {got[name].shape} != torch {ref.shape}"
            )
        diff = float(np.max(np.abs(got[name] - ref))) if ref.size else 0.0
        worst = max(worst, diff)
        if diff > atol:
            raise AssertionError(
                f"output {name!r} of {Path(path).name} differs from torch by {diff:.3g} > {atol}"
            )
    return worst
