"""Platform configuration: one YAML file, validated by pydantic, overridable from the environment.

Every field can be overridden by an environment variable ``REPWATCH_<PATH>`` where ``<PATH>`` is
the field path in upper case joined by ``__`` (list items by index)::

    REPWATCH_KAFKA__BOOTSTRAP_SERVERS=broker:9092
    REPWATCH_MONITOR__METRICS_PORT=9109
    REPWATCH_MODELS__0__PATH=/models/digits.onnx

Values are parsed as YAML scalars/flow collections (``[a, b]``, ``true``, ``3``). Secrets never
live in the file: fields ending in ``_env`` / ``_file`` name an environment variable or a file
that holds the secret, and :func:`read_secret` resolves them at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "REPWATCH_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class SecretRef(_Model):
    """Where a secret comes from: an environment variable or a file (never the YAML itself)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (variable name) or 'file' (path)")
        return self


def read_secret(ref: SecretRef | None) -> bytes | None:
    """Resolve a secret reference; errors name the variable or file that is missing."""
    if ref is None:
        return None
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise ValueError(f"secret environment variable {ref.env} is not set")
        return value.encode()
    assert ref.file is not None
    try:
        return ref.file.read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"secret file {ref.file} cannot be read: {exc.strerror}") from None


class KafkaConfig(_Model):
    bootstrap_servers: list[str] = ["127.0.0.1:9092"]
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretRef | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "repwatch"
    #: The sidecar's record stream compression. lz4 costs librdkafka about half the CPU of gzip
    #: per record; the monitor's consumer reads every codec (the ``lz4`` package is in the
    #: ``monitor`` extra).
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",")] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password (a secret reference)"
            )
        return self


class TopicsConfig(_Model):
    records: str = "repwatch.records"
    alerts: str = "repwatch.alerts"
    dlq: str = "repwatch.records.dlq"


class WindowConfig(_Model):
    kind: Literal["count", "time"] = "count"
    size: int = Field(1000, gt=0, description="records (count) or seconds (time)")
    step: int | None = Field(None, gt=0, description="slide; None = tumbling (step = size)")
    min_records: int = Field(50, gt=0, description="skip tests on windows smaller than this")
    every_seconds: float | None = Field(
        None, gt=0, description="count windows: test the latest `size` records every N seconds "
        "of event time instead of every `step` records"
    )
    idle_close_seconds: float | None = Field(
        None, gt=0, description="time windows: close the open window after this many "
        "wall-clock seconds without a record (default: the window size)"
    )
    max_records: int = Field(
        100_000, gt=0, description="records a window may hold; a count window larger than "
        "this is refused, a time window drops (and counts) records past it"
    )

    @model_validator(mode="after")
    def _bounded(self) -> WindowConfig:
        if self.kind == "count" and self.size > self.max_records:
            raise ValueError(f"a count window of {self.size} records is over max_records="
                             f"{self.max_records}; lower size or raise max_records")
        return self


class DetectorConfig(_Model):
    """One detector of a model's pipeline, by registered name (``drift.mmd``, ``ood.knn``…)."""

    name: str = Field(pattern=r"^[a-z_]+\.[a-z0-9_]+$")
    params: dict[str, Any] = {}
    window: WindowConfig | None = None
    alert: bool = True
    severity: Literal["info", "warning", "critical"] = "warning"
    min_flagged_fraction: float = Field(
        0.05, ge=0, le=1, description="per-record detectors (OOD…): alert on a window whose "
        "flagged fraction reaches this"
    )
    records: Literal["inference", "feedback"] = Field(
        "inference", description="record kind the stage consumes (feedback: labelled records)"
    )
    input: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.\-]+$", description="what the detector reads: embedding, "
        "logits, prediction, label or a named feature vector; default: the detector's own "
        "input kind (embeddings -> embedding, logits -> logits, labels -> prediction/label)"
    )
    key: Literal["none", "client"] = Field(
        "none", description="client: per-client state (keyed store), alerts per client"
    )
    max_keys: int = Field(100_000, gt=0, description="key: client — clients kept at most")
    max_key_memory_bytes: int | None = Field(
        None, gt=0, description="key: client — memory bound of the per-client state")
    key_idle_seconds: float | None = Field(
        3600.0, gt=0, description="key: client — evict a client idle this long (event time)")


class InputHashConfig(_Model):
    """Window hashes of the raw input, streamed for the query-attack detector (``input_hashes``).

    The sidecar computes :func:`detectors.adversarial.hashing.window_hashes` of each request row
    with these parameters; a reference for ``adversarial.query`` must be hashed with the same
    ones (``monitor.reference`` does it from a raw ``inputs`` array).
    """

    value_range: tuple[float, float] = Field(
        (0.0, 1.0), description="range of the raw input values (digits pixels: [0, 16])")
    levels: int = Field(16, ge=2, le=256, description="quantisation levels")
    window: int = Field(4, ge=1, le=64, description="values per hashed window")
    stride: int = Field(1, ge=1, le=64, description="step between windows")
    seed: int = Field(0, ge=0, lt=1 << 20)

    @model_validator(mode="after")
    def _range(self) -> InputHashConfig:
        lo, hi = self.value_range
        if not hi > lo:
            raise ValueError(f"value_range must be [low, high] with high > low, got "
                             f"{list(self.value_range)}")
        return self


