"""Peak RSS of a worker holding 10 models, this tree beside an earlier one, in one run.

Run: ``.venv/bin/python benchmarks/monitor_memory.py --before REV`` — writes
``benchmarks/results/monitor_memory.md``.

Each model has its **own** reference directory (10 copies of one fitted reference: distinct
files, so nothing is shared through the page cache between models; the references are those of
``benchmarks/monitor_throughput.py``'s full scenario: RFF-MMD on 10k rows, online MMD on 2k,
kNN OOD on 10k, d = 128). Every reference is fitted and saved by the tree that then loads it
(each tree writes its own reference format). Child processes, one per measurement, alternate
between the trees (before, after, before, after…) on one Tansu broker; each loads the 10
references, then consumes ``--per-model`` records per model through every detector. Reported:
VmHWM (peak RSS) after loading and at the end, and the final RSS split into anonymous memory
and file-backed pages (the memory-mapped references), plus what model ``m0``'s detectors hold
(numpy arrays, private vs mapped from the reference file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "monitor_memory.md"


def _status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in MB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def _bench(tree: Path) -> Any:
    sys.path.insert(0, str(tree / "benchmarks"))
    from monitor_compare import _bench as load

    return load(tree)


def child_save(tree: str, base: str, n_models: int) -> None:
    """Fit the full scenario's references with ``tree``'s code, save ``n_models`` copies."""
    import numpy as np

    b = _bench(Path(tree))
    from monitor.reference import save_reference

    X = np.random.default_rng(0).normal(size=(10000, b.D))
    tmp = Path(tempfile.mkdtemp())
    cfg = b.make_config("127.0.0.1:9", "t", tmp, ["m0"], 10000, tmp / "unused")
    ref = b.fit_references(cfg, X, 10000)["m0"]
    first = save_reference(ref, Path(base) / "m0")
    for i in range(1, n_models):
        shutil.copytree(first, Path(base) / f"m{i}")


def _held(det: Any) -> tuple[float, float, dict[str, float]]:
    """MB of numpy arrays a detector holds: private, mapped from a file, and the largest."""
    import numpy as np

    private = mapped = 0.0
    arrays: dict[str, float] = {}
    seen: set[int] = set()
    for name, v in vars(det).items():
        if isinstance(v, np.ndarray) and id(v) not in seen:
            seen.add(id(v))
            base = v
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            if not isinstance(base, np.ndarray):  # backed by an mmap, not by numpy's heap
                mapped += v.nbytes / 1e6
            else:
                private += v.nbytes / 1e6
            arrays[name] = v.nbytes / 1e6
    top = dict(sorted(arrays.items(), key=lambda kv: -kv[1])[:3])
    return private, mapped, top


def child_rss(tree: str, broker: str, base: str, n_models: int, per_model: int) -> None:
    """One worker with ``n_models`` models (reference ``base/m<i>``); prints a RESULT line."""
    b = _bench(Path(tree))
    from prometheus_client import CollectorRegistry

    import monitor
    from monitor.config import Config
    from monitor.runtime import Worker

    assert Path(monitor.__file__).resolve().is_relative_to(Path(tree).resolve())
    topic = f"rss.{os.getpid()}"
    models = [f"m{i}" for i in range(n_models)]
    raw = b.make_config(broker, topic, Path(tempfile.mkdtemp()), models, 10000,
                        Path("unused")).model_dump(mode="json")
    for m in raw["models"]:
        m["reference"] = str(Path(base) / m["name"])
    cfg = Config.model_validate(raw)
    start = _status()
    w = Worker(cfg, CollectorRegistry(), consumer_settings=b.TIMEOUTS)  # loads the references
    loaded = _status()
    held = {k: _held(d) for k, d in w.references["m0"].detectors.items()}
    for m in models:
        b.produce(broker, topic, per_model, m, 10000, None, 1_700_000_000_000)
    w.start()
    end = time.monotonic() + 300
    while w.processed < n_models * per_model and time.monotonic() < end:
        w.step(0.1)
    final = _status()
    w.close()
    print("RESULT " + json.dumps({"start": start, "loaded": loaded, "final": final,
                                  "processed": w.processed, "held_m0": held,
                                  "trim_seconds": w.profile.get("memory", 0.0)}))


def tolerance(n: int = 2000) -> list[dict[str, Any]]:
    """Detector results from the float32 (and float16-rounded) stored references against the
    float64 fit, on the same windows: clean records and two shifts."""
    import numpy as np

    b = _bench(ROOT)
    from monitor.reference import load_reference, save_reference

    X = np.random.default_rng(0).normal(size=(10000, b.D))
    tmp = Path(tempfile.mkdtemp())
    cfg = b.make_config("127.0.0.1:9", "t", tmp, ["m0"], 10000, tmp / "unused")
    fitted = b.fit_references(cfg, X, 10000)["m0"]
    d32 = save_reference(fitted, tmp / "f32")
    d16 = Path(shutil.copytree(d32, tmp / "f16"))
    for f in d16.glob("*.npy"):  # what float16 storage would hold, read back as float32
        a = np.load(f)
        if a.dtype == np.float32:
            np.save(f, a.astype(np.float16).astype(np.float32))
    mc = cfg.models[0]
    refs = {"float64 fit": fitted, "float32 stored": load_reference(mc, d32),
            "float16 stored": load_reference(mc, d16)}
    rng = np.random.default_rng(5)
    windows = {f"shift {s}": rng.normal(size=(n, b.D)) + s for s in (0.0, 0.03, 0.1)}
    out = []
    for label, ref in refs.items():
        row: dict[str, Any] = {"reference": label}
        for w, Y in windows.items():
            r = ref.detectors["drift.mmd"].predict(Y)
            on = ref.detectors["drift.mmd_online"].clone().update_batch(Y)
            knn = ref.detectors["ood.knn"].predict(Y)
            row[w] = {"mmd_stat": float(r.statistic), "mmd_p": float(r.p_value),
                      "online_max": float(np.max(on.statistics)),
                      "online_t": on.detection_time, "knn_scores": knn.scores,
                      "knn_flags": int(np.sum(knn.is_ood))}
        out.append(row)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def tolerance_lines(rows: list[dict[str, Any]]) -> list[str]:
    import numpy as np

    base = rows[0]
    lines = ["", "## Results from the stored references against the float64 fit", "",
             "Same detectors, same windows of 2,000 records (d = 128; shift = added to every "
             "dimension). float16 = the stored float32 arrays rounded to float16 and read back "
             "(what float16 storage would give; the detectors compute in float32/float64 "
             "either way).", "",
             "| reference | window | MMD² (rel. diff) | MMD p-value | online MMD max stat (rel. "
             "diff) / detection at | kNN max abs score diff | kNN flagged |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for w in (k for k in row if k != "reference"):
            v, b0 = row[w], base[w]
            rel = abs(v["mmd_stat"] - b0["mmd_stat"]) / max(abs(b0["mmd_stat"]), 1e-12)
            orel = abs(v["online_max"] - b0["online_max"]) / max(abs(b0["online_max"]), 1e-12)
            dk = float(np.max(np.abs(np.asarray(v["knn_scores"]) - b0["knn_scores"])))
            lines.append(f"| {row['reference']} | {w} | {v['mmd_stat']:.3e} ({rel:.1e}) | "
                         f"{v['mmd_p']:.3f} | {v['online_max']:.3e} ({orel:.1e}) / "
                         f"{v['online_t']} | {dk:.1e} | {v['knn_flags']} |")
    return lines


def _run(tree: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, cwd=tree, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    if out.returncode:
        raise RuntimeError(f"{args[0]} in {tree} failed:\n{out.stderr[-3000:]}")
    return {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", metavar="REV", required=True, help="the earlier tree")
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--per-model", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from monitor import localstack

    tol = tolerance_lines(tolerance())
    print("\n".join(tol), flush=True)

    old = Path(tempfile.mkdtemp(prefix="repwatch-before-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old),
                    args.before], check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(old), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=True).stdout.strip()
    here = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    trees = {"before": old, "after": ROOT}
    refs = {k: Path(tempfile.mkdtemp(prefix=f"refs-{k}-")) for k in trees}
    broker = localstack.start_tansu()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in trees}
    try:
        for k, tree in trees.items():
            _run(tree, "--save", str(tree), str(refs[k]), str(args.models))
        for _ in range(args.rounds):
            for k, tree in trees.items():
                runs[k].append(_run(tree, "--child", str(tree), broker.address, str(refs[k]),
                                    str(args.models), str(args.per_model)))
                print(k, json.dumps(runs[k][-1]), flush=True)
    finally:
        broker.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                       capture_output=True)
        for p in refs.values():
            shutil.rmtree(p, ignore_errors=True)
    sizes = {k: sum(f.stat().st_size for f in (refs[k] / "m0").rglob("*") if f.is_file())
             for k in trees} if all((refs[k] / "m0").exists() for k in trees) else {}
    args.out.write_text("\n".join(report(args, sha, here, runs, sizes) + tol) + "\n")
    print(args.out.read_text())


def report(args: Any, sha: str, here: str, runs: dict[str, list[dict[str, Any]]],
           sizes: dict[str, int]) -> list[str]:
    load = os.getloadavg()
    lines = [
        "# Worker memory: 10 models, before and after",
        "",
        f"`benchmarks/monitor_memory.py --before {args.before}` (before = {sha}, after = "
        f"{here} plus the working tree), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end), Python "
        f"{platform.python_version()}. One worker per child process with {args.models} models, "
        "each with its own reference directory (RFF-MMD on 10k rows, online MMD on 2k, kNN OOD "
        f"on 10k, d = 128), then {args.per_model:,} records per model through every detector. "
        f"Trees alternate (before, after, …), {args.rounds} runs each. Memory does not depend "
        "on the machine's load the way time does; the runs agree to a few MB.",
        "",
        "| tree | run | peak RSS after loading (MB) | peak RSS at the end (MB) | final RSS: "
        "anonymous / file-backed (MB) | records processed |",
        "|---|---|---|---|---|---|",
    ]
    for k, rs in runs.items():
        for i, r in enumerate(rs):
            f = r["final"]
            lines.append(f"| {k} | {i + 1} | {r['loaded']['VmHWM']:,.0f} | {f['VmHWM']:,.0f} | "
                         f"{f['RssAnon']:,.0f} / {f['RssFile']:,.0f} | {r['processed']:,} |")
    peak = {k: min(r["final"]["VmHWM"] for r in rs) for k, rs in runs.items() if rs}
    if len(peak) == 2:
        lines += ["", f"**Peak RSS: {peak['before']:,.0f} MB before, {peak['after']:,.0f} MB "
                  f"after ({peak['after'] / peak['before']:.2f}x; target < 300 MB: "
                  f"{'met' if peak['after'] < 300 else 'not met'}).** Python, numpy, the "
                  f"Kafka client and the detectors' modules alone: "
                  f"{runs['after'][0]['start']['VmRSS']:,.0f} MB before any reference loads."]
    lines += ["", "What model `m0`'s detectors hold (numpy arrays, MB: private / mapped from "
              "the reference file):", "", "| detector | before | after |", "|---|---|---|"]
    held = {k: rs[0]["held_m0"] for k, rs in runs.items() if rs}
    for det in held.get("after", {}):
        cells = []
        for k in ("before", "after"):
            p, m, top = held.get(k, {}).get(det, (0.0, 0.0, {}))
            big = ", ".join(f"`{n}` {mb:.1f}" for n, mb in top.items() if mb >= 0.1)
            cells.append(f"{p:.1f} / {m:.1f} ({big})")
        lines.append(f"| {det} | " + " | ".join(cells) + " |")
    trims = [r.get("trim_seconds", 0.0) for r in runs.get("after", [])]
    if trims:
        lines += ["", f"`malloc_trim` after each checkpoint (every 5 s) took "
                  f"{max(trims) * 1000:.1f} ms in all, over a whole run (the larger of the "
                  "after runs)."]
    if sizes:
        lines += ["", f"Reference directory on disk: {sizes['before'] / 1e6:.1f} MB before, "
                  f"{sizes['after'] / 1e6:.1f} MB after."]
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--save":
        child_save(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_rss(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
