"""Kill the worker (SIGKILL, a real process) mid-window and restart it: the window keeps every
record it had, each record enters detector state once, and the alert is not sent twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from monitor import localstack
from monitor.checkpoint import CheckpointStore
from monitor.config import dump_config
from monitor.sinks import AlertLedger

pytestmark = pytest.mark.integration


def _start(cfg_path: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "monitor", "--config", str(cfg_path)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, **env},
        cwd=Path(__file__).resolve().parents[2],
    )


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
          log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}:\n"
                                 + (log.read_text()[-3000:] if log else ""))
        time.sleep(0.1)


def _metric(port: int, line_prefix: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize("prefetch", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["poll-in-loop", "prefetch-thread"])
def test_sigkill_mid_window_then_restart_loses_nothing_and_alerts_once(
    mon, webhook_receiver, tmp_path, prefetch
) -> None:
    port = localstack.free_port()
    config = mon.config(
        [{"name": "drift.mmd", "params": {"n_permutations": 100, "seed": 0},
          "window": {"kind": "count", "size": 400, "min_records": 50}}],
        webhooks=[{"url": webhook_receiver.url, "max_retries": 2, "deadline_seconds": 10}],
        metrics_port=port, checkpoint_interval_seconds=0.3,
        session_timeout_ms=6000, heartbeat_interval_ms=1000, prefetch=prefetch,
    )
    cfg_path = tmp_path / "monitor.yaml"
    cfg_path.write_text(dump_config(config))
    log = tmp_path / "worker.log"
    store = CheckpointStore(config.monitor.checkpoint_dir)

    def ckpt_offset() -> int:
        for part in range(8):
            c = store.load(mon.records_topic, part, "digits")
            if c is not None:
                return c.offset
        return -1

    def seq() -> int:
        for part in range(8):
            c = store.load(mon.records_topic, part, "digits")
            if c is not None:
                return int(c.versions[0][1]["seq"])
        return -1

    # Run 1: 1000 clean records, checkpointed; then SIGKILL (no drain, no final commit).
    mon.produce(mon.make("digits", 1000))
    w1 = _start(cfg_path, log)
    try:
        _wait(lambda: ckpt_offset() == 1000, 60, "checkpoint of 1000 records", w1, log)
    finally:
        w1.send_signal(signal.SIGKILL)
        w1.wait(10)
    assert webhook_receiver.requests == []  # windows [0,400) and [400,800) are clean

    # The window [800, 1200) now holds 200 checkpointed clean records; 200 shifted ones follow.
    shifted = mon.make("digits", 200, shift=1.5, start=1000)
    mon.produce(shifted)

    # Run 2 never checkpoints (interval huge): it alerts, then is killed before any commit.
    # (It is killed once the webhook acknowledged the POST: a delivery cut off before its
    # acknowledgement is re-sent on restart, with the same id and X-Repwatch-Delivery key.)
    ledger = AlertLedger(config.monitor.checkpoint_dir / "alerts")
    w2 = _start(cfg_path, log, REPWATCH_MONITOR__CHECKPOINT_INTERVAL_SECONDS="100000")
    try:
        got = webhook_receiver.wait_for(1, timeout=60)
        assert len(got) == 1, log.read_text()[-3000:]
        _wait(lambda: not any(s.startswith("webhook:") for _, _, sinks in ledger.pending()
                              for s in sinks), 10, "the webhook delivery to be recorded")
    finally:
        w2.send_signal(signal.SIGKILL)
        w2.wait(10)
    alert = got[0]
    window = alert["data"]["window"]
    # No record lost across the crash: the window is exactly records 800..1199.
    assert (window["start"], window["end"], window["records"]) == (800, 1200, 400)
    assert window["first_ts_ms"] == 1_700_000_000_000 + 800 * 10
    assert set(alert["data"]["evidence"]["record_ids"]) <= {r.record_id for r in shifted}
    assert ckpt_offset() == 1000  # run 2 wrote nothing

    # Run 3 replays the same records: same window, same key -> de-duplicated, not re-sent.
    w3 = _start(cfg_path, log)
    try:
        dedup = 'repwatch_alerts_deduplicated_total{model="digits",type="drift"}'
        _wait(lambda: _metric(port, dedup) == 1.0, 60, "the replayed alert to be deduplicated",
              w3, log)
        _wait(lambda: ckpt_offset() == 1200, 30, "checkpoint of 1200 records", w3, log)
    finally:
        w3.send_signal(signal.SIGTERM)  # graceful: drain, checkpoint, commit
        assert w3.wait(30) == 0, log.read_text()[-3000:]
    time.sleep(0.5)
    assert len(webhook_receiver.requests) == 1
    # Exactly once in detector state: 1200 records, although 1000..1199 were read three times.
    assert seq() == 1200
    # Delivery is at least once: run 2 may have been killed between the Kafka send and its
    # acknowledgement, and run 3 then re-sends it. Read everything on the topic (not just the
    # first message) and de-duplicate by source + id, as the documented contract asks.
    on_topic = mon.read(mon.alerts_topic, 100, timeout=5)
    events = [json.loads(m.value) for m in on_topic]
    assert events and {(e["source"], e["id"]) for e in events} == {(alert["source"], alert["id"])}
    assert len({m.value for m in on_topic}) == 1  # a re-sent alert is byte-for-byte the same
