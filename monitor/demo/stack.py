"""The processes and clients the demo drives: the serving sidecar, a producer, PromQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

CLIENT_KEY_ENV = "REPWATCH_DEMO_CLIENT_ID_KEY"


def promql(url: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
        return result


def wait(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def produce(broker: str, topic: str, X: np.ndarray, start: int) -> list[str]:
    """Embeddings straight to Kafka (the ``--synthetic`` path); returns their record ids."""
    from kafka import KafkaProducer

    from monitor import records as R

    p = KafkaProducer(bootstrap_servers=broker, linger_ms=10)
    ids = [f"req-{start + i:06d}" for i in range(len(X))]
    for rid, x in zip(ids, X, strict=True):
        p.send(topic, key=b"digits", value=R.encode(R.Record(
            model="digits", model_version="1", record_id=rid,
            timestamp_ms=int(time.time() * 1000), embedding=x)))
    p.flush(30)
    p.close()
    return ids


class Sidecar:
    """``repwatch serve`` on the bundled digits classifier, as its own process (loopback)."""

    def __init__(self, broker: str, topics: dict[str, str], work: Path,
                 model_extras: dict[str, Any] | None = None) -> None:
        import yaml

        from monitor import localstack
        from serving.encoders.models import DIGITS_CLASSIFIER

        self.port = localstack.free_port()
        config = {
            "kafka": {"bootstrap_servers": [broker]},
            "topics": topics,
            "models": [{"name": "digits", "version": "1", "path": str(DIGITS_CLASSIFIER),
                        "embedding_output": "embedding", "logits_output": "logits",
                        **(model_extras or {})}],
            "serving": {"host": "127.0.0.1", "port": self.port, "intra_op_threads": 1,
                        # a known key: the demo names the clients behind alert pseudonyms
                        "client_id_key": {"env": CLIENT_KEY_ENV}},
        }
        (work / "serve.yaml").write_text(yaml.safe_dump(config))
        self.log = open(work / "sidecar.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING", "serve",
             "--config", str(work / "serve.yaml")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            localstack.wait_http(f"{self.url}/v2/health/ready", timeout=60)
        except BaseException:
            self.stop()
            raise

    def infer(self, rows: np.ndarray, client: str) -> tuple[int, list[str]]:
        """One OIP JSON request; (HTTP status, record ids the sidecar gave the rows)."""
        body = json.dumps({"inputs": [{
            "name": "input", "datatype": "FP32", "shape": list(rows.shape),
            "data": rows.ravel().tolist()}]}).encode()
        req = urllib.request.Request(
            f"{self.url}/v2/models/digits/infer", data=body, method="POST",
            headers={"Content-Type": "application/json", "X-Client-Id": client})
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc = json.load(resp)
            rid = (doc.get("parameters") or {}).get("record_id")
            n = int(rows.shape[0])
            ids = [] if not rid else [str(rid)] if n == 1 else [f"{rid}:{i}" for i in range(n)]
            return int(resp.status), ids

    def feedback(self, ids: list[str], labels: list[int], client: str) -> int:
        """``POST /v1/feedback``: a label for each record id; the HTTP status."""
        body = json.dumps({"model": "digits", "feedback": [
            {"id": rid, "label": int(label)} for rid, label in zip(ids, labels, strict=True)]})
        req = urllib.request.Request(
            f"{self.url}/v1/feedback", data=body.encode(), method="POST",
            headers={"Content-Type": "application/json", "X-Client-Id": client})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # graceful: the sidecar flushes its record queue
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
