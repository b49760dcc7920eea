"""A client-keyed stage across kill -9 (a real worker process on the real broker): every client's
state counts each of its records exactly once and the attacking client is alerted once; and an
idle time window closes on its timer within timeout + one poll interval."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from monitor import localstack
from monitor import records as R
from monitor.config import dump_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _metric(port: int, prefix: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def _wait(pred, timeout: float, what: str, proc, log: Path) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited while waiting for {what}:\n"
                                 + log.read_text()[-3000:])
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}:\n" + log.read_text()[-3000:])
        time.sleep(0.05)


def _stream(mon, n: int, start: int, counters: dict[str, int]) -> list[R.Record]:
    rng = np.random.default_rng(start)
    clients = [f"c{k:02d}" for k in range(40)] + ["attacker"]
    out = []
    for i in range(start, start + n):
        c = clients[int(rng.integers(len(clients)))]
        shift = 6.0 if c == "attacker" and i >= 1500 else 0.0
        counters[c] = counters.get(c, 0) + 1
        out.append(R.Record(model="digits", record_id=f"r{i}", timestamp_ms=1_700_000_000_000 + i,
                            embedding=rng.normal(shift, 1.0, mon.dim).astype(np.float32),
                            model_version="1", client_id=c))
    return out


def test_kill_9_mid_stream_with_keyed_state_loses_nothing_and_repeats_no_alert(
    mon, tmp_path
) -> None:
    port = localstack.free_port()
    config = mon.config(
        [{"name": "ood.knn", "params": {"k": 5, "fpr": 0.01, "normalize": False},
          "key": "client", "window": {"size": 20, "min_records": 10},
          "min_flagged_fraction": 0.5}],
        metrics_port=port, checkpoint_interval_seconds=0.2, max_poll_records=200,
        session_timeout_ms=6000, heartbeat_interval_ms=1000,
    )
    cfg_path = tmp_path / "monitor.yaml"
    cfg_path.write_text(dump_config(config))
    log = tmp_path / "worker.log"
    counters: dict[str, int] = {}
    mon.produce(_stream(mon, 1200, 0, counters))
    cmd = [sys.executable, "-m", "monitor.cli", "monitor", "--config", str(cfg_path)]
    w1 = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    processed = 'repwatch_records_processed_total{kind="inference"'
    try:
        _wait(lambda: _metric(port, processed) >= 1200, 60, "1200 records", w1, log)
        mon.produce(_stream(mon, 1800, 1200, counters))  # the attack starts at record 1500
        _wait(lambda: _metric(port, processed) >= 1700, 60, "the attack", w1, log)
    finally:
        w1.send_signal(signal.SIGKILL)  # mid-stream: some of it checkpointed, some not
        w1.wait(10)
    w2 = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        def done() -> bool:
            files = list(Path(config.monitor.checkpoint_dir).rglob("digits.npz"))
            if not files:
                return False
            with np.load(files[0]) as f:
                meta = json.loads(f["__meta__"].tobytes())
            return int(meta["offset"]) == 3000
        _wait(done, 60, "checkpoint of all 3000 records", w2, log)
    finally:
        w2.send_signal(signal.SIGTERM)
        assert w2.wait(30) == 0, log.read_text()[-3000:]
    (keyed_dir,) = [p for p in Path(config.monitor.checkpoint_dir).rglob("ood.knn") if p.is_dir()]
    from monitor.pipeline import Pipeline
    from monitor.reference import load_reference

    mcfg = config.models[0]
    pipe = Pipeline(mcfg, "1", load_reference(mcfg, Path(mcfg.reference)), 0,
                    keyed_dir.parent)
    store = pipe.keyed[0].store
    assert store.offset == 3000
    got = {c: int(store.peek(c)["n"]) for c in counters}  # type: ignore[index]
    assert got == counters  # every record of every client counted exactly once
    alerts = mon.read(mon.alerts_topic, 100, timeout=5)
    events = [json.loads(m.value) for m in alerts]
    assert {(e["source"], e["id"]) for e in events} and {
        e["data"]["key"] for e in events} == {"attacker"}
    assert len({e["id"] for e in events}) == 1  # one alert; a re-send would repeat its id


def test_an_idle_time_window_closes_within_its_timeout_plus_one_poll(mon) -> None:
    idle, poll = 1.0, 0.2
    config = mon.config([{"name": "drift.mmd", "params": {"n_permutations": 50, "seed": 0},
                          "window": {"kind": "time", "size": 3600, "min_records": 20,
                                     "idle_close_seconds": idle}}])
    worker = mon.worker(config)
    tests = worker.metrics.drift_tests.labels("digits", "1", "drift.mmd")
    try:
        mon.produce(mon.make("digits", 100))
        mon.run_until(worker, lambda: worker.processed >= 100)
        last = time.monotonic()
        ends = []
        while tests._value.get() == 0:
            assert time.monotonic() - last < 10, "the idle window never closed"
            worker.step(poll)  # poll (up to `poll` s), then the idle timers
            ends.append(time.monotonic())
        waited = time.monotonic() - last
    finally:
        worker.close()
    # It closed in the first loop turn that ended after the timeout: within timeout + one poll
    # interval on an idle machine (the wall bound below allows for a loaded one).
    assert ends[-1] >= last + idle and all(e < last + idle for e in ends[:-1])
    assert idle <= waited <= idle + poll + 1.0, waited
    assert tests._value.get() == 1
