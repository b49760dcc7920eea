"""Fault-injection fixtures: the real sidecar as a process (``repwatch serve``) on the real broker,
and helpers to read its metrics (topics are read with ``tests.conftest.read_topic``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitor import localstack

DIGITS = Path(__file__).resolve().parents[2] / "serving/encoders/models/digits_classifier.onnx"


@dataclass
class SidecarProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        """Resident set size of the sidecar process (not its producer child), in MB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Factory: ``sidecar(broker, topic, **serving)`` starts ``repwatch serve`` on digits."""
    started: list[SidecarProcess] = []

    def start(
        broker: str, topic: str, *, kafka_client: str = "auto", **serving: Any
    ) -> SidecarProcess:
        if not DIGITS.is_file():
            pytest.fail("bundled digits model missing: python -m serving.encoders.build_digits")
        port = localstack.free_port()
        config = {
            "kafka": {"bootstrap_servers": [broker]},
            "topics": {"records": topic},
            "models": [{"name": "digits", "path": str(DIGITS)}],
            "serving": {
                "port": port,
                "intra_op_threads": 1,
                "kafka_client": kafka_client,
                **serving,
            },
        }
        path = tmp_path / f"sidecar-{port}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = tmp_path / f"sidecar-{port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPWATCH_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "serve", "--config", str(path)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        side = SidecarProcess(f"http://127.0.0.1:{port}", proc, log)
        started.append(side)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the sidecar exited at start:\n{side.stderr()}")
            try:
                if httpx.get(f"{side.url}/v2/health/ready", timeout=1).status_code == 200:
                    return side
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the sidecar did not become ready:\n{side.stderr()}")
            time.sleep(0.1)

    yield start
    for s in started:
        s.stop()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the sidecar's /metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    target = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(target + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
