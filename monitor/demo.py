"""``repwatch demo``: the whole platform end to end on a local stack, in one command (~15 s).

Starts Tansu, Prometheus (with the shipped alert rules) and Alertmanager on loopback, the serving
sidecar (``repwatch serve``) on the bundled digits classifier, and a monitor worker in-process
(consumer group, metrics endpoint, signed webhook). It sends a clean phase of held-out digit
images, then a drifted phase (digits 8–9 mixed in), as Open Inference Protocol requests; the
sidecar streams their embeddings to Kafka. It prints the drift alert CloudEvent from
``repwatch.alerts`` and from the webhook, PromQL answers and the Alertmanager notification.
``--synthetic`` (or missing bundled models) skips the sidecar and produces Gaussian embeddings
straight to Kafka. Everything is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported by the handlers: `repwatch --help` stays fast
    import numpy as np


SECRET = b"demo-webhook-secret"
# The shipped alert rules (dashboards/rules/) when run from a checkout; a minimal rule otherwise.
SHIPPED_RULES = Path(__file__).resolve().parents[1] / "dashboards" / "rules" / "repwatch.rules.yml"
RULES = """groups:
- name: repwatch-demo
  rules:
  - alert: RepwatchDrift
    expr: max by (model, detector) (repwatch_drift_detected) == 1
    labels: {severity: warning}
    annotations: {summary: "drift on {{ $labels.model }} ({{ $labels.detector }})"}
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end demo: sidecar -> Kafka -> monitor -> Prometheus -> Alertmanager "
        "(local stack, loopback only)",
        description="Start a broker, Prometheus and Alertmanager on loopback, send a clean then a "
        "drifted phase of digit images through the serving sidecar, and print the alerts from "
        "Kafka and a signed webhook, PromQL answers and the Alertmanager notification.",
    )
    p.add_argument("--records", type=int, default=1500, help="records per phase")
    p.add_argument("--synthetic", action="store_true",
                   help="send synthetic embeddings straight to Kafka instead of images through "
                   "the bundled digits models")
    p.set_defaults(func=run)


