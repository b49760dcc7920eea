"""MMD detectors against the reference size N: memory, fit, predict, online cost per record.

    nice -n 15 .venv/bin/python benchmarks/drift_scale.py [--quick] [--baseline REV]

Each configuration runs in a subprocess of its own, so that its peak RSS (``ru_maxrss``) is
its own; every library is limited to one thread. Data: standard normal, d = 64, test windows
of 500 rows (batch MMD, 100 permutations) and a stream in batches of 100 (online MMD, window
50, ERT 500). Times are process CPU time (steadier than wall clock on this shared machine)
with wall clock beside it; a single-thread float32 SGEMM (2048^3) is timed in the same
subprocess as a gauge of how much of a core the configuration actually had.

The online detector's run length is checked against its ERT in the same run: mean detection
time without drift over seeded references and restarts, with the whole reference
(``max_reference=None``) and with the default 1,000-row sub-reference. Detection power is
measured on the shifts of ``benchmarks/drift_quality.py``. ``--baseline REV`` loads
``OnlineMMDDrift`` as it was at git revision ``REV`` (with that revision's BLAS pin) and runs it
beside the current one in the same subprocesses: timed streams alternate between the two with
the same number of repeats, and the power and run-length rows use the same seeded data.
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


def _baseline_class(rev: str) -> Any:
    """``OnlineMMDDrift`` as it was at git revision ``rev``, with that revision's BLAS pin."""
    import importlib.util
    import tempfile

    mods: list[Any] = []
    files = (("detectors/drift/base.py", "base"), ("detectors/drift/online_mmd.py", "mmd"))
    for path, name in files:
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
            capture_output=True, text=True, check=True,
        ).stdout
        src = src.replace('@register("drift.mmd_online")', '@register("drift.mmd_online_baseline")')
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
            fh.write(src)
        spec = importlib.util.spec_from_file_location(f"baseline_{name}", fh.name)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up while being built
        spec.loader.exec_module(mod)
        mods.append(mod)
    mods[1].small_blas = mods[0].small_blas  # the baseline's own per-batch thread switch
    return mods[1].OnlineMMDDrift


def _reference(n_ref: int, d: int, rng: np.random.Generator) -> np.ndarray:
    X = np.empty((n_ref, d))
    for lo in range(0, n_ref, 100_000):
        X[lo : lo + 100_000] = rng.normal(size=(min(n_ref, lo + 100_000) - lo, d))
    return X


