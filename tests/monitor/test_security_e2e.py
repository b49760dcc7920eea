"""Security end to end on the real broker: the real sidecar HTTP API -> Tansu -> a monitor.

Real ART attacks (``tests/data/security_attacks.npz``, see its script) go through the sidecar
as a client would send them: PGD inputs raise an ``adversarial`` alert; one attacking
client's HopSkipJump queries raise exactly one ``attack`` alert (for its pseudonym) while five
benign clients raise none; feedback with 10 % flipped labels POSTed to ``/v1/feedback`` raises
one ``poisoning`` alert. Each alert arrives on the alerts topic and on a signed webhook as a
CloudEvent ``io.repwatch.alert.<kind>`` with its evidence, and Prometheus scrapes the security
metrics: every query of the dashboards' Security row returns data.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor import dashboards, localstack
from monitor.alerts import verify
from monitor.config import Config
from monitor.metrics import serve_metrics
from serving.encoders.models import DIGITS_CLASSIFIER, digits_data
from serving.reference import build_reference

pytestmark = pytest.mark.integration
SECRET = "s3cret-for-security-tests"
DATA = Path(__file__).resolve().parents[1] / "data" / "security_attacks.npz"


class _Sidecar:
    """The sidecar app under a real uvicorn on a free loopback port, in a thread."""

    def __init__(self, config: Config) -> None:
        import uvicorn

        from serving.app import create_app

        self.port = localstack.free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "sidecar did not start"
            time.sleep(0.02)

    def post(self, path: str, body: dict[str, Any], client: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if client is not None:
            headers["X-Client-Id"] = client
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status in (200, 202), resp.status
            return resp.headers.get("x-repwatch-record-id")

    def infer(self, X: np.ndarray, client: str | None = None, batch: int = 10) -> list[str]:
        """Record ids of the rows of ``X``, sent ``batch`` rows a request."""
        ids: list[str] = []
        for lo in range(0, len(X), batch):
            rows = X[lo:lo + batch]
            rid = self.post("/v2/models/digits/infer", {"inputs": [{
                "name": "input", "datatype": "FP32", "shape": list(rows.shape),
                "data": rows.ravel().tolist()}]}, client)
            ids += [rid] if len(rows) == 1 else [f"{rid}:{i}" for i in range(len(rows))]
        return ids

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _query(prom: localstack.Service, promql: str) -> list[dict[str, Any]]:
    url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]["result"]  # type: ignore[no-any-return]


def test_attacks_through_the_sidecar_raise_one_alert_each_and_benign_clients_none(
        mon: Any, webhook_receiver: Any, prometheus: Any, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("REPWATCH_TEST_WEBHOOK_SECRET", SECRET)
    X, y, split = digits_data()
    te = np.asarray(split["test"])
    model = {"name": "digits", "path": str(DIGITS_CLASSIFIER), "embedding_output": "embedding",
             "logits_output": "logits", "penultimate_output": "penultimate",
             "input_hashes": {"value_range": [0, 16]}, "reference": str(tmp_path / "ref.npz"),
             "detectors": [
                 {"name": "adversarial.combined", "params": {"fpr": 0.01},
                  "window": {"size": 100, "min_records": 20}, "min_flagged_fraction": 0.1},
                 {"name": "adversarial.query", "key": "client",
                  "params": {"max_clients": 100, "index_size": 1 << 14}},
                 {"name": "poisoning.feedback", "records": "feedback",
                  "params": {"window_size": 200}}]}
    base = mon.config().model_dump(mode="json")
    config = Config.model_validate({
        **base, "models": [model],
        "alerts": {"source": "repwatch/test", "webhooks": [
            {"url": webhook_receiver.url, "secret": {"env": "REPWATCH_TEST_WEBHOOK_SECRET"}}]},
        "serving": {"port": 1, "feedback_cache_size": 2000}})
    rows = np.concatenate([split["train"], split["val"]])
    build_reference(config.models[0], X[rows], y[rows], tmp_path / "ref.npz")
    worker = mon.worker(config)
    metrics = serve_metrics(worker.registry)
    localstack.set_scrape_targets(prometheus, [f"127.0.0.1:{metrics.port}"])
    sidecar = _Sidecar(config)
    attacks = np.load(DATA)
    try:
        worker.start()
        # five benign clients, 40 distinct test images each (two clean adversarial windows)
        benign = te[:200]
        ids: list[str] = []
        for c in range(5):
            ids += sidecar.infer(X[benign[c::5]], client=f"benign-{c}")
        order = np.concatenate([benign[c::5] for c in range(5)])
        # PGD eps=0.2 (white box, ART), sent without a client id: one adversarial window
        pgd = sidecar.infer(attacks["pgd_0.2"] * 16)
        # one HopSkipJump run (label-only, ART) from one client, one query per request
        hsj = attacks["hsj_queries"] * 16
        mallory = sidecar.infer(hsj, client="mallory", batch=1)
        # feedback on the benign records with 10 % of the labels flipped
        labels = y[order].copy()
        labels[::10] = (labels[::10] + 3) % 8
        sidecar.post("/v1/feedback", {"model": "digits", "feedback": [
            {"id": rid, "label": int(lab)} for rid, lab in zip(ids, labels, strict=True)]})
        total = len(ids) + 100 + len(hsj) + len(ids)
        mon.run_until(worker, lambda: worker.processed >= total, timeout=90)
        mon.run_until(worker, lambda: len(webhook_receiver.requests) >= 3, timeout=30)
        for _ in range(10):  # anything still in flight
            worker.step(0.1)
        events = [json.loads(m.value) for m in mon.read(mon.alerts_topic, 50, timeout=5)]
        by_type: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            by_type.setdefault(e["type"], []).append(e)
        counts = {t: len(v) for t, v in by_type.items()}
        # exactly one attack alert (the attacker's; benign clients none), one poisoning alert;
        # the PGD window raises an adversarial alert (HopSkipJump's queries may raise more)
        assert counts.get("io.repwatch.alert.attack") == 1, counts
        assert counts.get("io.repwatch.alert.poisoning") == 1, counts
        assert counts.get("io.repwatch.alert.adversarial", 0) >= 1, counts
        assert set(counts) == {"io.repwatch.alert.adversarial", "io.repwatch.alert.attack",
                               "io.repwatch.alert.poisoning"}, counts
        attack = by_type["io.repwatch.alert.attack"][0]["data"]
        assert attack["key"] == attack["details"]["client"] and attack["key"] != "mallory"
        assert set(attack["evidence"]["record_ids"]) <= set(mallory)
        assert attack["details"]["flagged_queries"] >= attack["details"]["k"]
        adv = by_type["io.repwatch.alert.adversarial"][0]["data"]
        assert adv["details"]["evidence_records"][0]["signal_tails"]
        assert set(adv["evidence"]["record_ids"]) <= set(pgd)
        poison = by_type["io.repwatch.alert.poisoning"][0]["data"]
        flipped = {ids[i] for i in range(0, len(ids), 10)}
        hits = set(poison["evidence"]["record_ids"]) & flipped
        assert len(hits) >= 0.8 * len(poison["evidence"]["record_ids"])
        # the same three events on the signed webhook
        hooked = []
        for headers, body in webhook_receiver.requests:
            assert verify(body, SECRET.encode(), headers)
            hooked.append(json.loads(body)["type"])
        assert sorted(hooked) == sorted(e["type"] for e in events)
        # every query of the Security dashboard row returns data from the live Prometheus
        docs = [dashboards.render(b) for b in dashboards.boards()]
        titles = {p.title for b in dashboards.boards() for t, ps in b.rows if t == "Security"
                  for p in ps}
        exprs = {e for d in docs for where, e in dashboards.queries(d)
                 if where.split(": ", 1)[1].rsplit(" [", 1)[0] in titles}
        assert exprs
        subst = {"$model": "digits", "$version": "1", "$__rate_interval": "5m"}

        def missing() -> list[str]:
            out = []
            for e in sorted(exprs):
                q = e
                for k, v in subst.items():
                    q = q.replace(k, v)
                if not [r for r in _query(prometheus, q) if np.isfinite(float(r["value"][1]))]:
                    out.append(e)
            return out

        end = time.monotonic() + 30
        while missing() and time.monotonic() < end:
            worker.step(0.2)
            time.sleep(1)
        assert missing() == []
    finally:
        localstack.set_scrape_targets(prometheus, [])
        sidecar.stop()
        worker.close()
        metrics.close()