def _embeddings(
    synthetic: bool, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, tuple[np.ndarray, np.ndarray] | None]:
    """(reference, clean phase, drifted phase, description, raw images of both phases).

    With the bundled models, the phases are *images*: the sidecar computes their embeddings.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    if not synthetic:
        try:
            import onnxruntime as ort

            from serving.encoders.models import DIGITS_ENCODER, digits_data

            X, _, split = digits_data()
            sess = ort.InferenceSession(str(DIGITS_ENCODER), providers=["CPUExecutionProvider"])
            emb = sess.run(["embedding"], {"input": X})[0].astype(np.float32)
            ref = emb[split["train"] + split["val"]]
            test_idx, ood_idx = np.asarray(split["test"]), np.asarray(split["ood"])
            clean_idx = test_idx[rng.integers(0, len(test_idx), n)]
            mixed_idx = np.where(rng.random(n) < 0.6, ood_idx[rng.integers(0, len(ood_idx), n)],
                                 test_idx[rng.integers(0, len(test_idx), n)])
            return (ref, emb[clean_idx], emb[mixed_idx],
                    "bundled digits models: reference = SSL embeddings of digits 0-7 train/val; "
                    "clean = held-out 0-7 images, drifted = 60% digits 8-9, both sent as OIP "
                    "inference requests to the serving sidecar",
                    (X[clean_idx].astype(np.float32), X[mixed_idx].astype(np.float32)))
        except (ImportError, OSError, KeyError) as exc:
            print(f"(digits models unavailable: {exc}; using synthetic embeddings)")
    ref = rng.normal(size=(2000, 32))
    return (ref, rng.normal(size=(n, 32)).astype(np.float32),
            rng.normal(0.4, 1.0, size=(n, 32)).astype(np.float32),
            "synthetic 32-d Gaussians, drifted phase shifted by 0.4 per dimension", None)


def _promql(url: str, query: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        result: list[dict[str, Any]] = json.load(resp)["data"]["result"]
        return result


def _produce(broker: str, topic: str, X: np.ndarray, start: int) -> None:

    from kafka import KafkaProducer

    from monitor import records as R

    p = KafkaProducer(bootstrap_servers=broker, linger_ms=10)
    for i, x in enumerate(X):
        p.send(topic, key=b"digits", value=R.encode(R.Record(
            model="digits", model_version="1", record_id=f"req-{start + i:06d}",
            timestamp_ms=int(time.time() * 1000), embedding=x)))
    p.flush(30)
    p.close()


class _Sidecar:
    """``repwatch serve`` on the bundled digits classifier, as its own process."""

    def __init__(self, broker: str, work: Path) -> None:
        import subprocess
        import sys

        import yaml

        from monitor import localstack
        from serving.encoders.models import DIGITS_CLASSIFIER

        self.port = localstack.free_port()
        config = {
            "kafka": {"bootstrap_servers": [broker]},
            "models": [{"name": "digits", "version": "1", "path": str(DIGITS_CLASSIFIER),
                        "embedding_output": "embedding", "logits_output": "logits"}],
            "serving": {"host": "127.0.0.1", "port": self.port, "intra_op_threads": 1},
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
        except Exception:
            self.stop()
            raise

    def infer(self, images: np.ndarray, batch: int = 20) -> int:
        """Send ``images`` as OIP JSON requests of ``batch`` rows; returns requests answered 200."""
        ok = 0
        for i in range(0, len(images), batch):
            rows = images[i:i + batch]
            body = json.dumps({"inputs": [{
                "name": "input", "datatype": "FP32", "shape": list(rows.shape),
                "data": rows.ravel().tolist()}]}).encode()
            req = urllib.request.Request(
                f"{self.url}/v2/models/digits/infer", data=body, method="POST",
                headers={"Content-Type": "application/json", "X-Client-Id": f"client-{i % 7}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                ok += resp.status == 200
        return ok

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # graceful: the sidecar flushes its record queue
            try:
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
        self.log.close()


def _wait(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from kafka import KafkaConsumer

    from monitor import localstack
    from monitor.alerts import verify
    from monitor.config import Config
    from monitor.metrics import serve_metrics
    from monitor.runtime import Worker

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="repwatch-demo-"))
    ref, clean, drifted, what, images = _embeddings(args.synthetic, args.records)
    print(f"embeddings: {what}; reference {ref.shape[0]} x {ref.shape[1]}")
    np.save(work / "reference.npy", ref)
    (work / "rules.yml").write_text(
        SHIPPED_RULES.read_text() if SHIPPED_RULES.exists() else RULES
    )
    receiver = localstack.WebhookReceiver()
    with (
        localstack.running(localstack.start_tansu()) as broker,
        localstack.running(localstack.start_alertmanager(f"{receiver.url}/alertmanager")) as am,
        localstack.running(localstack.start_prometheus(
            [], rule_files=[work / "rules.yml"], alertmanager=am.address)) as prom,
    ):
        import os

        os.environ["REPWATCH_DEMO_WEBHOOK_SECRET"] = SECRET.decode()
        config = Config.model_validate({
            "kafka": {"bootstrap_servers": [broker.address]},
            "models": [{"name": "digits", "reference": str(work / "reference.npy"), "detectors": [
                {"name": "drift.mmd", "params": {"n_permutations": 200},
                 "window": {"kind": "count", "size": 500, "min_records": 100},
                 "severity": "critical"},
                {"name": "ood.knn", "params": {"k": 10, "fpr": 0.01},
                 "window": {"kind": "count", "size": 500}, "min_flagged_fraction": 0.1},
            ]}],
            "alerts": {"webhooks": [{"url": f"{receiver.url}/webhook",
                                     "secret": {"env": "REPWATCH_DEMO_WEBHOOK_SECRET"}}]},
            "monitor": {"checkpoint_dir": str(work / "state"), "checkpoint_interval_seconds": 1,
                        "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
        })
        worker = Worker(config)
        metrics = serve_metrics(worker.registry)
        sidecar = _Sidecar(broker.address, work) if images is not None else None
        targets = [f"127.0.0.1:{metrics.port}"]
        if sidecar is not None:
            targets.append(f"127.0.0.1:{sidecar.port}")
            print(f"serving sidecar: {sidecar.url}/v2/models/digits/infer (records -> Kafka)")
        localstack.set_scrape_targets(prom, targets)
        thread = threading.Thread(target=worker.run, kwargs={"install_signals": False},
                                  daemon=True)
        thread.start()
        print(f"stack: broker {broker.address}, prometheus {prom.url}, alertmanager {am.url}, "
              f"worker metrics http://127.0.0.1:{metrics.port}/metrics")
        try:
            if sidecar is not None and images is not None:
                answered = sidecar.infer(images[0])
                print(f"[clean phase] {len(images[0])} images in {answered} OIP requests, all 200")
            else:
                _produce(broker.address, config.topics.records, clean, 0)
            _wait(lambda: worker.processed >= len(clean), 60)
            print(f"\n[clean phase] {worker.processed} records processed, "
                  f"webhook alerts so far: {len(receiver.wait('/webhook', 1))}")
            if sidecar is not None and images is not None:
                answered = sidecar.infer(images[1])
                print(f"[drifted phase] {len(images[1])} images in {answered} OIP requests")
            else:
                _produce(broker.address, config.topics.records, drifted, len(clean))
            _wait(lambda: worker.processed >= len(clean) + len(drifted), 60)
            print(f"[drifted phase] {worker.processed} records processed in total")
            hooks = receiver.wait("/webhook", 15)
            drift = [(h, b) for h, b in hooks if b'"io.repwatch.alert.drift"' in b]
            if drift:
                headers, body = drift[0]
                event = json.loads(body)
                print("\ndrift alert CloudEvent (webhook, signature "
                      f"{'valid' if verify(body, SECRET, headers) else 'BAD'}):")
                print(json.dumps(event, indent=2))
            print(f"webhook deliveries: {[json.loads(b)['type'] for _, b in hooks]}")
            consumer = KafkaConsumer(config.topics.alerts, bootstrap_servers=broker.address,
                                     auto_offset_reset="earliest", consumer_timeout_ms=3000,
                                     enable_auto_commit=False)
            on_topic = [json.loads(m.value) for m in consumer]
            consumer.close()
            print(f"repwatch.alerts topic: {[(e['type'], e['id']) for e in on_topic]}")
            queries = ['repwatch_drift_detected{model="digits"}',
                       'repwatch_drift_p_value{model="digits"}',
                       'sum by (model) (repwatch_records_processed_total)',
                       'repwatch_ood_records_flagged_total{model="digits"}',
                       'sum by (model) (repwatch_serving_records_sent_total)']
            _wait(lambda: bool(_promql(prom.url, queries[0] + " == 1")), 15)
            print("\nPrometheus:")
            for q in queries:
                answer = [(r["metric"], r["value"][1]) for r in _promql(prom.url, q)]
                print(f"  {q} -> {answer}")
            am_posts = receiver.wait("/alertmanager", 20)
            names = [a["labels"]["alertname"] for _, b in am_posts for a in json.loads(b)["alerts"]]
            print(f"Alertmanager notified: {names or 'nothing yet'}")
            ok = bool(drift) and bool(on_topic)
        finally:
            if sidecar is not None:
                sidecar.stop()
            worker.stop()
            thread.join(30)
            metrics.close()
            receiver.close()
    print(f"\ndemo {'succeeded' if ok else 'did not see a drift alert'} in "
          f"{time.monotonic() - t0:.0f} s; stack stopped")
    return 0 if ok else 1
