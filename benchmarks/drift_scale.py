"""MMD detectors against the reference size N: memory, fit, predict, online cost per record.

    nice -n 15 .venv/bin/python benchmarks/drift_scale.py [--quick]

Each configuration runs in a subprocess of its own, so that its peak RSS (``ru_maxrss``) is
its own; every library is limited to one thread. Data: standard normal, d = 64, test windows
of 500 rows (batch MMD, 100 permutations) and a stream in batches of 100 (online MMD, window
50, ERT 500). Times are process CPU time (steadier than wall clock on this shared machine)
with wall clock beside it; a single-thread float32 SGEMM (2048^3) is timed in the same
subprocess as a gauge of how much of a core the configuration actually had.

The online detector's run length is checked against its ERT in the same run: mean detection
time without drift over seeded references and restarts, with the whole reference
(``max_reference=None``) and with the default 1,000-row sub-reference.
Writes ``benchmarks/results/drift_scale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gemm_gflops() -> float:
    A = np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32)
    A @ A
    t = time.process_time()
    A @ A
    return 2 * 2048**3 / (time.process_time() - t) / 1e9


def _clock(f: Any) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    f()
    return time.process_time() - c, time.perf_counter() - w


def batch_case(n_ref: int, method: str) -> dict[str, Any]:
    from detectors.drift import MMDDrift

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(n_ref, 64)), rng.normal(0.05, 1.0, size=(500, 64))
    det = MMDDrift(method=method, n_permutations=100)  # type: ignore[arg-type]
    fit = _clock(lambda: det.fit(X))
    pred = min((_clock(lambda: det.predict(Y)) for _ in range(3)), key=lambda t: t[0])
    return {"kind": "mmd", "n": n_ref, "method": det.method_, "fit": fit, "predict": pred}


def online_case(n_ref: int, max_reference: int | None) -> dict[str, Any]:
    from detectors.drift import OnlineMMDDrift

    rng = np.random.default_rng(0)
    X = np.empty((n_ref, 64))
    for lo in range(0, n_ref, 100_000):
        X[lo : lo + 100_000] = rng.normal(size=(min(n_ref, lo + 100_000) - lo, 64))
    det = OnlineMMDDrift(ert=500, window_size=50, max_reference=max_reference)
    fit = _clock(lambda: det.fit(X))
    S = rng.normal(size=(20_000, 64))

    def stream() -> None:
        det.reset()
        for lo in range(0, S.shape[0], 100):
            det.update_batch(S[lo : lo + 100])

    stream()  # warm-up
    cpu, wall = min((_clock(stream) for _ in range(3)), key=lambda t: t[0])
    return {
        "kind": "online", "n": n_ref, "max_reference": max_reference,
        "sub_reference": int(det.x_ref_.shape[0]), "fit": fit,
        "us_per_record": (cpu / S.shape[0] * 1e6, wall / S.shape[0] * 1e6),
    }


def run_length_case(max_reference: int | None, n_ref: int, refs: int) -> dict[str, Any]:
    from detectors.drift import OnlineMMDDrift

    rng = np.random.default_rng(7)
    ert, lengths = 100, []
    for r in range(refs):
        det = OnlineMMDDrift(ert=ert, window_size=20, seed=r, max_reference=max_reference)
        det.fit(rng.normal(size=(n_ref, 8)))
        for _ in range(20):
            det.reset()
            while not (res := det.update_batch(rng.normal(size=(200, 8)))).is_drift:
                pass
            lengths.append(res.detection_time)
    arr = np.asarray(lengths, dtype=float)
    return {
        "kind": "ert", "n": n_ref, "max_reference": max_reference, "ert": ert,
        "mean": float(arr.mean()), "sem": float(arr.std(ddof=1) / np.sqrt(arr.size)),
        "runs": int(arr.size), "references": refs,
    }


def _sub(spec: dict[str, Any]) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )
    if res.returncode != 0:
        return {**spec, "error": res.stderr.strip()[-300:]}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        kind = spec["kind"]
        if kind == "mmd":
            out = batch_case(spec["n"], spec["method"])
        elif kind == "online":
            out = online_case(spec["n"], spec["max_reference"])
        else:
            out = run_length_case(spec["max_reference"], spec["n"], spec["refs"])
        out["gemm_gflops"] = _gemm_gflops()
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _t(pair: list[float]) -> str:
    return f"{pair[0]:.2f} s ({pair[1]:.2f} s wall)"


def write(rows: list[dict[str, Any]], load: tuple[float, ...]) -> None:
    lines = [
        "# MMD detectors against the reference size",
        "",
        "Generated by `benchmarks/drift_scale.py` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with ~6 other engineers' jobs (load "
        f"average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; `nice -n 15`); numpy "
        f"{np.__version__}. One thread per library. CPU time first, wall clock in brackets; "
        "`SGEMM` is the single-thread float32 2048^3 rate measured in the same subprocess "
        "(an unloaded core here does ~90-99 GFLOP/s).",
        "",
        "## Batch MMD (d = 64, test window 500, 100 permutations)",
        "",
        "| N | method | fit | predict | peak RSS MB | SGEMM GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "mmd":
            continue
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['method']} | failed: {r['error']} |||")
            continue
        lines.append(
            f"| {r['n']:,} | {r['method']} | {_t(r['fit'])} | {_t(r['predict'])} | "
            f"{r['peak_rss_mb']:.0f} | {r['gemm_gflops']:.0f} |"
        )
    lines += [
        "",
        "## Online MMD (d = 64, window 50, ERT 500, 20,000 records in batches of 100)",
        "",
        "| N | max_reference | sub-reference rows | fit | µs per record, CPU (wall) | peak RSS MB "
        "| SGEMM GFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "online":
            continue
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['max_reference']} | failed: {r['error']} |||||")
            continue
        us = r["us_per_record"]
        lines.append(
            f"| {r['n']:,} | {r['max_reference']} | {r['sub_reference']:,} | {_t(r['fit'])} | "
            f"{us[0]:.1f} ({us[1]:.1f}) | {r['peak_rss_mb']:.0f} | {r['gemm_gflops']:.0f} |"
        )
    lines += [
        "",
        "## Online MMD run length without drift against the target ERT (d = 8, window 20)",
        "",
        "| N | max_reference | target ERT | mean run length ± s.e. "
        "| runs (references x restarts) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "ert":
            continue
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['max_reference']} | failed: {r['error']} |||")
            continue
        lines.append(
            f"| {r['n']:,} | {r['max_reference']} | {r['ert']} | {r['mean']:.1f} ± {r['sem']:.1f} "
            f"| {r['runs']} ({r['references']} x 20) |"
        )
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "drift_scale.md"
    path.write_text("\n".join(lines))
    print(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(_case(json.loads(args.case))))
        return
    if args.quick:
        specs: list[dict[str, Any]] = [
            {"kind": "mmd", "n": 1000, "method": "exact"},
            {"kind": "online", "n": 2000, "max_reference": 1000},
            {"kind": "ert", "n": 1500, "max_reference": 300, "refs": 2},
        ]
    else:
        specs = [
            {"kind": "mmd", "n": 1000, "method": "exact"},
            {"kind": "mmd", "n": 10_000, "method": "exact"},
            {"kind": "mmd", "n": 20_000, "method": "exact"},
            {"kind": "mmd", "n": 100_000, "method": "rff"},
            {"kind": "online", "n": 1000, "max_reference": 1000},
            {"kind": "online", "n": 10_000, "max_reference": None},
            {"kind": "online", "n": 10_000, "max_reference": 1000},
            {"kind": "online", "n": 100_000, "max_reference": 1000},
            {"kind": "online", "n": 1_000_000, "max_reference": 1000},
            {"kind": "online", "n": 100_000, "max_reference": 500},
            {"kind": "ert", "n": 3000, "max_reference": None, "refs": 15},
            {"kind": "ert", "n": 3000, "max_reference": 1000, "refs": 15},
        ]
    rows = []
    for spec in specs:
        print("running", spec, flush=True)
        rows.append(_sub(spec))
        print(rows[-1], flush=True)
    write(rows, os.getloadavg())


if __name__ == "__main__":
    main()
