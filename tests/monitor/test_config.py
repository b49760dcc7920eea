from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from monitor.config import ConfigError, SecretRef, dump_config, load_config, read_secret

GOOD = """
kafka:
  bootstrap_servers: "a:9092,b:9092"
models:
  - name: digits
    path: models/digits.onnx
    detectors:
      - name: drift.mmd
        params: {n_permutations: 100}
        window: {size: 2000, step: 500}
alerts:
  webhooks:
    - url: https://hooks.example.invalid/repwatch
      secret: {env: REPWATCH_WEBHOOK_SECRET}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "repwatch.yaml"
    p.write_text(text)
    return p


def test_load_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), environ={})
    assert cfg.kafka.bootstrap_servers == ["a:9092", "b:9092"]
    assert cfg.topics.records == "repwatch.records"
    assert cfg.model("digits").detectors[0].window.step == 500  # type: ignore[union-attr]
    assert "REPWATCH_WEBHOOK_SECRET" in dump_config(cfg)


def test_environment_overrides_every_level(tmp_path: Path) -> None:
    env = {
        "REPWATCH_KAFKA__BOOTSTRAP_SERVERS": "[c:1]",
        "REPWATCH_MONITOR__METRICS_PORT": "9999",
        "REPWATCH_MODELS__0__VERSION": "7",
        "REPWATCH_MODELS__0__DETECTORS__0__WINDOW__SIZE": "300",
        "REPWATCH_CONFIG": "ignored: names the file, not a field",
    }
    cfg = load_config(write(tmp_path, GOOD), environ=env)
    assert cfg.kafka.bootstrap_servers == ["c:1"]
    assert cfg.monitor.metrics_port == 9999
    assert cfg.models[0].version == "7"
    assert cfg.models[0].detectors[0].window.size == 300  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("models: [{name: digits, colour: red}]", {}, "models.0.colour: Extra inputs"),
        ("models: [{name: a}, {name: a}]", {}, "repeated: ['a']"),
        ("monitor: {metrics_port: 0}", {}, "monitor.metrics_port"),
        ("kafka: {security_protocol: SASL_SSL}", {}, "needs sasl_mechanism"),
        ("- just a list", {}, "top level must be a mapping"),
        ("a: [", {}, "not valid YAML"),
        ("", {"REPWATCH_MONITOR__METRICS_PORT": "many"}, "monitor.metrics_port"),
        ("alerts: {webhooks: [{url: ftp://x}]}", {}, "alerts.webhooks.0.url"),
    ],
)
def test_errors_say_where(tmp_path: Path, text: str, env: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ=env)
    assert message in str(info.value)


def test_secrets_come_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S1", "abc")
    assert read_secret(SecretRef(env="S1")) == b"abc"
    f = tmp_path / "s"
    f.write_text("xyz\n")
    assert read_secret(SecretRef(file=f)) == b"xyz"
    with pytest.raises(ValueError, match="S2 is not set"):
        read_secret(SecretRef(env="S2"))
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef()


def test_cli_config_check(tmp_path: Path) -> None:
    import os

    exe = Path(sys.executable).parent / "repwatch"
    env = {**os.environ, "REPWATCH_WEBHOOK_SECRET": "s3cret"}
    ok = subprocess.run(
        [exe, "config", "check", write(tmp_path, GOOD)], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert "bootstrap_servers:\n  - a:9092" in ok.stdout
    bad = subprocess.run(
        [exe, "config", "check", write(tmp_path, "serving: {port: -1}")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "serving.port" in bad.stderr
    helptext = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    assert "config" in helptext


def test_config_check_resolves_secrets_and_names_the_field(tmp_path: Path) -> None:
    import os

    exe = Path(sys.executable).parent / "repwatch"
    env = {k: v for k, v in os.environ.items() if k != "REPWATCH_WEBHOOK_SECRET"}
    res = subprocess.run([exe, "config", "check", write(tmp_path, GOOD)], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == ("error: alerts.webhooks[0].secret: secret environment "
                                  "variable REPWATCH_WEBHOOK_SECRET is not set")


LOGITS_ON_EMBEDDINGS = """
models:
  - name: digits
    detectors:
      - name: drift.mmd
      - name: ood.energy
        input: embedding
"""


def test_config_check_refuses_a_logits_detector_fed_embeddings(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "repwatch"
    res = subprocess.run([exe, "config", "check", write(tmp_path, LOGITS_ON_EMBEDDINGS)],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stdout
    assert res.stderr.startswith("error: models[0].detectors[1] (digits): ood.energy reads "
                                 "logits, but its input is 'embedding'; set input: logits")
    # Without `input`, ood.energy reads the records' logits: accepted.
    fine = LOGITS_ON_EMBEDDINGS.replace("        input: embedding\n", "")
    ok = subprocess.run([exe, "config", "check", write(tmp_path, fine)], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
