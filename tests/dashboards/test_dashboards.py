"""Grafana dashboards as code: the committed JSON is current, every panel's PromQL returns data
from a live Prometheus fed by a real sidecar and monitor, and ``repwatch dashboards push``
uploads them.

No Grafana server can run on these machines, so the push test talks to a local HTTP stand-in
for the three Grafana API endpoints the push uses (list folders, create folder, save
dashboard); it checks what a Grafana would receive, not Grafana's own handling of it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor import dashboards, localstack
from monitor.cli import main

ROOT = Path(__file__).parents[2]
GENERATED = ROOT / "dashboards" / "generated"
# Template variables as a user would pick them; the rate window covers the whole test run.
VARIABLES = {"$model": "digits", "$version": "1", "$__rate_interval": "5m"}
# Queries allowed to return no data here, each with the reason: their series appear only during
# an incident this test does not drive, or once code on another branch sets them. Listed, never
# skipped silently; every other query must return a finite value.
NO_DATA_EXPECTED = {
    "repwatch-overview: Checkpoint size [A]": "set per model by the checkpoint writer (issue 17)",
    "repwatch-overview: Version churn / s [A]": "counted by the version cap (issue 17)",
    "repwatch-overview: Version churn / s [B]": "incident: a version evicted by the cap",
    "repwatch-overview: Failed batches and rejected checkpoints / s [A]":
        "incident: a batch failing with an unexpected error",
    "repwatch-overview: Sidecar intake rejections / s [A]":
        "labels pre-set by the sidecar's intake bounds (issue 17)",
    # Client-keyed stages (issue 11): only a model configured with `key: client` has them.
    "repwatch-overview: Keyed state evictions / s [A]": "needs a `key: client` stage",
    "repwatch-overview: Keyed state keys [A]": "needs a `key: client` stage",
    "repwatch-model: Keyed state evictions / s [A]": "needs a `key: client` stage",
    "repwatch-model: Keyed state keys [A]": "needs a `key: client` stage",
}
# The security row (issue 12): the stack here runs no security stage; the security end-to-end
# test (tests/monitor/test_security_e2e.py) proves these queries on a live Prometheus.
NO_DATA_EXPECTED.update({
    f"{b.uid}: {p.title} [{chr(65 + i)}]": "needs security stages (test_security_e2e.py)"
    for b in dashboards.boards() for title, panels in b.rows if title == "Security"
    for p in panels for i in range(len(p.targets))
})


def _committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(GENERATED.glob("*.json"))}


def test_generated_json_is_current() -> None:
    committed = _committed()
    fresh = {b.uid: dashboards.render(b) for b in dashboards.boards()}
    assert set(committed) == set(fresh), "run `repwatch dashboards build` and commit the JSON"
    for uid, doc in fresh.items():
        assert dashboards.dumps(doc) == (GENERATED / f"{uid}.json").read_text(), (
            f"dashboards/generated/{uid}.json is stale: run `repwatch dashboards build`")


def test_dashboards_are_templated_and_annotated() -> None:
    docs = _committed()
    model = docs["repwatch-model"]
    names = [v["name"] for v in model["templating"]["list"]]
    assert names == ["datasource", "model", "version"]
    assert model["annotations"]["list"][0]["expr"].startswith("ALERTS{")
    titles = [p["title"] for p in model["panels"]]
    for want in ("Drift statistic and threshold", "Effect size", "OOD score distribution",
                 "OOD flagged fraction", "Sidecar queue", "Sidecar drops / s", "Consumer lag"):
        assert want in titles
    exprs = [t["expr"] for p in model["panels"] for t in p.get("targets", [])]
    assert any("repwatch_drift_threshold" in e for e in exprs)
    # Every panel reads the chosen data source.
    for doc in docs.values():
        for p in doc["panels"]:
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def _substitute(expr: str) -> str:
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, expr
    return expr


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{prom}/api/v1/query?{q}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.25)


class _Sidecar:
    """``repwatch serve`` on the bundled digits classifier, as its own process."""

    def __init__(self, broker: str, work: Path, topic: str) -> None:
        import subprocess
        import sys

        import yaml

        from serving.encoders.models import DIGITS_CLASSIFIER

        self.port, self.grpc_port = localstack.free_port(), localstack.free_port()
        config = {
            "kafka": {"bootstrap_servers": [broker]},
            "topics": {"records": topic},
            "models": [{"name": "digits", "version": "1", "path": str(DIGITS_CLASSIFIER),
                        "embedding_output": "embedding", "logits_output": "logits"}],
            "serving": {"host": "127.0.0.1", "port": self.port, "intra_op_threads": 1,
                        "grpc_port": self.grpc_port},
        }
        (work / "serve.yaml").write_text(yaml.safe_dump(config))
        self.log = open(work / "sidecar.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING", "serve",
             "--config", str(work / "serve.yaml")], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            localstack.wait_http(f"{self.url}/v2/health/ready", timeout=60)
        except Exception:
            self.stop()
            raise

    def post(self, body: bytes) -> int:
        req = urllib.request.Request(f"{self.url}/v2/models/digits/infer", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def infer(self, images: Any, batch: int = 20) -> int:
        """OIP JSON requests of ``batch`` rows; returns how many were answered 200."""
        ok = 0
        for i in range(0, len(images), batch):
            rows = images[i:i + batch]
            ok += self.post(json.dumps({"inputs": [{
                "name": "input", "datatype": "FP32", "shape": list(rows.shape),
                "data": rows.ravel().tolist()}]}).encode()) == 200
        return ok

    def grpc_infer(self, images: Any, batch: int = 20) -> int:
        """The same over OIP gRPC (raw input contents); returns how many calls succeeded."""
        import grpc
        import numpy as np

        from serving.grpc import grpc_predict_v2_pb2 as pb
        from serving.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        ok = 0
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = GRPCInferenceServiceStub(channel)
            for i in range(0, len(images), batch):
                rows = np.ascontiguousarray(images[i:i + batch], dtype=np.float32)
                req = pb.ModelInferRequest(model_name="digits")
                req.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
                req.raw_input_contents.append(rows.tobytes())
                stub.ModelInfer(req, timeout=10)
                ok += 1
        return ok

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def live_stack(kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A sidecar (its own process, bundled digits model) -> Tansu -> a monitor worker, both
    scraped by a Prometheus evaluating the shipped rules; clean then drifted traffic, one bad
    request and one undecodable record so that error and dead-letter panels have data."""
    import numpy as np
    from kafka import KafkaProducer

    from monitor.config import Config
    from monitor.demo import _embeddings
    from monitor.metrics import serve_metrics
    from monitor.runtime import Worker

    work = tmp_path_factory.mktemp("dash")
    ref, _, _, _, images = _embeddings(False, 400)
    assert images is not None, "the bundled digits models are missing"
    np.save(work / "reference.npy", ref)
    receiver = localstack.WebhookReceiver()
    topic = f"repwatch.records.dash{int(time.time())}"
    config = Config.model_validate({
        "kafka": {"bootstrap_servers": [kafka_broker.address]},
        "topics": {"records": topic, "alerts": f"{topic}.alerts", "dlq": f"{topic}.dlq"},
        "models": [{"name": "digits", "reference": str(work / "reference.npy"), "detectors": [
            {"name": "drift.mmd", "params": {"n_permutations": 100},
             "window": {"kind": "count", "size": 200, "min_records": 100}},
            {"name": "ood.knn", "params": {"k": 10, "fpr": 0.01},
             "window": {"kind": "count", "size": 200}, "min_flagged_fraction": 0.1},
        ]}],
        "alerts": {"webhooks": [{"url": f"{receiver.url}/hook"}]},
        "monitor": {"checkpoint_dir": str(work / "state"), "checkpoint_interval_seconds": 1,
                    "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000},
    })
    worker = Worker(config)
    metrics = serve_metrics(worker.registry)
    sidecar = _Sidecar(kafka_broker.address, work, topic)
    prom = localstack.start_prometheus(
        [f"127.0.0.1:{metrics.port}", f"127.0.0.1:{sidecar.port}"],
        rule_files=sorted((ROOT / "dashboards" / "rules").glob("*.rules.yml")),
    )
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        # Traffic starts once both targets have been scraped, as in a running deployment.
        _wait(lambda: len(_query(prom.url, "up == 1")) == 2, 30, "the first scrapes")
        clean, drifted = images
        assert sidecar.infer(clean) == len(clean) // 20
        _wait(lambda: worker.processed >= len(clean), 60, "the clean phase")
        sidecar.infer(drifted)
        assert sidecar.grpc_infer(drifted[:40]) == 2  # gRPC traffic for its panels
        assert sidecar.post(b'{"inputs": "nope"}') == 400
        p = KafkaProducer(bootstrap_servers=kafka_broker.address)
        p.send(topic, key=b"digits", value=b"\x00not a record")
        p.flush(10)
        p.close()
        _wait(lambda: worker.processed >= len(clean) + len(drifted) + 40, 60, "the drifted phase")
        _wait(lambda: _query(prom.url, 'ALERTS{alertname="RepwatchDriftDetected",'
                                       'alertstate="firing"}'), 30, "the drift alert")
        _wait(lambda: _query(prom.url, "repwatch_dlq_records_total"), 30, "the dead letter")
        time.sleep(2)  # one more scrape of everything after the traffic
        # more clean traffic on request: rate() panels need an increase between two scrapes,
        # which a loaded machine can miss when a scrape times out during the phases
        prom.more_traffic = lambda: sidecar.infer(clean[:200])  # type: ignore[attr-defined]
        yield prom
    finally:
        sidecar.stop()
        worker.stop()
        thread.join(30)
        metrics.close()
        receiver.close()
        prom.stop()
        shutil.rmtree(prom.workdir, ignore_errors=True)


def _label_values(query: str) -> str:
    """Grafana's ``label_values(metric, label)`` as the PromQL Grafana sends for it."""
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert m, query
    return f"group by ({m.group(2)}) ({m.group(1)})"


@pytest.mark.integration
def test_every_panel_query_returns_data_from_live_prometheus(live_stack: Any) -> None:
    prom = live_stack.url
    docs = _committed()
    for uid, doc in docs.items():
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                result = _query(prom, _substitute(_label_values(var["query"])))
                assert result, f"{uid}: variable {var['name']} has no values"
    panels = [(where, expr) for doc in docs.values() for where, expr in dashboards.queries(doc)]
    assert len(panels) >= 40

    seen: set[str] = set()  # a panel counts once it has returned data (alerts resolve later)

    def unexpected() -> list[str]:
        for where, expr in panels:
            if where in seen:
                continue
            result = _query(prom, _substitute(expr))
            if [r for r in result if math.isfinite(float(r["value"][1]))]:
                seen.add(where)
        return sorted({w for w, _ in panels} - seen - set(NO_DATA_EXPECTED))

    # rate()-based panels need two scrapes that see an increase; on a loaded 2-core machine a
    # scrape can time out during the phases, so keep clean traffic flowing for a bounded time.
    deadline = time.monotonic() + 30
    missing = unexpected()
    while missing and time.monotonic() < deadline:
        live_stack.more_traffic()
        time.sleep(3)
        missing = unexpected()
    assert missing == [], f"panels without data after 30 s: {missing}"


class _FakeGrafana:
    """Loopback stand-in for Grafana's folder and dashboard API (see the module docstring)."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.folders: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> Any:
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n)) if n else None
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                return body

            def do_GET(self) -> None:
                self._record()
                if status != 200:
                    self._answer(status, {"message": "invalid API key"})
                elif self.path.startswith("/api/folders"):
                    self._answer(200, fake.folders)
                else:
                    self._answer(404, {"message": "not found"})

            def do_POST(self) -> None:
                body = self._record()
                if self.path == "/api/folders":
                    folder = {"uid": body.get("uid", "f1"), "title": body["title"]}
                    fake.folders.append(folder)
                    self._answer(200, folder)
                elif self.path == "/api/dashboards/db":
                    uid = body["dashboard"]["uid"]
                    self._answer(200, {"status": "success", "uid": uid, "version": 1,
                                       "url": f"/d/{uid}/x"})
                else:
                    self._answer(404, {"message": "not found"})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_push_uploads_every_dashboard_into_a_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    grafana = _FakeGrafana()
    monkeypatch.setenv("TEST_GRAFANA_TOKEN", "s3cret")
    try:
        args = ["dashboards", "push", "--url", grafana.url, "--token-env", "TEST_GRAFANA_TOKEN"]
        assert main(args) == 0
        assert main([*args, "--from-dir", str(GENERATED)]) == 0  # a second push: folder exists
    finally:
        grafana.close()
    saves = [r for r in grafana.requests if r[1] == "/api/dashboards/db"]
    creates = [r for r in grafana.requests if r[:2] == ("POST", "/api/folders")]
    assert len(creates) == 1 and creates[0][3] == {"title": "repwatch", "uid": "repwatch"}
    assert len(saves) == 4
    committed = _committed()
    for _, _, headers, body in saves:
        assert headers["Authorization"] == "Bearer s3cret"
        assert body["folderUid"] == "repwatch" and body["overwrite"] is True
        doc = dict(body["dashboard"])
        assert doc.pop("id") is None
        assert doc == committed[doc["uid"]]
    assert "pushed /d/repwatch-overview/x" in capsys.readouterr().out


def test_push_reports_a_refused_token(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    grafana = _FakeGrafana(status=401)
    monkeypatch.setenv("TEST_GRAFANA_TOKEN", "wrong")
    try:
        code = main(["dashboards", "push", "--url", grafana.url,
                     "--token-env", "TEST_GRAFANA_TOKEN"])
    finally:
        grafana.close()
    assert code == 1
    err = capsys.readouterr().err
    assert "refused the upload" in err and "check the token" in err


def test_push_rejects_a_directory_without_dashboards(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"not": "a dashboard"}')
    with pytest.raises(SystemExit, match="is not a dashboard"):
        main(["dashboards", "push", "--url", "http://127.0.0.1:9", "--from-dir", str(tmp_path)])


def test_a_new_family_gets_a_row_of_panels_on_both_dashboards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding a family is adding catalogue entries: no dashboard code (as the security row)."""
    from monitor import metric_catalog as catalog

    extra = (
        catalog.MetricSpec("repwatch_fairness_groups_flagged_total", "counter", "Clients flagged.",
                           ("model", "model_version", "detector"), "", "monitor", "fairness"),
        catalog.MetricSpec("repwatch_fairness_gap_threshold", "gauge", "Threshold.",
                           ("model", "model_version", "detector"), "", "monitor", "fairness"),
    )
    monkeypatch.setattr(catalog, "CATALOG", catalog.CATALOG + extra)
    for board in dashboards.boards():
        rows = dict(board.rows)
        assert [p.title for p in rows["Fairness"]] == [
            "Fairness groups flagged / s", "Fairness gap threshold"]
        exprs = [e for p in rows["Fairness"] for e, _ in p.targets]
        assert all(catalog.query_errors(e) == [] for e in exprs)
        if board.templated:
            assert exprs[0] == ('sum by (detector) (rate(repwatch_fairness_groups_flagged_total'
                                '{model="$model", model_version="$version"}[$__rate_interval]))')
        else:
            assert exprs[1] == "max by (model, detector) (repwatch_fairness_gap_threshold)"


def test_build_writes_the_dashboards_and_names_the_extra_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert main(["dashboards", "build", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "repwatch-model.json", "repwatch-overview.json"]
    assert (tmp_path / "repwatch-model.json").read_text() == (
        GENERATED / "repwatch-model.json").read_text()
    monkeypatch.setitem(__import__("sys").modules, "grafana_foundation_sdk", None)
    with pytest.raises(SystemExit, match=r"pip install 'repwatch\[ops\]'"):
        main(["dashboards", "build", "--out", str(tmp_path)])
