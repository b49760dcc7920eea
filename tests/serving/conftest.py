"""Fixtures for the serving sidecar tests: tiny ONNX graphs, a capturing producer, a live server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.localstack import free_port

DIGITS_DIR = Path(__file__).resolve().parents[2] / "serving" / "encoders" / "models"

# Weights of the tiny graphs, so tests can compute expected outputs with numpy.
W_LOGITS = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 7.0
W_EMBED = (np.arange(20, dtype=np.float32).reshape(4, 5) - 9.0) / 11.0
W_ENCODER = (np.arange(24, dtype=np.float32).reshape(4, 6) - 12.0) / 13.0


def tiny_outputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x @ W_LOGITS, np.tanh(x @ W_EMBED)


def tiny_encoder(x: np.ndarray) -> np.ndarray:
    return np.tanh(x @ W_ENCODER)


def _save(
    path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]
) -> Path:
    from onnx import helper, save

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``model``: input ``input`` [-1, 4] -> ``logits`` [-1, 3], ``embedding`` [-1, 5];
    ``encoder``: input ``x`` [-1, 4] -> ``embedding`` [-1, 6]; ``fixed``: input [2, 4]."""
    from onnx import TensorProto, helper, numpy_helper

    d = tmp_path_factory.mktemp("onnx")
    f = TensorProto.FLOAT

    def vi(name: str, shape: list[Any]) -> Any:
        return helper.make_tensor_value_info(name, f, shape)

    model = _save(
        d / "tiny.onnx",
        [
            helper.make_node("MatMul", ["input", "WL"], ["logits"]),
            helper.make_node("MatMul", ["input", "WE"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["embedding"]),
        ],
        [vi("input", ["batch", 4])],
        [vi("logits", ["batch", 3]), vi("embedding", ["batch", 5])],
        [numpy_helper.from_array(W_LOGITS, "WL"), numpy_helper.from_array(W_EMBED, "WE")],
    )
    encoder = _save(
        d / "tiny_encoder.onnx",
        [
            helper.make_node("MatMul", ["x", "W"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["embedding"]),
        ],
        [vi("x", ["batch", 4])],
        [vi("embedding", ["batch", 6])],
        [numpy_helper.from_array(W_ENCODER, "W")],
    )
    fixed = _save(
        d / "fixed.onnx",
        [helper.make_node("MatMul", ["input", "WL"], ["logits"])],
        [vi("input", [2, 4])],
        [vi("logits", [2, 3])],
        [numpy_helper.from_array(W_LOGITS, "WL")],
    )
    return {"model": model, "encoder": encoder, "fixed": fixed}


class _Future:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def add_callback(self, fn: Any, *args: Any) -> None:
        if self.ok:
            fn(*args, None)

    def add_errback(self, fn: Any, *args: Any) -> None:
        if not self.ok:
            fn(*args, RuntimeError("broker down (test)"))


class CaptureProducer:
    """Stands in for KafkaProducer where the broker is not the subject of the test."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self) -> CaptureProducer:
        return self

    def send(self, topic: str, key: bytes, value: bytes) -> _Future:
        if not self.fail:
            with self.lock:
                self.messages.append((topic, key, value))
        return _Future(not self.fail)

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple[str, bytes, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)


@pytest.fixture
def capture() -> CaptureProducer:
    return CaptureProducer()


@dataclass
class LiveServer:
    url: str
    app: Any
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_server(app: Any) -> LiveServer:
    """Run ``app`` under a real uvicorn on a free loopback port, in a thread."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return LiveServer(f"http://127.0.0.1:{port}", app, server, thread)


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    target = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(target + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def live_server() -> Iterator[Any]:
    """Factory: ``live_server(app)`` runs it on loopback; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        s = start_server(app)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def prom_value() -> Any:
    return metric


@pytest.fixture(scope="session")
def tiny_expected() -> Any:
    """``(tiny_outputs, tiny_encoder)``: numpy versions of the tiny graphs."""
    return tiny_outputs, tiny_encoder