class ModelConfig(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    version: str = "1"
    path: Path | None = Field(None, description="ONNX model served by the sidecar")
    upstream_url: str | None = Field(None, description="tap mode: OIP server to forward to")
    input_name: str | None = None
    embedding_output: str = "embedding"
    logits_output: str | None = None
    penultimate_output: str | None = Field(
        None, description="stream this output of the task graph as the record's named feature "
        "`penultimate` (the adversarial detectors' features view)")
    input_hashes: InputHashConfig | None = Field(
        None, description="stream window hashes of the raw input (adversarial.query)")
    encoder_path: Path | None = Field(None, description="separate SSL encoder ONNX graph")
    tokenizer: Path | None = Field(
        None, description="text model: tokenizer.json; requests send one BYTES input (strings)"
    )
    embedding_dim: int | None = Field(None, gt=0)
    reference: Path | None = Field(None, description="reference artifact directory or array file")
    detectors: list[DetectorConfig] = []

    @model_validator(mode="after")
    def _source(self) -> ModelConfig:
        if self.path is not None and self.upstream_url is not None:
            raise ValueError("give either 'path' (serve locally) or 'upstream_url' (tap), not both")
        return self


class WebhookConfig(_Model):
    url: str = Field(pattern=r"^https?://")
    secret: SecretRef | None = Field(
        None, description="signing secret (raw, or whsec_<base64> as Standard Webhooks issues)"
    )
    extra_secrets: list[SecretRef] = Field(
        [], description="more signing secrets while one is rotated: one more v1 signature each"
    )

    @model_validator(mode="after")
    def _primary_secret(self) -> WebhookConfig:
        if self.extra_secrets and self.secret is None:
            raise ValueError("extra_secrets rotate alongside a primary 'secret': set 'secret' too")
        return self
    timeout_seconds: float = Field(5.0, gt=0)
    max_retries: int = Field(5, ge=0)
    deadline_seconds: float = Field(60.0, gt=0)


class AlertsConfig(_Model):
    kafka: bool = True
    webhooks: list[WebhookConfig] = []
    source: str | None = Field(
        None, description="CloudEvent source URI naming this deployment; default "
        "repwatch://monitor/<monitor.group_id>"
    )


class ServingLimits(_Model):
    """Bounds on what one request may carry; a violation is a 4xx naming the field and limit."""

    max_rows: int = Field(
        4096, gt=0, description="rows per request (infer batch, records, feedback entries); "
        "never more than serving.queue_size"
    )
    max_elements: int = Field(
        4 * 1024 * 1024, gt=0, description="tensor elements per request, summed over inputs"
    )
    max_rank: int = Field(8, gt=0, le=32, description="dimensions of a declared tensor shape")
    max_json_depth: int = Field(32, gt=1, le=512, description="nesting of a JSON body")
    max_id_bytes: int = Field(256, gt=0, description="UTF-8 bytes of a record id")
    max_version_bytes: int = Field(128, gt=0, description="UTF-8 bytes of a model version")
    max_client_id_bytes: int = Field(1024, gt=0, description="raw client id, before hashing")
    max_prediction_bytes: int = Field(16384, gt=0, description="a prediction, msgpack-encoded")
    max_label_bytes: int = Field(1024, gt=0, description="a feedback label (string or number)")
    max_record_bytes: int = Field(
        900_000, gt=0, description="an encoded record; keep below the producer's maximum "
        "request size (1 MB by default in both Kafka clients)"
    )
    min_timestamp_ms: int = Field(0, ge=0, description="earliest record timestamp accepted")
    max_future_ms: int = Field(
        86_400_000, ge=0, description="how far past the sidecar's clock a timestamp may be"
    )


class ServingConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, gt=0, lt=65536)
    grpc_port: int | None = Field(
        None, gt=0, lt=65536, description="OIP gRPC port on the same host; unset = no gRPC"
    )
    queue_size: int = Field(10000, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    nan_policy: Literal["reject", "pass"] = "reject"
    client_id_header: str = "X-Client-Id"
    client_id_key: SecretRef | None = None
    flush_timeout_seconds: float = Field(5.0, gt=0)
    dynamic_batching: bool = False
    max_batch_size: int = Field(32, gt=0, description="rows per dynamic batch")
    batch_timeout_ms: float = Field(1.0, ge=0, description="how long a dynamic batch gathers")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads; 0 = its default")
    stream_records: bool = Field(True, description="send inference records to Kafka")
    kafka_client: Literal["auto", "confluent", "kafka-python"] = Field(
        "auto", description="record producer client; auto = confluent-kafka when installed"
    )
    feedback_cache_size: int = Field(10000, ge=0, description="recent records feedback can join")
    limits: ServingLimits = ServingLimits()
    inference_threads: int = Field(
        4, gt=0, description="threads that parse and run infer requests off the event loop"
    )
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="an infer request still running after this answers 503"
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="a request body not fully received after this answers 408"
    )
    stream_stall_seconds: float = Field(
        30.0, gt=0, description="records waiting with no delivery this long: stream degraded"
    )


