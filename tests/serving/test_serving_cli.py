"""``repwatch serve``: starts from a config file, serves, and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from monitor import localstack

ROOT = Path(__file__).resolve().parents[2]


def test_serve_runs_and_stops_on_sigterm(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import grpc

    from serving.grpc import grpc_predict_v2_pb2 as pb
    from serving.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    port, grpc_port = localstack.free_port(), localstack.free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        json.dumps(
            {
                "models": [{"name": "tiny", "path": str(tiny_models["model"])}],
                "serving": {"port": port, "stream_records": False},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "serve", "--config", str(cfg), "--grpc-port",
         str(grpc_port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        localstack.wait_port(port, proc, timeout=60)
        localstack.wait_http(f"http://127.0.0.1:{port}/v2/health/ready", timeout=30)
        body = json.dumps(
            {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
                ]
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/tiny/infer", data=body, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["model_name"] == "tiny"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # --grpc-port
            live = GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
            assert live.live
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully (lifespan: record stream flushed), then re-raises SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM), out.decode()
    assert b"serving sidecar stopped" in out


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"serving": {"port": "x"}}, "serving.port"),
        ({"models": [{"name": "m", "path": "/nonexistent.onnx"}]}, "does not exist"),
        ({"models": []}, "no model to serve"),
    ],
)
def test_serve_config_errors_exit_2(
    tmp_path: Path, config: dict[str, object], fragment: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "serve", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
