"""Alert delivery: a durable ledger (dedupe + outbox) and a webhook dispatcher thread.

**Ledger.** Every alert is *claimed* before it is sent: :meth:`AlertLedger.claim` creates
``<dir>/<key>.json`` with ``O_CREAT | O_EXCL`` (atomic, also across workers sharing the
directory) holding the event and the sinks still to deliver to. A key already on disk is a
duplicate (a window replayed after a restart) and is not sent again. Sinks mark their delivery
done; on start the worker re-sends what was claimed but not delivered (the outbox), so a crash
between claim and send loses nothing. The ledger lives in the checkpoint directory.

**Webhooks** are POSTed from one background thread per webhook (a dead endpoint does not delay
the others), signed to the Standard Webhooks spec (:func:`monitor.alerts.delivery_headers`: the
alert key as ``webhook-id`` on every attempt, a fresh ``webhook-timestamp`` and one ``v1``
signature per secret on each attempt, so a retry 50 s later is still inside a receiver's
tolerance window), with a ``repwatch/<version>`` User-Agent, exponential backoff with jitter and
a per-alert deadline; the queue is bounded and :meth:`WebhookDispatcher.submit` never blocks, so
an unreachable webhook never stalls consumption.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.alerts import CONTENT_TYPE, delivery_headers, encode_event, signing_key
from monitor.version import user_agent

log = logging.getLogger(__name__)


class AlertLedger:
    """Durable set of alert keys with the sinks each still has to reach."""

    def __init__(self, directory: Path, retention_seconds: float = 30 * 86400) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        cutoff = time.time() - retention_seconds
        for p in self.dir.glob("*.json"):  # old keys can no longer be replayed: forget them
            if p.stat().st_mtime < cutoff:
                p.unlink(missing_ok=True)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def claim(self, key: str, event: dict[str, Any], sinks: list[str]) -> bool:
        """Record a new alert; False if this key was claimed before (a duplicate)."""
        body = json.dumps({"event": event, "pending": sinks}).encode()
        try:
            fd = os.open(self._path(key), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def delivered(self, key: str, sink: str) -> None:
        with self._lock:
            path = self._path(key)
            try:
                entry = json.loads(path.read_bytes())
            except (OSError, ValueError):
                return
            entry["pending"] = [s for s in entry["pending"] if s != sink]
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(json.dumps(entry).encode())
            os.replace(tmp, path)

    def pending(self) -> list[tuple[str, dict[str, Any], list[str]]]:
        """Alerts claimed but not delivered everywhere: ``(key, event, sinks)``."""
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                entry = json.loads(p.read_bytes())
            except (OSError, ValueError):
                continue  # a claim torn by a crash mid-write: nothing was sent for it
            if entry.get("pending"):
                out.append((p.stem, entry["event"], list(entry["pending"])))
        return out

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()


@dataclass(frozen=True)
class Webhook:
    """One webhook endpoint: ``secret`` signs, ``extra_secrets`` add signatures in a rotation."""

    url: str
    secret: bytes | None = None
    timeout_seconds: float = 5.0
    max_retries: int = 5
    deadline_seconds: float = 60.0
    extra_secrets: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        for s in self.secrets:
            try:
                signing_key(s)
            except ValueError as exc:
                raise ValueError(f"webhook {self.url}: {exc}") from None

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """Every signing secret, the primary first (it also signs the deprecated header)."""
        return ((self.secret,) if self.secret is not None else ()) + tuple(self.extra_secrets)

    @property
    def sink(self) -> str:
        return f"webhook:{self.url}"


class WebhookDispatcher:
    """Delivers alert events to webhooks, one daemon thread and bounded queue per webhook."""

    def __init__(
        self,
        webhooks: list[Webhook],
        on_result: Callable[[str, str, str], None] | None = None,
        max_queue: int = 1000,
        backoff_seconds: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.webhooks = webhooks
        self.clock = clock  # the webhook-timestamp of each attempt
        self.on_result = on_result or (lambda key, sink, outcome: None)
        self.backoff = backoff_seconds
        self._stop = threading.Event()
        self._queues: list[queue.Queue[tuple[str, bytes, Webhook, float] | None]] = []
        self._threads = []
        for i, _ in enumerate(webhooks):
            q: queue.Queue[tuple[str, bytes, Webhook, float] | None] = queue.Queue(max_queue)
            t = threading.Thread(target=self._run, args=(q,), name=f"repwatch-webhook-{i}",
                                 daemon=True)
            t.start()
            self._queues.append(q)
            self._threads.append(t)

    def submit(self, key: str, event: dict[str, Any], sinks: list[str] | None = None) -> None:
        body = encode_event(event)
        for hook, q in zip(self.webhooks, self._queues, strict=True):
            if sinks is not None and hook.sink not in sinks:
                continue
            try:
                q.put_nowait((key, body, hook, time.monotonic() + hook.deadline_seconds))
            except queue.Full:
                log.error("webhook queue full: alert %s to %s dropped", key, hook.url)
                self.on_result(key, hook.sink, "dropped")

    def _run(self, q: queue.Queue[tuple[str, bytes, Webhook, float] | None]) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            key, body, hook, deadline = item
            outcome = self._deliver(key, body, hook, deadline)
            self.on_result(key, hook.sink, outcome)

    def _deliver(self, key: str, body: bytes, hook: Webhook, deadline: float) -> str:
        for attempt in range(hook.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                break
            headers = {"Content-Type": CONTENT_TYPE, "User-Agent": user_agent(),
                       **delivery_headers(key, body, hook.secrets, int(self.clock()))}
            req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=min(hook.timeout_seconds, remaining)):
                    return "delivered"
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    log.error("webhook %s rejected alert %s: HTTP %s", hook.url, key, exc.code)
                    return "rejected"
                err = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                err = str(exc)
            delay = self.backoff * 2**attempt * (0.5 + random.random())
            log.warning("webhook %s attempt %d for alert %s failed (%s)", hook.url, attempt + 1,
                        key, err)
            if self._stop.wait(min(delay, max(deadline - time.monotonic(), 0))):
                break
        log.error("webhook %s: alert %s not delivered before its deadline", hook.url, key)
        return "failed"

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued within ``timeout``, then stop retrying and return."""
        end = time.monotonic() + timeout
        while any(not q.empty() for q in self._queues) and time.monotonic() < end:
            time.sleep(0.02)
        self._stop.set()
        for q in self._queues:
            try:
                q.put_nowait(None)
            except queue.Full:
                pass
        for t in self._threads:
            t.join(max(end - time.monotonic(), 0.1))
