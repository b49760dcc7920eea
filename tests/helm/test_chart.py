"""The Helm chart: strict lint, offline render with default and full values, every rendered
manifest through ``kubernetes-validate --strict`` (Kubernetes 1.30), the PrometheusRule's rules
through promtool, the dashboard ConfigMaps equal to the generated JSON, security and probes.

helm_python drives the Helm v4 Go SDK in process (no helm CLI, no cluster). CRDs
(ServiceMonitor, PodMonitor, PrometheusRule, ScaledObject) have no schema in
kubernetes-validate; their contents are checked here instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import Config

ROOT = Path(__file__).parents[2]
CHART = ROOT / "helm" / "repwatch"
CRDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}

FULL = {
    "image": {"tag": "0.1.0-test"},
    "kafka": {"bootstrapServers": ["kafka-0.kafka:9093", "kafka-1.kafka:9093"],
              "securityProtocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512",
              "saslUsername": "repwatch"},
    "models": [{"name": "digits", "version": "1", "reference": "/references/digits",
                "detectors": [{"name": "drift.mmd", "window": {"size": 500}},
                              {"name": "ood.knn", "params": {"k": 10}}]}],
    "alerts": {"webhooks": [{"name": "pagerduty", "url": "https://events.example/hook"}]},
    "secrets": {"adminToken": "t0ken", "kafkaPassword": "pw", "clientIdKey": "k",
                "webhooks": {"pagerduty": "signing-key"}},
    "config": {"monitor": {"max_poll_records": 500}},
    "monitor": {"replicas": 3, "adminPort": 9109,
                "extraVolumes": [{"name": "refs", "persistentVolumeClaim": {"claimName": "refs"}}],
                "extraVolumeMounts": [{"name": "refs", "mountPath": "/references",
                                       "readOnly": True}]},
    "sidecar": {"enabled": True, "replicas": 2, "grpcPort": 9081},
    "podMonitor": {"enabled": True},
    "prometheusRule": {"runbookBaseUrl": "https://git.example/repwatch/tree/main"},
    "keda": {"enabled": True, "maxReplicas": 12, "authenticationRef": "kafka-auth"},
}


def _chart() -> Any:
    try:
        from helm_python import chart
    except ImportError:
        pytest.fail("helm-python-sdk is not installed: pip install 'repwatch[ops]'")
    return chart


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = _chart()
    out = chart.Chart.load(str(CHART)).render(values, name="rw", namespace="ml",
                                              is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def _kinds(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render({})


@pytest.fixture(scope="module")
def full_docs() -> list[dict[str, Any]]:
    return render(FULL)


def test_lint_strict_is_clean() -> None:
    chart = _chart()
    for values in ({}, FULL):
        report = chart.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == [] and report["errors"] == [], report


def _kubernetes_validate(docs: list[dict[str, Any]], tmp: Path) -> str:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    if not exe.exists():
        pytest.fail("kubernetes-validate is not installed: pip install 'repwatch[ops]'")
    files = []
    for i, d in enumerate(docs):
        f = tmp / f"{i:02d}-{d['kind']}.yaml"
        f.write_text(yaml.safe_dump(d))
        files.append(str(f))
    run = subprocess.run([str(exe), "-k", "1.30.0", "--strict", *files],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize("which", ["default", "full"])
def test_every_manifest_passes_kubernetes_validate_strict(
    which: str, default_docs: Any, full_docs: Any, tmp_path: Path
) -> None:
    docs = default_docs if which == "default" else full_docs
    out = _kubernetes_validate(docs, tmp_path)
    passed = out.count("INFO ")
    warned = [line for line in out.splitlines() if line.startswith("WARN")]
    assert "ERROR" not in out
    assert passed == sum(1 for d in docs if d["kind"] not in CRDS)
    assert len(warned) == sum(1 for d in docs if d["kind"] in CRDS)  # CRDs: checked below
    kinds = set(_kinds(docs))
    want = {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", "ServiceMonitor",
            "PrometheusRule"}
    if which == "full":
        want |= {"Secret", "PodMonitor", "ScaledObject"}
    assert want <= kinds, kinds


def test_prometheus_rule_is_the_rule_files_and_passes_promtool(
    full_docs: Any, tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed; install it with: apt-get install -y prometheus")
    (rule,) = _kinds(full_docs)["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    groups = rule["spec"]["groups"]
    source = [g for p in sorted((ROOT / "dashboards" / "rules").glob("*.rules.yml"))
              for g in yaml.safe_load(p.read_text())["groups"]]
    # Same groups and rules; only the runbook links carry the configured prefix.
    for rendered, src in zip(groups, source, strict=True):
        for r, s in zip(rendered["rules"], src["rules"], strict=True):
            link = r["annotations"].pop("runbook_url")
            assert link == "https://git.example/repwatch/tree/main/" + s["annotations"].pop(
                "runbook_url")
        assert rendered == src
    f = tmp_path / "rendered.rules.yml"
    f.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    count = sum(len(g["rules"]) for g in source)
    assert f"SUCCESS: {count} rules found" in check.stdout


def test_dashboard_configmaps_equal_the_generated_json(default_docs: Any) -> None:
    maps = [d for d in _kinds(default_docs)["ConfigMap"]
            if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    generated = {p.name: p.read_text() for p in (ROOT / "dashboards" / "generated").glob("*.json")}
    assert len(maps) == len(generated) == 2
    for m in maps:
        assert m["metadata"]["annotations"]["grafana_folder"] == "repwatch"
        ((name, text),) = m["data"].items()
        assert json.loads(text) == json.loads(generated[name])


def _containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, c) for d in _kinds(docs)["Deployment"]
            for c in d["spec"]["template"]["spec"]["containers"]]


def test_pods_are_non_root_read_only_with_requests_and_probes(full_docs: Any) -> None:
    pairs = _containers(full_docs)
    assert {c["name"] for _, c in pairs} == {"monitor", "sidecar"}
    for d, c in pairs:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["livenessProbe"]["httpGet"]["path"] in ("/healthz", "/v2/health/live")
        assert c["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/v2/health/ready")
        assert c["image"] == "repwatch/repwatch:0.1.0-test"


def _config(docs: list[dict[str, Any]]) -> Config:
    (cm,) = [d for d in _kinds(docs)["ConfigMap"] if "config.yaml" in d["data"]]
    return Config.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


def test_generated_configuration_is_valid_and_reads_secrets_from_files(full_docs: Any) -> None:
    cfg = _config(full_docs)
    assert cfg.kafka.bootstrap_servers == ["kafka-0.kafka:9093", "kafka-1.kafka:9093"]
    assert str(cfg.kafka.sasl_password.file) == "/etc/repwatch/secrets/kafka-password"
    assert str(cfg.alerts.webhooks[0].secret.file) == "/etc/repwatch/secrets/webhook-pagerduty"
    assert str(cfg.monitor.admin_token.file) == "/etc/repwatch/secrets/admin-token"
    assert cfg.monitor.max_poll_records == 500  # from values.config
    assert str(cfg.monitor.checkpoint_dir) == "/var/lib/repwatch/checkpoints"
    (secret,) = _kinds(full_docs)["Secret"]
    assert set(secret["stringData"]) == {"admin-token", "kafka-password", "client-id-key",
                                         "webhook-pagerduty"}
    # Secrets never reach the ConfigMap.
    text = json.dumps([d for d in full_docs if d["kind"] == "ConfigMap"])
    assert "signing-key" not in text and "t0ken" not in text
    (monitor,) = [d for d, c in _containers(full_docs) if c["name"] == "monitor"]
    volumes = {v["name"]: v for v in monitor["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == "rw-repwatch-checkpoints"
    assert volumes["secrets"]["secret"]["secretName"] == "rw-repwatch-secrets"
    assert "replicas" not in monitor["spec"]  # KEDA owns the replica count


def _sidecar_ports(docs: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    (side,) = [c for _, c in _containers(docs) if c["name"] == "sidecar"]
    (svc,) = [d for d in _kinds(docs)["Service"] if d["metadata"]["name"].endswith("-sidecar")]
    return ({p["name"]: p["containerPort"] for p in side["ports"]},
            {p["targetPort"]: p["port"] for p in svc["spec"]["ports"]})


def test_sidecar_grpc_port_reaches_config_container_and_service(full_docs: Any) -> None:
    assert _config(full_docs).serving.grpc_port == 9081
    assert _sidecar_ports(full_docs) == ({"http": 8080, "grpc": 9081},
                                         {"http": 8080, "grpc": 9081})
    rest_only = render({"sidecar": {"enabled": True}})
    assert _config(rest_only).serving.grpc_port is None
    assert _sidecar_ports(rest_only) == ({"http": 8080}, {"http": 8080})


def test_existing_secret_is_used_and_not_created() -> None:
    docs = render({"secrets": {"existingSecret": "team-repwatch"}, "monitor": {"adminPort": 9109}})
    assert "Secret" not in _kinds(docs)
    (monitor,) = [d for d, c in _containers(docs) if c["name"] == "monitor"]
    volumes = {v["name"]: v for v in monitor["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "team-repwatch"


def test_keda_scales_on_the_consumer_group_lag(full_docs: Any) -> None:
    (so,) = _kinds(full_docs)["ScaledObject"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "repwatch-monitor"
    assert trigger["metadata"]["topic"] == "repwatch.records"
    assert trigger["authenticationRef"] == {"name": "kafka-auth"}
    assert so["spec"]["scaleTargetRef"]["name"] == "rw-repwatch-monitor"
    assert so["spec"]["maxReplicaCount"] == 12


def test_values_schema_rejects_bad_values() -> None:
    chart = _chart()
    from helm_python.errors import HelmValuesError

    c = chart.Chart.load(str(CHART))
    for bad, where in [({"monitor": {"replicas": "two"}}, "/monitor/replicas"),
                       ({"kafka": {"bootstrapServers": ["no-port"]}}, "/kafka/bootstrapServers"),
                       ({"monitorr": {}}, "monitorr")]:
        with pytest.raises(HelmValuesError, match=where):
            c.validate_schema(bad)


def test_sidecar_snippet_is_valid(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((CHART / "examples" / "sidecar-snippet.yaml").read_text()))
    _kubernetes_validate(docs, tmp_path)
    cfg = Config.model_validate(yaml.safe_load(docs[0]["data"]["config.yaml"]))
    assert cfg.models[0].upstream_url == "http://127.0.0.1:8081"
    pod = docs[1]["spec"]["template"]
    assert pod["metadata"]["labels"]["repwatch.io/sidecar"] == "true"  # the PodMonitor's selector
    (side,) = [c for c in pod["spec"]["containers"] if c["name"] == "repwatch"]
    assert side["ports"][0]["name"] == "repwatch"  # the PodMonitor's port


def test_packaged_chart_carries_the_linked_rules_and_dashboards(tmp_path: Path) -> None:
    """``rules/`` and ``dashboards/`` are links into dashboards/: packaging dereferences them,
    and the archive renders the same manifests as the checkout."""
    chart = _chart()
    c = chart.Chart.load(str(CHART))
    archive = Path(c.save(str(tmp_path)))
    packed = chart.Chart.load_archive(archive.read_bytes())
    files = sorted(f["name"] for f in packed.files)
    assert "rules/repwatch.rules.yml" in files and "dashboards/repwatch-model.json" in files
    assert not [f for f in files if f.endswith(".test.yml")]
    opts = {"name": "rw", "namespace": "ml", "is_install": True}
    assert packed.render(FULL, **opts) == c.render(FULL, **opts)
