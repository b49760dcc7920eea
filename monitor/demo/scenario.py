"""The demo's run: start the stack, play the phases, watch the alerts, write the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from monitor.demo import incidents as I
from monitor.demo.data import DemoData, load
from monitor.demo.stack import Sidecar, produce, wait
from monitor.demo.view import View

SECRET = b"demo-webhook-secret"
WINDOW = 250  # records per detector window; a phase holds at least one
BATCH = 20  # rows per OIP request
SHIPPED_RULES = Path(__file__).resolve().parents[2] / "dashboards" / "rules" / "repwatch.rules.yml"
RULES = """groups:
- name: repwatch-demo
  rules:
  - alert: RepwatchDriftDetected
    expr: max by (model, detector) (repwatch_drift_detected) == 1
    labels: {severity: warning}
    annotations: {summary: "drift on {{ $labels.model }} ({{ $labels.detector }})"}
"""
DETECTORS: list[dict[str, Any]] = [
    {"name": "drift.mmd", "params": {"n_permutations": 200},
     "window": {"kind": "count", "size": WINDOW, "min_records": 100}, "severity": "critical"},
    {"name": "ood.knn", "params": {"k": 10, "fpr": 0.01},
     "window": {"kind": "count", "size": WINDOW}, "min_flagged_fraction": 0.1},
]


class AlertWatch:
    """Stamps each webhook delivery on arrival and hands it to the view (a daemon thread)."""

    def __init__(self, receiver: Any, view: View) -> None:
        self.receiver, self.view = receiver, view
        self.seen: list[I.SeenAlert] = []
        self._ids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.poll()

    def poll(self) -> None:
        now = int(time.time() * 1000)
        for _, body in self.receiver.wait("/webhook", 0):
            event = json.loads(body)
            if event.get("id") not in self._ids:
                self._ids.add(event.get("id"))
                seen = I.SeenAlert(event, now)
                self.seen.append(seen)
                self.view.alert(seen)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.poll()


def _create_topics(broker: str, topics: dict[str, str]) -> None:
    """Create the run's topics up front, so the worker is assigned before traffic starts."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=broker)
    try:
        for name in topics.values():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()


