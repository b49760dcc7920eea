"""``monitor_throughput.py --compare REV``: this tree's pipeline beside the pipeline of REV.

Both run the **full** scenario of :mod:`benchmarks.monitor_throughput` (sliding MMD every 5 s,
online MMD and kNN OOD on every record, d = 128) in child processes, on one broker, in
alternating order (previous, new, previous, new…): each child imports its own tree's
``monitor`` package (REV is checked out with ``git worktree add --detach``). Then the new
pipeline alone runs a **keyed** scenario: ``ood.knn`` with ``key: client`` over records from
10,000 active clients (one client's state: a ring of its last 100 flags), reporting the rate
and the checkpoint cost. Writes ``benchmarks/results/monitor_pipeline_v2.md``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "monitor_pipeline_v2.md"


def _bench(tree: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_tree", tree / "benchmarks" / "monitor_throughput.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # puts `tree` first on sys.path: its own monitor package
    return mod


def child(tree: str, broker: str, scenario: str, n: int) -> None:
    """One run in this process, with the ``monitor`` package of ``tree``; prints JSON."""
    import numpy as np

    b = _bench(Path(tree))
    import monitor

    assert Path(monitor.__file__).resolve().is_relative_to(Path(tree).resolve()), monitor.__file__
    X = np.random.default_rng(0).normal(size=(10000, b.D))
    topic = f"cmp.{scenario}.{os.getpid()}"
    tmp = Path(tempfile.mkdtemp())
    if scenario == "full":
        cfg = b.make_config(broker, topic, tmp, ["digits"], 10000, tmp / "unused")
        refs = b.fit_references(cfg, X, 10000)
        b.produce(broker, topic, n, "digits", 10000.0, None, 1_700_000_000_000)
    else:
        from monitor.config import Config
        from monitor.reference import fit_reference

        cfg = Config.model_validate({
            "kafka": {"bootstrap_servers": [broker]},
            "topics": {"records": topic, "alerts": f"{topic}.alerts", "dlq": f"{topic}.dlq"},
            "models": [{"name": "digits", "detectors": [
                {"name": "ood.knn", "params": {"k": 10, "fpr": 0.01}, "key": "client",
                 "window": {"size": 100, "min_records": 20}, "min_flagged_fraction": 0.5,
                 "max_keys": 20000}]}],
            "monitor": {"group_id": f"g-{topic}", "checkpoint_dir": str(tmp),
                        "checkpoint_interval_seconds": 1.0, "max_poll_records": 5000},
        })
        refs = {"digits": fit_reference(cfg.models[0], X[:2000], "bench")}
        _produce_clients(b, broker, topic, n, 10000)
    res = b.run_worker(cfg, refs, n)
    keyed = [p for p in tmp.rglob("MANIFEST.json")]
    res["keyed_stores"] = len(keyed)
    print("RESULT " + json.dumps(res, default=float))


def _produce_clients(b: Any, broker: str, topic: str, n: int, clients: int) -> None:
    import hashlib

    import numpy as np
    from kafka import KafkaProducer

    from monitor import records as R

    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, b.D)).astype(np.float32)
    names = [hashlib.sha256(f"c{i}".encode()).hexdigest()[:32] for i in range(clients)]
    who = rng.integers(0, clients, n)
    p = KafkaProducer(bootstrap_servers=broker, batch_size=256 * 1024, linger_ms=10)
    for i in range(n):
        p.send(topic, key=b"digits", value=R.encode(R.Record(
            model="digits", record_id=f"{i:09d}", timestamp_ms=1_700_000_000_000 + i // 10,
            embedding=X[i], model_version="1", client_id=names[who[i]])))
    p.flush(60)
    p.close()


def _run(tree: Path, broker: str, scenario: str, n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--child", str(tree), broker, scenario,
                          str(n)], capture_output=True, text=True, env=env, cwd=tree,
                         timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])  # type: ignore[no-any-return]
    raise RuntimeError(f"{scenario} run in {tree} failed:\n{out.stderr[-3000:]}")


def compare(rev: str, n: int, rounds: int = 2, out: Path = OUT) -> None:
    sys.path.insert(0, str(ROOT))
    from monitor import localstack

    old = Path(tempfile.mkdtemp(prefix="repwatch-prev-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), rev],
                   check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(old), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    broker = localstack.start_tansu()
    runs: dict[str, list[dict[str, Any]]] = {"previous": [], "v2": []}
    try:
        for _ in range(rounds):
            for name, tree in (("previous", old), ("v2", ROOT)):
                runs[name].append(_run(tree, broker.address, "full", n))
                print(name, runs[name][-1]["rate"], flush=True)
        keyed = _run(ROOT, broker.address, "keyed", n)
        print("keyed", keyed["rate"], flush=True)
    finally:
        broker.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                       capture_output=True)
    out.write_text("\n".join(report(rev, sha, n, runs, keyed)) + "\n")
    print(out.read_text())


def report(rev: str, sha: str, n: int, runs: dict[str, list[dict[str, Any]]],
           keyed: dict[str, Any]) -> list[str]:
    best = {k: max(v, key=lambda r: r["rate"]) for k, v in runs.items()}
    ratio = best["v2"]["rate"] / best["previous"]["rate"]
    mean = {k: sum(r["rate"] for r in v) / len(v) for k, v in runs.items()}
    cpu = {k: sum(r["cpu_per_1k"] for r in v) / len(v) for k, v in runs.items()}
    load = os.getloadavg()[0]

    def per_1k(r: dict[str, Any], stage: str) -> float:
        return r["profile"].get(stage, 0.0) / (r["rate"] * r["elapsed"]) * 1000

    lines = [
        "# Monitor pipeline v2 beside the previous pipeline",
        "",
        f"`benchmarks/monitor_throughput.py --compare {rev} --records {n}` (previous = {sha}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs **shared with other jobs (load average {load:.1f} at the end)**, "
        f"Python {platform.python_version()}. One worker per child process, one model, d = 128, "
        "records pre-loaded; the two pipelines ran alternately on the same broker "
        f"({len(runs['v2'])} runs each).",
        "",
        "| scenario | pipeline | records/s (each run) | best | mean | CPU-s per 1k records "
        "(best run) | route s/1k | detectors s/1k | checkpoint s/1k |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("previous", "v2"):
        r = best[name]
        each = ", ".join(f"{x['rate']:,.0f}" for x in runs[name])
        lines.append(f"| full | {name} | {each} | {r['rate']:,.0f} | {mean[name]:,.0f} | "
                     f"{r['cpu_per_1k']:.3f} | {per_1k(r, 'route'):.4f} | "
                     f"{per_1k(r, 'detectors'):.4f} | {per_1k(r, 'checkpoint'):.4f} |")
    lines += [
        f"| keyed (10k clients) | v2 | {keyed['rate']:,.0f} | {keyed['rate']:,.0f} | – | "
        f"{keyed['cpu_per_1k']:.3f} | {per_1k(keyed, 'route'):.4f} | "
        f"{per_1k(keyed, 'detectors'):.4f} | {per_1k(keyed, 'checkpoint'):.4f} |",
        "",
        f"**full, v2 / previous: {ratio:.2f}x** in records/s on the best runs "
        f"({mean['v2'] / mean['previous']:.2f}x on the means; target ≥ 0.95x), and "
        f"**{cpu['previous'] / cpu['v2']:.2f}x in records per CPU-second** (mean over the runs; "
        "CPU time is what the worker spends, and is far less disturbed than wall time by the "
        "other jobs on this machine). Read the ratios with the individual runs beside them.",
        "",
        "The keyed scenario: `ood.knn` (2k-row reference) with `key: client`, 10,000 active "
        "clients drawn uniformly per record, a ring of each client's last 100 flags in the "
        "keyed store, checkpoints every second (incremental: only the clients seen since the "
        "previous checkpoint are written). How checkpoint cost grows with dirty keys, not total "
        "keys, is measured on the store itself in "
        "[state_store.md](state_store.md).",
    ]
    return lines


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
