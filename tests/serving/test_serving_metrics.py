"""The sidecar's /metrics: catalogue names, content negotiation (OpenMetrics), build info and
the standard process/platform collectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from monitor import metric_catalog as catalog
from monitor.config import Config
from serving.app import create_app

OPENMETRICS = "application/openmetrics-text"


def _client(tiny_models: dict[str, Path], capture: Any) -> TestClient:
    config = Config.model_validate({
        "models": [{"name": "tiny", "path": str(tiny_models["model"]), "version": "3"}],
        "serving": {"intra_op_threads": 1},
    })
    return TestClient(create_app(config, producer_factory=capture))


def test_metrics_negotiates_openmetrics(tiny_models: dict[str, Path], capture: Any) -> None:
    with _client(tiny_models, capture) as client:
        plain = client.get("/metrics")
        om = client.get("/metrics", headers={"Accept": f"{OPENMETRICS}; version=1.0.0"})
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert om.headers["content-type"].startswith(OPENMETRICS)
    assert om.text.endswith("# EOF\n") and not plain.text.endswith("# EOF\n")
    # OpenMetrics names the counter family without _total; its samples keep it.
    assert "# TYPE repwatch_serving_records_sent counter" in om.text
    assert "# TYPE repwatch_serving_records_sent_total counter" in plain.text


def test_metrics_exports_the_catalogue_build_info_and_process(
    tiny_models: dict[str, Path], capture: Any, prom_value: Any
) -> None:
    with _client(tiny_models, capture) as client:
        text = client.get("/metrics").text
    for spec in catalog.for_component("serving"):
        assert f"# HELP {spec.name} {spec.help}" in text, spec.name
    info = [line for line in text.splitlines() if line.startswith("repwatch_build_info{")]
    assert len(info) == 1 and 'component="serving"' in info[0] and info[0].endswith(" 1.0")
    assert prom_value(text, "process_resident_memory_bytes") > 1e6
    assert "python_info{" in text and "python_gc_collections_total{" in text
