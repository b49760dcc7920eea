"""onnxruntime sessions: execution-provider choice, input validation, and what the model exposes.

onnxruntime-gpu silently falls back to the CPU when the CUDA libraries are missing, so the
providers a session *actually* got are read back from ``session.get_providers()``, logged, and
reported in the model metadata; a requested accelerator that did not come up is a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from serving.limits import LimitError
from serving.oip import DATATYPES, ORT_TYPES, OIPError, Tensor

log = logging.getLogger(__name__)

# Preferred order; only those onnxruntime reports as available are asked for.
ACCELERATED = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    def as_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def choose_providers(available: Sequence[str]) -> list[str]:
    """TensorRT, then CUDA, when onnxruntime offers them; the CPU always last."""
    return [p for p in ACCELERATED if p in available] + ["CPUExecutionProvider"]


class ModelSession:
    """One ONNX graph loaded in onnxruntime, with the checks a server needs before ``run``.

    Parameters
    ----------
    path : Path
        The ``.onnx`` file.
    label : str
        Name used in log lines and error messages (``"model 'digits'"``).
    intra_op_threads : int
        onnxruntime intra-op threads; 0 keeps onnxruntime's default. 1 is fastest for small
        models at batch 1 (no thread-pool hand-off).
    providers : sequence of str, optional
        Force these execution providers instead of the automatic choice.
    """

    def __init__(
        self,
        path: Path,
        label: str,
        *,
        intra_op_threads: int = 0,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"{label}: ONNX file {path} does not exist")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
            opts.inter_op_num_threads = 1
        wanted = list(providers) if providers else choose_providers(ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=wanted)
        except Exception as exc:
            raise ValueError(f"{label}: onnxruntime cannot load {path}: {exc}") from exc
        self.label = label
        self.path = Path(path)
        self.providers: list[str] = list(self.session.get_providers())
        missing = [p for p in wanted if p not in self.providers]
        if missing:
            log.warning(
                "%s: execution providers %s did not start (onnxruntime fell back to %s)",
                label,
                missing,
                self.providers,
            )
        log.info("%s: loaded %s with execution providers %s", label, path, self.providers)
        self.inputs = [
            TensorSpec(i.name, ORT_TYPES.get(i.type, i.type), _dims(i.shape))
            for i in self.session.get_inputs()
        ]
        self.outputs = [
            TensorSpec(o.name, ORT_TYPES.get(o.type, o.type), _dims(o.shape))
            for o in self.session.get_outputs()
        ]
        self.output_names = [o.name for o in self.outputs]
        self._inputs_by_name = {i.name: i for i in self.inputs}
        self._run = self.session.run

    @property
    def batchable(self) -> bool:
        """Every input and output has a dynamic leading (batch) axis."""
        return all(s.shape and s.shape[0] == -1 for s in (*self.inputs, *self.outputs))

    def feeds(self, tensors: list[Tensor]) -> dict[str, NDArray[Any]]:
        """Check request tensors against the graph's inputs; errors name the problem."""
        specs = self._inputs_by_name
        if len(tensors) == 1 and len(specs) == 1:
            t = tensors[0]
            spec = specs.get(t.name)
            if spec is None:
                raise OIPError(
                    f"input {t.name!r} is not an input of {self.label}; it takes "
                    f"{self.inputs[0].name!r}"
                )
            self._check(t, spec)
            return {t.name: t.array}
        feeds: dict[str, NDArray[Any]] = {}
        for t in tensors:
            spec = specs.get(t.name)
            if spec is None:
                raise OIPError(
                    f"input {t.name!r} is not an input of {self.label}; it takes {sorted(specs)}"
                )
            if t.name in feeds:
                raise OIPError(f"input {t.name!r} is given twice")
            self._check(t, spec)
            feeds[t.name] = t.array
        absent = [n for n in specs if n not in feeds]
        if absent:
            raise OIPError(f"{self.label} needs inputs {absent}, which the request does not give")
        return feeds

    def _check(self, t: Tensor, spec: TensorSpec) -> None:
        if t.datatype != spec.datatype:
            raise OIPError(
                f"input {t.name!r} has datatype {t.datatype}, {self.label} expects {spec.datatype}"
            )
        shape = t.shape
        if len(shape) != len(spec.shape) or any(
            e != -1 and d != e for d, e in zip(shape, spec.shape, strict=True)
        ):
            want = ["-1" if e == -1 else str(e) for e in spec.shape]
            raise OIPError(
                f"input {t.name!r} has shape {list(shape)}, {self.label} expects "
                f"[{', '.join(want)}] (-1 = any)"
            )

    def run(
        self, feeds: dict[str, NDArray[Any]], output_names: list[str] | None = None
    ) -> list[NDArray[Any]]:
        return self._run(output_names, feeds)


def input_dtype(spec: TensorSpec) -> np.dtype[Any]:
    return DATATYPES[spec.datatype]


class RunControl:
    """One request's handle on its ``session.run``: terminate it from another thread (request
    timeout), or after ``timeout`` seconds of its own (the request's ``parameters.timeout``)."""

    def __init__(self) -> None:
        self.timeout: float | None = None
        self._options: Any = None
        self._terminated = False
        self._lock = threading.Lock()

    def run(
        self, session: ModelSession, feeds: dict[str, NDArray[Any]], *, shrink: bool = False
    ) -> list[NDArray[Any]]:
        """``session.run`` under this control; ``shrink`` returns the arena's memory after."""
        import onnxruntime as ort

        options = ort.RunOptions()
        if shrink:  # onnxruntime's CPU arena otherwise keeps the peak of the largest batch
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        with self._lock:
            self._options = options
            if self._terminated:
                options.terminate = True
        timer = None
        if self.timeout is not None:
            timer = threading.Timer(self.timeout, self.terminate)
            timer.daemon = True
            timer.start()
        try:
            return session.session.run(None, feeds, options)
        except Exception:
            if self._terminated:
                raise LimitError(
                    "inference was stopped at its timeout (parameters.timeout, or "
                    "serving.request_timeout_seconds)",
                    "timeout",
                    503,
                ) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def terminate(self) -> None:
        with self._lock:
            self._terminated = True
            if self._options is not None:
                self._options.terminate = True


def is_client_error(exc: BaseException) -> bool:
    """onnxruntime refused the request's values (e.g. an index out of range): a 400, not a 500."""
    return type(exc).__name__ in ("InvalidArgument", "InvalidProtobuf")


_libc: Any = None
_last_release = 0.0


def release_memory(min_interval: float = 1.0) -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise), at most once a
    ``min_interval``: after a large batch the RSS returns near its baseline."""
    global _libc, _last_release
    now = time.monotonic()
    if now - _last_release < min_interval:
        return
    _last_release = now
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc: nothing to do
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
