"""Helpers for ``benchmarks/serving_latency.py``: models, load tools, the sidecar process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor import localstack  # noqa: E402


# ---- models ------------------------------------------------------------------------------------
def build_cnn(path: Path) -> int:
    """A ~100k-parameter CNN on 1x28x28 inputs with ``logits`` and ``embedding`` outputs."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    inits, nodes, params = [], [], 0
    prev, channels = "input", 1
    for i, (out_c, stride) in enumerate([(32, 1), (64, 2), (64, 2), (64, 1)]):
        w = (rng.normal(size=(out_c, channels, 3, 3)) / np.sqrt(channels * 9)).astype(np.float32)
        b = np.zeros(out_c, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        params += w.size + b.size
        nodes.append(
            helper.make_node(
                "Conv",
                [prev, f"w{i}", f"b{i}"],
                [f"c{i}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, channels = f"r{i}", out_c
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["embedding"], axis=1))
    wf = (rng.normal(size=(channels, 10)) / 8).astype(np.float32)
    bf = np.zeros(10, np.float32)
    inits += [numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(bf, "bf")]
    params += wf.size + bf.size
    nodes.append(helper.make_node("Gemm", ["embedding", "wf", "bf"], ["logits"]))
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "cnn100k",
        [helper.make_tensor_value_info("input", f, ["batch", 1, 28, 28])],
        [
            helper.make_tensor_value_info("logits", f, ["batch", 10]),
            helper.make_tensor_value_info("embedding", f, ["batch", channels]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return params


def raw_run(path: Path, x: np.ndarray, seconds: float) -> dict[str, float]:
    """p50/p99 of ``session.run`` at batch 1, same options as the sidecar (1 intra-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {"input": x}
    for _ in range(200):
        sess.run(None, feeds)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1e3
    return {
        "p50": float(np.median(arr)),
        "p99": float(np.percentile(arr, 99)),
        "rps": len(times) / seconds,
    }


# ---- load tools -------------------------------------------------------------------------------
def bodies(x: np.ndarray, workdir: Path, tag: str) -> dict[str, Path]:
    """wrk Lua scripts for a binary and a JSON OIP request of ``x``."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    (workdir / f"{tag}.bin").write_bytes(header + x.tobytes())
    (workdir / f"{tag}.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "data": x.ravel().tolist(),
                    }
                ]
            }
        )
    )
    scripts = {}
    for kind, extra in (
        (
            "bin",
            f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"'
            '\nwrk.headers["Content-Type"] = "application/octet-stream"',
        ),
        ("json", 'wrk.headers["Content-Type"] = "application/json"'),
    ):
        lua = workdir / f"{tag}_{kind}.lua"
        lua.write_text(
            f'local f = io.open("{workdir / f"{tag}.{kind}"}", "rb")\n'
            'wrk.body = f:read("*a")\nf:close()\nwrk.method = "POST"\n' + extra + "\n"
        )
        scripts[kind] = lua
    return scripts


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)$", out, re.M):
        res[f"p{pct}"] = float(value) * _UNITS[unit]
    res["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = float(bad.group(1)) if bad else 0.0
    return res


def _timed(call: Any, seconds: float, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    arr = np.array(times) * 1e3
    return {"p50": float(np.median(arr)), "p99": float(np.percentile(arr, 99)),
            "rps": len(times) / seconds, "n": float(len(times))}


def grpc_client(address: str, model: str, x: np.ndarray, seconds: float) -> dict[str, float]:
    """One connection of back-to-back OIP gRPC ModelInfer calls (raw input contents), timed
    per call from a Python client (grpcio's blocking stub)."""
    import grpc

    from serving.grpc import grpc_predict_v2_pb2 as pb
    from serving.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        return _timed(lambda: stub.ModelInfer(req, timeout=10), seconds)


def http_client(url: str, body: bytes, header_length: int, seconds: float) -> dict[str, float]:
    """The same for binary OIP over HTTP/1.1 keep-alive (``http.client``), for a like-for-like
    comparison with :func:`grpc_client` (both pay a Python client's cost)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(header_length)}

    def call() -> None:
        conn.request("POST", u.path, body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")

    try:
        return _timed(call, seconds)
    finally:
        conn.close()


def cpu_seconds(stat_path: str) -> float:
    fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the sidecar as a subprocess ----------------------------------------------------------------
class Sidecar:
    def __init__(
        self,
        model: Path,
        name: str,
        broker: str | None,
        workdir: Path,
        queue_size: int = 10000,
        kafka_client: str = "auto",
        grpc: bool = False,
        compression: str = "lz4",
    ) -> None:
        self.port = localstack.free_port()
        self.grpc_port = localstack.free_port() if grpc else None
        cfg = {
            "kafka": {"bootstrap_servers": [broker or "127.0.0.1:9"],
                      "compression": compression},
            "models": [{"name": name, "path": str(model)}],
            "serving": {
                "host": "127.0.0.1",
                "port": self.port,
                "intra_op_threads": 1,
                "stream_records": broker is not None,
                "queue_size": queue_size,
                "kafka_client": kafka_client,
                "grpc_port": self.grpc_port,
            },
        }
        path = workdir / f"{name}-{self.port}.yaml"
        path.write_text(json.dumps(cfg))
        self.log = open(workdir / f"{name}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monitor.cli",
                "--log-level",
                "WARNING",
                "serve",
                "--config",
                str(path),
            ],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        localstack.wait_port(self.port, self.proc, timeout=60)
        localstack.wait_http(f"{self.url}/v2/health/ready", timeout=30)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stream_state(self) -> tuple[str, float]:
        """The record stream's state from ``/v2/health/ready`` and how long the probe took (ms)."""
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=10) as r:
            doc = json.loads(r.read())
        took = (time.perf_counter() - t0) * 1000
        return str(doc.get("stream", {}).get("state", "n/a")), took

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("repwatch_serving_records_") or line.startswith(
                (
                    "repwatch_serving_producer_errors_total",
                    "repwatch_serving_record_queue_depth",
                    "repwatch_serving_record_stream_degraded",
                )
            ):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the event-loop thread, the other threads, child processes."""
        pid = self.proc.pid
        out = {"main": 0.0, "threads": 0.0, "producer": 0.0}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                t = cpu_seconds(f"/proc/{pid}/task/{tid}/stat")
            except OSError:
                continue
            out["main" if int(tid) == pid else "threads"] += t
        kids: set[str] = set()
        for tid in os.listdir(f"/proc/{pid}/task"):  # a thread's children are listed under it
            with contextlib.suppress(OSError):
                kids.update(Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        for kid in kids:
            with contextlib.suppress(OSError):
                out["producer"] += cpu_seconds(f"/proc/{kid}/stat")
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