def online_case(
    n_ref: int, max_reference: int | None, baseline: str | None, repeats: int = 5
) -> dict[str, Any]:
    """µs per record; with a baseline, both detectors' streams alternate, same repeats."""
    from detectors.drift import OnlineMMDDrift

    rng = np.random.default_rng(0)
    X = _reference(n_ref, 64, rng)
    det = OnlineMMDDrift(ert=500, window_size=50, max_reference=max_reference)
    fit = _clock(lambda: det.fit(X))
    dets = {"current": det}
    if baseline:
        dets["baseline"] = _baseline_class(baseline)(
            ert=500, window_size=50, max_reference=max_reference
        ).fit(X)
    S = rng.normal(size=(20_000, 64))

    def stream(d: Any) -> None:
        d.reset()
        for lo in range(0, S.shape[0], 100):
            d.update_batch(S[lo : lo + 100])

    times: dict[str, list[tuple[float, float]]] = {k: [] for k in dets}
    for d in dets.values():
        stream(d)  # warm-up
    for _ in range(repeats):
        for k, d in dets.items():
            times[k].append(_clock(lambda d=d: stream(d)))
    out: dict[str, Any] = {
        "kind": "online", "n": n_ref, "max_reference": max_reference,
        "sub_reference": int(det.x_ref_.shape[0]), "fit": fit, "repeats": repeats,
    }
    for k, ts in times.items():
        cpu = sorted(t[0] / S.shape[0] * 1e6 for t in ts)
        wall = sorted(t[1] / S.shape[0] * 1e6 for t in ts)
        out[k] = {"cpu_min": cpu[0], "cpu_median": cpu[len(cpu) // 2],
                  "wall_median": wall[len(wall) // 2]}
    out["us_per_record"] = (out["current"]["cpu_min"], out["current"]["wall_median"])
    return out


def power_case(max_reference: int | None, baseline: str | None, streams: int) -> dict[str, Any]:
    """Detection delay for the drift_quality shifts (0.3 sigma, every / one coordinate)."""
    from detectors.drift import OnlineMMDDrift

    rng = np.random.default_rng(3)
    X = _reference(10_000, 64, rng)
    makers = {"current": OnlineMMDDrift}
    if baseline:
        makers["baseline"] = _baseline_class(baseline)
    dets = {
        k: m(ert=500, window_size=50, max_reference=max_reference).fit(X)
        for k, m in makers.items()
    }
    every, one = np.full(64, 0.3), np.zeros(64)
    one[0] = 0.3
    out: dict[str, Any] = {"kind": "power", "max_reference": max_reference, "streams": streams}
    for name, shift in (("every", every), ("one", one)):
        data = np.random.default_rng(11)
        runs = [data.normal(size=(2100, 64)) + np.r_[np.zeros((100, 1)), np.ones((2000, 1))] * shift
                for _ in range(streams)]
        for k, det in dets.items():
            delays, early = [], 0
            for S in runs:
                det.reset()
                res = det.update_batch(S)
                t = res.detection_time
                if t is not None and t <= 100:
                    early += 1
                hit = np.flatnonzero(res.statistics[100:] > res.thresholds[100:])
                delays.append(int(hit[0]) + 1 if hit.size else None)
            found = [x for x in delays if x is not None]
            out[f"{k}_{name}"] = {
                "detected": len(found), "median_delay": float(np.median(found)) if found else None,
                "mean_delay": float(np.mean(found)) if found else None, "early_alarms": early,
            }
    return out


def run_length_case(
    max_reference: int | None, n_ref: int, refs: int, baseline: str | None
) -> dict[str, Any]:
    from detectors.drift import OnlineMMDDrift

    makers: dict[str, Any] = {"current": OnlineMMDDrift}
    if baseline:
        makers["baseline"] = _baseline_class(baseline)
    ert = 100
    out: dict[str, Any] = {"kind": "ert", "n": n_ref, "max_reference": max_reference, "ert": ert,
                           "references": refs}
    for k, make in makers.items():
        rng, lengths = np.random.default_rng(7), []  # the same references and streams for both
        for r in range(refs):
            det = make(ert=ert, window_size=20, seed=r, max_reference=max_reference)
            det.fit(rng.normal(size=(n_ref, 8)))
            for _ in range(20):
                det.reset()
                while not (res := det.update_batch(rng.normal(size=(200, 8)))).is_drift:
                    pass
                lengths.append(res.detection_time)
        arr = np.asarray(lengths, dtype=float)
        out[k] = {"mean": float(arr.mean()), "sem": float(arr.std(ddof=1) / np.sqrt(arr.size)),
                  "runs": int(arr.size)}
    out.update(out["current"])
    return out


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
            out = online_case(spec["n"], spec["max_reference"], spec.get("baseline"))
        elif kind == "power":
            out = power_case(spec["max_reference"], spec.get("baseline"), spec["streams"])
        else:
            out = run_length_case(
                spec["max_reference"], spec["n"], spec["refs"], spec.get("baseline")
            )
        out["gemm_gflops"] = _gemm_gflops()
    out["peak_rss_mb"] = _peak_rss_mb()
    out["baseline_rev"] = spec.get("baseline")
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
    base = next((r.get("baseline_rev") for r in rows if r.get("baseline_rev")), None)
    lines += [
        "",
        "## Online MMD (d = 64, window 50, ERT 500, 20,000 records in batches of 100)",
        "",
        "µs per record, CPU time: the best and the median of the repeats; wall clock (median) in "
        "brackets."
        + (f" `baseline` is `OnlineMMDDrift` at {base}, run in the same process with its "
           "streams alternating with the current one's, the same number of repeats." if base
           else ""),
        "",
        "| N | max_reference | sub-reference rows | fit | current µs/record best / median (wall) "
        "| baseline µs/record best / median (wall) | baseline / current (medians) | peak RSS MB "
        "| SGEMM GFLOP/s | repeats |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def _us(t: dict[str, float] | None) -> str:
        if not t:
            return "—"
        return f"{t['cpu_min']:.1f} / {t['cpu_median']:.1f} ({t['wall_median']:.1f})"

    for r in rows:
        if r["kind"] != "online":
            continue
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['max_reference']} | failed: {r['error']} |||||||")
            continue
        cur, bl = r["current"], r.get("baseline")
        ratio = f"{bl['cpu_median'] / cur['cpu_median']:.2f}x" if bl else "—"
        lines.append(
            f"| {r['n']:,} | {r['max_reference']} | {r['sub_reference']:,} | {_t(r['fit'])} | "
            f"{_us(cur)} | {_us(bl)} | {ratio} | {r['peak_rss_mb']:.0f} | "
            f"{r['gemm_gflops']:.0f} | {r['repeats']} |"
        )
    lines += [
        "",
        "## Online MMD detection power (d = 64, N = 10,000, window 50, ERT 500)",
        "",
        "The shifts of `benchmarks/drift_quality.py` (0.3σ in every coordinate, 0.3σ in one "
        "coordinate) start at record 101 of a 2,100-record stream; delay = records after the "
        "change until the statistic first crosses its threshold; early alarms = streams with a "
        "false alarm in the 100 clean records (the clean prefix is the same for both shifts, "
        "so it is counted once). Same streams for every row.",
        "",
        "| implementation | max_reference | streams | every coordinate: detected / median delay "
        "/ mean delay | one coordinate: detected / median delay / mean delay | early alarms |",
        "|---|---|---|---|---|---|",
    ]

    def _pw(p: dict[str, Any]) -> str:
        if not p["detected"]:
            return "0 / — / —"
        return f"{p['detected']} / {p['median_delay']:.0f} / {p['mean_delay']:.1f}"

    for r in rows:
        if r["kind"] != "power":
            continue
        if "error" in r:
            lines.append(f"| — | {r['max_reference']} | failed: {r['error']} ||||")
            continue
        for k in ("current", "baseline"):
            if f"{k}_every" not in r:
                continue
            e, o = r[f"{k}_every"], r[f"{k}_one"]
            lines.append(
                f"| {k} | {r['max_reference']} | {r['streams']} | {_pw(e)} | {_pw(o)} | "
                f"{e['early_alarms']} |"
            )
    lines += [
        "",
        "## Online MMD run length without drift against the target ERT (d = 8, window 20)",
        "",
        "The same seeded references and streams for the current and the baseline implementation.",
        "",
        "| N | max_reference | target ERT | current: mean run length ± s.e. "
        "| baseline: mean run length ± s.e. | runs (references x restarts) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "ert":
            continue
        if "error" in r:
            lines.append(f"| {r['n']:,} | {r['max_reference']} | failed: {r['error']} ||||")
            continue
        bl = r.get("baseline")
        bls = f"{bl['mean']:.1f} ± {bl['sem']:.1f}" if bl else "—"
        lines.append(
            f"| {r['n']:,} | {r['max_reference']} | {r['ert']} | {r['mean']:.1f} ± {r['sem']:.1f} "
            f"| {bls} | {r['runs']} ({r['references']} x 20) |"
        )
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "drift_scale.md"
    path.write_text("\n".join(lines))
    print(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    ap.add_argument(
        "--baseline",
        help="git revision whose OnlineMMDDrift runs beside the current one (interleaved)",
    )
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(_case(json.loads(args.case))))
        return
    if args.quick:
        specs: list[dict[str, Any]] = [
            {"kind": "mmd", "n": 1000, "method": "exact"},
            {"kind": "online", "n": 2000, "max_reference": 1000},
            {"kind": "power", "max_reference": 1000, "streams": 2},
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
            {"kind": "power", "max_reference": 1000, "streams": 20},
            {"kind": "power", "max_reference": 500, "streams": 20},
            {"kind": "ert", "n": 3000, "max_reference": None, "refs": 15},
            {"kind": "ert", "n": 3000, "max_reference": 1000, "refs": 15},
        ]
    base = None
    if args.baseline:
        base = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    rows = []
    for spec in specs:
        if base and spec["kind"] != "mmd":
            spec = {**spec, "baseline": base}
        print("running", spec, flush=True)
        rows.append(_sub(spec))
        print(rows[-1], flush=True)
    write(rows, os.getloadavg())


if __name__ == "__main__":
    main()
