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
from monitor.demo import security as S
from monitor.demo.data import DemoData, PhaseInputs, load
from monitor.demo.stack import CLIENT_KEY_ENV, Sidecar, produce, wait
from monitor.demo.view import View

SECRET = b"demo-webhook-secret"
CLIENT_KEY = b"demo-client-id-key"  # the sidecar's pseudonym key (the view names the clients)
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


def _runs(inputs: PhaseInputs) -> list[tuple[int, int]]:
    """Requests of one phase: (start, end) row spans of one client, at most BATCH rows."""
    spans, i = [], 0
    while i < len(inputs):
        j = i + 1
        while (j < len(inputs) and j - i < BATCH and
               (inputs.clients is None or inputs.clients[j] == inputs.clients[i])):
            j += 1
        spans.append((i, j))
        i = j
    return spans


def _send(sidecar: Sidecar, phase: I.Phase, inputs: PhaseInputs, view: View, worker: Any,
          rate: float) -> None:
    """One phase through the sidecar, paced at ``rate`` rows/s; feedback after its requests."""
    assert inputs.images is not None
    for i, j in _runs(inputs):
        # Paced at `rate` records/s, so each phase lasts long enough to watch.
        ahead = phase.start_ms / 1000 + i / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
        client = inputs.client(i)
        status, ids = sidecar.infer(inputs.images[i:j], client)
        if status != 200:
            raise RuntimeError(f"the sidecar answered {status} in phase {phase.name!r}")
        phase.record_ids.extend(ids)
        if inputs.attack is not None:
            phase.attack_ids.extend(r for r, bad in zip(ids, inputs.attack[i:j], strict=True)
                                    if bad)
        if inputs.feedback is not None:
            rows = [(r, int(lab)) for r, lab in zip(ids, inputs.feedback[i:j], strict=True)
                    if lab >= 0]
            if rows:
                status = sidecar.feedback([r for r, _ in rows], [lab for _, lab in rows], client)
                if status != 202:
                    raise RuntimeError(f"the sidecar answered {status} to feedback in phase "
                                       f"{phase.name!r}")
                phase.feedback += len(rows)
        phase.sent += len(ids)
        view.progress(worker.processed)


def _play(data: DemoData, order: tuple[tuple[str, str | None], ...], sidecar: Sidecar | None,
          broker: str, topic: str, view: View, worker: Any, rate: float) -> list[I.Phase]:
    phases: list[I.Phase] = []
    for name, incident in order:
        inputs = data.phases[name]
        phase = I.Phase(name, incident, int(time.time() * 1000))
        view.phase(phase)
        phases.append(phase)
        if sidecar is not None and inputs.images is not None:
            _send(sidecar, phase, inputs, view, worker, rate)
        elif inputs.embeddings is not None:
            phase.record_ids = produce(broker, topic, inputs.embeddings,
                                       sum(p.sent for p in phases))
            phase.sent = len(phase.record_ids)
            if inputs.attack is not None:
                phase.attack_ids = [r for r, bad in zip(phase.record_ids, inputs.attack,
                                                        strict=True) if bad]
        phase.end_ms = int(time.time() * 1000)
        view.phase_done(phase)
    return phases


def _model(data: DemoData, work: Path) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The monitored model's configuration (and its fitted, saved reference), and why each
    security incident does not run (None: it runs)."""
    import numpy as np

    if not data.images or data.pixels is None or data.labels is None or data.ref_rows is None:
        np.save(work / "reference.npy", data.reference)
        why = "not available with synthetic embeddings: it needs images through the sidecar"
        return ({"name": "digits", "reference": str(work / "reference.npy"),
                 "detectors": DETECTORS}, {k: why for k in S.DETECTORS})
    from serving.encoders.models import DIGITS_CLASSIFIER

    base = {"name": "digits", "version": "1", "path": str(DIGITS_CLASSIFIER),
            "embedding_output": "embedding", "logits_output": "logits"}
    t = time.monotonic()
    plan = S.plan(base, DETECTORS, data.pixels, data.labels, data.ref_rows, work)
    print(f"reference: {len(plan.detectors)} detectors fitted in {time.monotonic() - t:.1f} s "
          f"and saved to {plan.reference}")
    return ({**base, **plan.model_extras, "reference": str(plan.reference),
             "detectors": plan.detectors}, plan.reasons)


def run(args: argparse.Namespace) -> int:
    from monitor import localstack
    from monitor.config import Config
    from monitor.metrics import serve_metrics
    from monitor.runtime import Worker

    if args.records < WINDOW:
        print(f"--records must be at least {WINDOW} (one detector window), got {args.records}")
        return 2
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="repwatch-demo-"))
    data = load(args.synthetic, args.records, security=True)
    print(f"data: {data.description}; reference {data.reference.shape[0]} x "
          f"{data.reference.shape[1]}")
    model, reasons = _model(data, work)
    order = I.phases_for({k for k, why in reasons.items() if why is None})
    (work / "rules.yml").write_text(SHIPPED_RULES.read_text() if SHIPPED_RULES.exists() else RULES)
    # On a shared broker, topics and group of this run only (a bundled broker starts empty).
    run_id = f"demo-{int(time.time())}-{os.getpid()}" if args.kafka else ""
    topics = ({"records": f"repwatch.{run_id}.records", "alerts": f"repwatch.{run_id}.alerts",
               "dlq": f"repwatch.{run_id}.dlq"} if run_id else
              {"records": "repwatch.records", "alerts": "repwatch.alerts",
               "dlq": "repwatch.records.dlq"})
    receiver = localstack.WebhookReceiver()
    clients = S.pseudonyms(CLIENT_KEY, data.phases)
    view = View([d["name"] for d in model["detectors"]], I.available(reasons), plain=args.plain,
                clients=clients)
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
            os.environ[CLIENT_KEY_ENV] = CLIENT_KEY.decode()
            config = Config.model_validate({
                "kafka": {"bootstrap_servers": [broker]}, "topics": topics,
                "models": [model],
                "alerts": {"webhooks": [{"url": f"{receiver.url}/webhook",
                                         "secret": {"env": "REPWATCH_DEMO_WEBHOOK_SECRET"}}]},
                "monitor": {"checkpoint_dir": str(work / "state"),
                            "checkpoint_interval_seconds": 1, "session_timeout_ms": 6000,
                            "heartbeat_interval_ms": 1000,
                            "group_id": f"repwatch-{run_id}" if run_id else "repwatch-monitor"},
            })
            worker = Worker(config)
            metrics = services.enter_context(contextlib.closing(serve_metrics(worker.registry)))
            extras = {k: model[k] for k in S.MODEL_EXTRAS if k in model}
            sidecar = Sidecar(broker, topics, work, extras) if data.images else None
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
            phases = _play(data, order, sidecar, broker, topics["records"], view, worker,
                           args.rate)
            total = sum(p.sent + p.feedback for p in phases)
            def caught_up() -> bool:
                view.progress(worker.processed)
                return bool(worker.processed >= total)

            wait(caught_up, 90)
            time.sleep(2.0)  # webhook deliveries of the last windows
            watch.stop()
            view.close()
            outcomes, false_alarms = I.attribute(phases, watch.seen, reasons, clients)
            ran = {p.incident for p in phases if p.incident}
            _, problems = I.verdict(outcomes, false_alarms, ran)
            from monitor.demo import finish

            finish.summarise(outcomes, false_alarms, watch.seen, problems)
            finish.report(args.report, config, data, phases, watch.seen, reasons, clients)
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