class MonitorConfig(_Model):
    group_id: str = "repwatch-monitor"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9108, gt=0, lt=65536)
    checkpoint_dir: Path = Path("./repwatch-state")
    checkpoint_interval_seconds: float = Field(5.0, gt=0)
    unknown_models: Literal["skip", "dlq"] = "skip"
    admin_token: SecretRef | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int | None = Field(
        None, ge=0, lt=65536, description="admin HTTP API (reference replacement); None = off"
    )
    max_poll_records: int = Field(2000, gt=0)
    session_timeout_ms: int = Field(10000, ge=1000, description="consumer group session")
    heartbeat_interval_ms: int = Field(2000, ge=100)
    check_crcs: bool = Field(
        True, description="verify record-batch CRCs on fetch; kafka-python does it in pure "
        "Python unless the `crc32c` package is installed (then it is ~free)"
    )
    model_versions_kept: int = Field(3, gt=0, description="pipelines kept per model")
    model_version_protect_records: int = Field(
        50, gt=0, description="a version whose windows hold at least this many records is "
        "evicted only when every other kept version's windows do too"
    )
    max_batch_retries: int = Field(
        3, ge=0, description="a batch failing with an unexpected error is retried (from the "
        "last checkpoint) this many times, then its records go to the DLQ"
    )
    dlq_max_message_bytes: int = Field(
        1_000_000, gt=1024, description="larger dead-lettered records become a tombstone "
        "(key, partition, offset, reason); keep below the producer's max_request_size"
    )
    prefetch: bool = Field(
        False, description="poll and decode the next batch on a thread while detectors run"
    )


class Config(_Model):
    """The whole platform's configuration."""

    kafka: KafkaConfig = KafkaConfig()
    topics: TopicsConfig = TopicsConfig()
    models: list[ModelConfig] = []
    alerts: AlertsConfig = AlertsConfig()
    serving: ServingConfig = ServingConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _unique_models(self) -> Config:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        return self

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"model {name!r} is not configured; known: {[m.name for m in self.models]}")


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message says where."""


class ConfigPathError(ValueError):
    """A configuration value is unusable at run time (missing secret, unreadable reference…);
    ``path`` is the field (``models[0].reference``), printed as ``error: <path>: <problem>``."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


def _set_path(tree: dict[str, Any], path: list[str], value: Any, var: str) -> None:
    node: Any = tree
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            try:
                idx = int(key)
            except ValueError:
                raise ConfigError(f"{var}: {key!r} must be a list index") from None
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
            else:
                node = node[idx]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{var}: cannot descend into a {type(node).__name__}")
        if last:
            node[key] = value
        else:
            nxt = path[i + 1]
            node = node.setdefault(key, [] if nxt.isdigit() else {})


def apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Apply ``REPWATCH_A__B=value`` overrides onto a raw config tree (in sorted order)."""
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        if path[0] not in Config.model_fields:
            continue  # e.g. REPWATCH_CONFIG names the file; not a field override
        try:
            value = yaml.safe_load(environ[var])
        except yaml.YAMLError as exc:
            raise ConfigError(f"{var}: value is not valid YAML: {exc}") from None
        _set_path(tree, path, value, var)
    return tree


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load a YAML file (optional), apply environment overrides, validate."""
    environ = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded or {}
    tree = apply_env(tree, environ)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def secret_problems(config: Config) -> list[str]:
    """Resolve every secret reference; one ``<field path>: <problem>`` line per failure."""
    refs: list[tuple[str, SecretRef | None]] = [
        ("kafka.sasl_password", config.kafka.sasl_password),
        ("monitor.admin_token", config.monitor.admin_token),
        ("serving.client_id_key", getattr(config.serving, "client_id_key", None)),
    ]
    for i, hook in enumerate(config.alerts.webhooks):
        for name, value in vars(hook).items():
            if isinstance(value, SecretRef):
                refs.append((f"alerts.webhooks[{i}].{name}", value))
            elif isinstance(value, list | tuple):
                refs += [(f"alerts.webhooks[{i}].{name}[{j}]", v)
                         for j, v in enumerate(value) if isinstance(v, SecretRef)]
    out = []
    for path, ref in refs:
        try:
            read_secret(ref)
        except ValueError as exc:
            out.append(f"{path}: {exc}")
    return out


def dump_config(config: Config) -> str:
    """The effective configuration as YAML (secrets appear only as references)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