def _play(data: DemoData, sidecar: Sidecar | None, broker: str, topic: str, view: View,
          worker: Any, rate: float) -> list[I.Phase]:
    phases: list[I.Phase] = []
    for name, incident in I.PHASES:
        inputs = data.phases[name]
        phase = I.Phase(name, incident, int(time.time() * 1000))
        view.phase(phase)
        phases.append(phase)
        if sidecar is not None and inputs.images is not None:
            for i in range(0, len(inputs), BATCH):
                # Paced at `rate` records/s, so each phase lasts long enough to watch.
                ahead = phase.start_ms / 1000 + i / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
                status, ids = sidecar.infer(inputs.images[i:i + BATCH], f"client-{i % 7}")
                if status != 200:
                    raise RuntimeError(f"the sidecar answered {status} in phase {name!r}")
                phase.record_ids.extend(ids)
                phase.sent += len(ids)
                view.progress(worker.processed)
        elif inputs.embeddings is not None:
            phase.record_ids = produce(broker, topic, inputs.embeddings,
                                       sum(p.sent for p in phases))
            phase.sent = len(phase.record_ids)
        phase.end_ms = int(time.time() * 1000)
        view.phase_done(phase)
    return phases


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from monitor import localstack
    from monitor.config import Config
    from monitor.metrics import serve_metrics
    from monitor.runtime import Worker

    if args.records < WINDOW:
        print(f"--records must be at least {WINDOW} (one detector window), got {args.records}")
        return 2
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="repwatch-demo-"))
    data = load(args.synthetic, args.records)
    print(f"data: {data.description}; reference {data.reference.shape[0]} x "
          f"{data.reference.shape[1]}")
    np.save(work / "reference.npy", data.reference)
    (work / "rules.yml").write_text(SHIPPED_RULES.read_text() if SHIPPED_RULES.exists() else RULES)
    # On a shared broker, topics and group of this run only (a bundled broker starts empty).
    run_id = f"demo-{int(time.time())}-{os.getpid()}" if args.kafka else ""
    topics = ({"records": f"repwatch.{run_id}.records", "alerts": f"repwatch.{run_id}.alerts",
               "dlq": f"repwatch.{run_id}.dlq"} if run_id else
              {"records": "repwatch.records", "alerts": "repwatch.alerts",
               "dlq": "repwatch.records.dlq"})
    receiver = localstack.WebhookReceiver()
    view = View([d["name"] for d in DETECTORS], I.available(), plain=args.plain)
    interrupted, phases = False, []
    outcomes: list[I.Outcome] = []
    problems: list[str] = []
    try:
        with contextlib.ExitStack() as services:
            broker = args.kafka or services.enter_context(
                localstack.running(localstack.start_tansu())).address
            am = services.enter_context(localstack.running(
                localstack.start_alertmanager(f"{receiver.url}/alertmanager")))
            prom = services.enter_context(localstack.running(localstack.start_prometheus(
                [], rule_files=[work / "rules.yml"], alertmanager=am.address)))
            os.environ["REPWATCH_DEMO_WEBHOOK_SECRET"] = SECRET.decode()
            config = Config.model_validate({
                "kafka": {"bootstrap_servers": [broker]}, "topics": topics,
                "models": [{"name": "digits", "reference": str(work / "reference.npy"),
                            "detectors": DETECTORS}],
                "alerts": {"webhooks": [{"url": f"{receiver.url}/webhook",
                                         "secret": {"env": "REPWATCH_DEMO_WEBHOOK_SECRET"}}]},
                "monitor": {"checkpoint_dir": str(work / "state"),
                            "checkpoint_interval_seconds": 1, "session_timeout_ms": 6000,
                            "heartbeat_interval_ms": 1000,
                            "group_id": f"repwatch-{run_id}" if run_id else "repwatch-monitor"},
            })
            worker = Worker(config)
            metrics = services.enter_context(contextlib.closing(serve_metrics(worker.registry)))
            sidecar = Sidecar(broker, topics, work) if data.images else None
            if sidecar is not None:
                services.callback(sidecar.stop)
            targets = [f"127.0.0.1:{metrics.port}"] + (
                [f"127.0.0.1:{sidecar.port}"] if sidecar else [])
            localstack.set_scrape_targets(prom, targets)
            thread = threading.Thread(target=worker.run, kwargs={"install_signals": False},
                                      daemon=True)
            _create_topics(broker, topics)
            thread.start()
            services.callback(thread.join, 30)
            services.callback(worker.stop)
            print(f"stack: broker {broker}, prometheus {prom.url}, alertmanager {am.url}, "
                  f"worker metrics http://127.0.0.1:{metrics.port}/metrics"
                  + (f", serving sidecar {sidecar.url}/v2/models/digits/infer" if sidecar else ""),
                  flush=True)
            watch = AlertWatch(receiver, view)
            services.callback(watch.stop)
            if not wait(lambda: bool(worker.state), 60):
                raise RuntimeError(f"the monitor worker got no partition of {topics['records']} "
                                   f"from {broker} in 60 s")
            phases = _play(data, sidecar, broker, topics["records"], view, worker, args.rate)
            total = sum(p.sent for p in phases)
            def caught_up() -> bool:
                view.progress(worker.processed)
                return bool(worker.processed >= total)

            wait(caught_up, 90)
            time.sleep(2.0)  # webhook deliveries of the last windows
            watch.stop()
            view.close()
            outcomes, false_alarms = I.attribute(phases, watch.seen)
            ran = {p.incident for p in phases if p.incident}
            _, problems = I.verdict(outcomes, false_alarms, ran)
            from monitor.demo import finish

            finish.summarise(outcomes, false_alarms, watch.seen, problems)
            finish.report(args.report, config, data, phases, watch.seen)
            finish.platform_checks(prom.url, receiver, worker.processed)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        view.close()
        receiver.close()
    took = time.monotonic() - t0
    if interrupted:
        print(f"\ninterrupted after {took:.0f} s; every process the demo started is stopped")
        return 130
    ok = not problems and bool(outcomes)
    print(f"\ndemo {'succeeded' if ok else 'FAILED'} in {took:.0f} s on {platform.node()}; "
          "stack stopped")
    return 0 if ok else 1
