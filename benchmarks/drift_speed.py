"""Drift detectors beside alibi-detect 0.13 and Evidently 0.7, on the same arrays, in one run.

    .venv/bin/python benchmarks/drift_speed.py [--repeat 3] [--clock cpu|wall] [--threads 1]
                                               [--skip-evidently] [--skip-alibi]

The arrays are written once to a temporary .npz; repwatch and each peer run as subprocesses on
that file, the peers in their own virtualenvs (``benchmarks/envs/setup_alibi.sh``,
``setup_evidently.sh``). Prints ratios and writes ``benchmarks/results/drift_speed.md``
(``--clock cpu``, the default: process CPU time with every library pinned to ``--threads 1``,
which stays meaningful on a machine shared with other jobs) or ``drift_speed_wall.md``
(``--clock wall --threads 0``: wall clock, libraries' default threading, noisy when shared).
Times are the best of the repeats; the median is in brackets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CLOCK = time.process_time if os.environ.get("DRIFT_BENCH_CLOCK") == "cpu" else time.perf_counter
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PEERS = {"alibi": ROOT / ".venv-alibi" / "bin" / "python",
         "evidently": ROOT / ".venv-evidently" / "bin" / "python"}
N, n, B = 2000, 500, 100
NODRIFT_TRIALS = 20


def make_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for d in (64, 384):  # a 0.3 sigma mean shift in every coordinate
        data[f"mmd_ref_{d}"] = rng.normal(size=(N, d)).astype(np.float32)
        data[f"mmd_test_{d}"] = rng.normal(0.3, 1.0, size=(n, d)).astype(np.float32)
    data["ks_ref"], data["ks_test"] = data["mmd_ref_384"], data["mmd_test_384"]
    data["online_ref"] = rng.normal(size=(N, 64)).astype(np.float32)
    data["online_stream"] = rng.normal(size=(2000, 64)).astype(np.float32)
    data["nodrift_ref"] = rng.normal(size=(NODRIFT_TRIALS, N, 64)).astype(np.float32)
    data["nodrift_test"] = rng.normal(size=(NODRIFT_TRIALS, n, 64)).astype(np.float32)
    subtle = rng.normal(size=(NODRIFT_TRIALS, n, 64))
    subtle[:, :, 0] += 0.3  # a 0.3 sigma shift in one coordinate only
    data["subtle_test"] = subtle.astype(np.float32)
    return data


def timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t = CLOCK()
        out = fn()
        times.append(CLOCK() - t)
    return times, out


def run_ours(data: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    from detectors.drift import ClassifierDrift, KSDrift, MMDDrift, OnlineMMDDrift

    # Every library gets the same repeats per round; rounds alternate the order (see main).
    out: dict[str, Any] = {}
    for d in (64, 384):
        ref, test = data[f"mmd_ref_{d}"], data[f"mmd_test_{d}"]
        fit_t, det = timed(lambda ref=ref: MMDDrift(n_permutations=B).fit(ref), 1)
        times, res = timed(lambda det=det, test=test: det.predict(test), repeat)
        out[f"mmd_{d}"] = {"init_s": fit_t[0], "predict_s": times, "p_val": res.p_value}
    ks = KSDrift().fit(data["ks_ref"])
    # The first predict of a window size fills the memo of asymptotic p-values (each grid
    # value once); later windows of that size reuse it, as in a monitor. Report both.
    first, _ = timed(lambda: ks.predict(data["ks_test"]), 1)
    times, _ = timed(lambda: ks.predict(data["ks_test"]), repeat)
    out["ks"] = {"predict_s": times, "first_predict_s": first[0]}
    ref, stream = data["online_ref"], data["online_stream"]
    fit_t, od = timed(
        lambda: OnlineMMDDrift(ert=500, window_size=50, n_bootstraps=1000).fit(ref), repeat
    )

    def batches() -> None:
        od.reset()
        for lo in range(0, stream.shape[0], 100):
            od.update_batch(stream[lo : lo + 100])

    def singles() -> None:
        od.reset()
        for x in stream[:300]:
            od.update(x)

    batch100 = min(timed(batches, repeat)[0]) / stream.shape[0]
    single = min(timed(singles, repeat)[0]) / 300
    out["online"] = {"init_s": fit_t, "per_record_batch100_s": batch100,
                     "per_record_single_s": single}
    if os.environ.get("QUALITY", "1") == "0":  # false alarms and power: first round only
        return out
    fpr, shift, power = {}, {}, {}
    for name, make in {
        "MMDDrift": lambda i: MMDDrift(n_permutations=B, seed=i),
        "KSDrift (bh)": lambda i: KSDrift(correction="bh", seed=i),
        "ClassifierDrift": lambda i: ClassifierDrift(seed=i),
    }.items():
        pairs = zip(data["nodrift_ref"], data["nodrift_test"], strict=True)
        flags = [make(i).fit(r).predict(t).is_drift for i, (r, t) in enumerate(pairs)]
        fpr[name] = float(np.mean(flags))
        pairs = zip(data["nodrift_ref"], data["subtle_test"], strict=True)
        power[name] = float(np.mean([make(i).fit(r).predict(t).is_drift
                                     for i, (r, t) in enumerate(pairs)]))
        shift[name] = [
            bool(make(0).fit(data[f"mmd_ref_{d}"]).predict(data[f"mmd_test_{d}"]).is_drift)
            for d in (64, 384)
        ]
    out["fpr"], out["shift"], out["power"] = fpr, shift, power
    return out


def memory_child() -> None:
    """Run in a fresh process: peak RSS of MMD with a 50k reference and a 5k window."""
    from detectors.drift import MMDDrift

    rng = np.random.default_rng(1)
    ref = rng.normal(size=(50_000, 64))
    test = rng.normal(0.05, 1.0, size=(5_000, 64))
    t = time.perf_counter()
    det = MMDDrift(n_permutations=100).fit(ref)
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    res = det.predict(test)
    pred_s = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"method": det.method_, "fit_s": fit_s, "predict_s": pred_s,
                      "peak_bytes": peak, "p_value": res.p_value}))


def child_env(clock: str, threads: int, repeat: int) -> dict[str, str]:
    env = {**os.environ, "DO_NOT_TRACK": "1", "REPEAT": str(repeat), "DRIFT_BENCH_CLOCK": clock}
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env


def run_peer(which: str, npz: Path, env: dict[str, str]) -> dict[str, Any] | None:
    py = Path(sys.executable) if which == "repwatch" else PEERS[which]
    if not py.exists():
        print(f"[skip] {which}: {py} missing; run benchmarks/envs/setup_{which}.sh",
              file=sys.stderr)
        return None
    dst = npz.with_suffix(f".{which}.json")
    runner = ROOT / "benchmarks" / ("drift_speed.py" if which == "repwatch" else "drift_peers.py")
    cmd = [str(py), str(runner)] + (["--ours-child", str(npz), str(dst)] if which == "repwatch"
                                    else [which, str(npz), str(dst)])
    subprocess.run(cmd, check=True, env=env)
    result: dict[str, Any] = json.loads(dst.read_text())
    return result


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One library's rounds as one result: timing lists joined, best of scalar times."""
    if not runs:
        return None

    def merge(a: Any, b: Any, key: str) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: merge(a[k], b[k], k) if k in a and k in b else a.get(k, b.get(k))
                    for k in {**a, **b}}
        if isinstance(a, list) and isinstance(b, list) and key.endswith("_s"):
            return a + b
        if isinstance(a, float) and isinstance(b, float) and key.endswith("_s"):
            return min(a, b)
        return a  # results other than times: the first round's (seeded, identical)

    out = runs[0]
    for nxt in runs[1:]:
        out = merge(out, nxt, "")
    return out


def fmt(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def report(ours: dict[str, Any], alibi: dict[str, Any] | None, evid: dict[str, Any] | None,
           mem: dict[str, Any], repeat: int, how: str, rounds: int) -> str:
    lines = [
        "# Drift detectors: speed and false alarms beside alibi-detect and Evidently",
        "",
        f"`benchmarks/drift_speed.py`, one run, same float32 arrays for everyone; {rounds} "
        "rounds, each library a fresh process per round, the order rotated from round to round "
        f"(repwatch first in round 1, a peer first in round 2, ...), {repeat} timed calls per "
        f"library per round: best of {rounds * repeat} for every library (median in brackets); "
        f"**{how}**. "
        f"N = {N} reference rows, n = {n} window rows, B = {B} permutations, "
        "Gaussian data with a 0.3σ mean shift in every coordinate. "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores "
        "shared with other jobs (expect noise of tens of percent). Peers run in their own "
        "virtualenvs (alibi-detect 0.13 `backend='pytorch'` on CPU torch; Evidently 0.7).",
        "",
        "| test | repwatch | alibi-detect | speed-up |",
        "| --- | --- | --- | --- |",
    ]

    def row(label: str, mine: list[float] | float, theirs: list[float] | float | None) -> None:
        m = min(mine) if isinstance(mine, list) else mine
        med = f" ({fmt(float(np.median(mine)))})" if isinstance(mine, list) else ""
        if theirs is None:
            lines.append(f"| {label} | {fmt(m)}{med} | not run | |")
            print(f"{label:52s} ours {fmt(m):>10s}")
            return
        t = min(theirs) if isinstance(theirs, list) else theirs
        tmed = f" ({fmt(float(np.median(theirs)))})" if isinstance(theirs, list) else ""
        lines.append(f"| {label} | {fmt(m)}{med} | {fmt(t)}{tmed} | **{t / m:.1f}×** |")
        print(f"{label:52s} ours {fmt(m):>10s}  alibi {fmt(t):>10s}  ratio {t / m:7.1f}x")

    a = alibi or {}
    for d in (64, 384):
        row(f"MMD permutation test predict, d={d}", ours[f"mmd_{d}"]["predict_s"],
            a.get(f"mmd_{d}", {}).get("predict_s"))
        row(f"MMD fit / detector construction, d={d}", ours[f"mmd_{d}"]["init_s"],
            a.get(f"mmd_{d}", {}).get("init_s"))
    row("KS predict, d=384", ours["ks"]["predict_s"], a.get("ks", {}).get("predict_s"))
    if "first_predict_s" in ours["ks"]:
        row("KS predict, d=384, first call of a window size (p-value memo cold)",
            ours["ks"]["first_predict_s"], a.get("ks", {}).get("predict_s"))
    row("online MMD ERT calibration (ERT=500, W=50, B=1000, d=64)", ours["online"]["init_s"],
        a.get("online", {}).get("init_s"))
    row("online MMD per record, one at a time (like for like)",
        ours["online"]["per_record_single_s"], a.get("online", {}).get("per_record_s"))
    row("online MMD per record, batches of 100 (alibi: one at a time)",
        ours["online"]["per_record_batch100_s"], a.get("online", {}).get("per_record_s"))
    lines += [
        "",
        "alibi-detect's online detector only takes one record at a time: the like-for-like "
        "row is the first; the batched row shows what `update_batch` adds on top.",
        "",
        f"## Memory: MMD with a {50_000:,} reference and a {5_000:,} window (d = 64)",
        "",
        f"method `{mem['method']}` (random Fourier features, D = 1024, B = 100): fit "
        f"{fmt(mem['fit_s'])}, predict {fmt(mem['predict_s'])} (wall clock), **peak RSS "
        f"{mem['peak_bytes'] / 2**30:.2f} GiB** (whole process, Python and numpy included).",
        "",
        f"## False alarms on data without drift ({NODRIFT_TRIALS} seeded pairs, N = {N}, n = {n}, "
        "d = 64) and time per call",
        "",
        "| detector | false-positive rate | detects 0.3σ in one coordinate (same 20 "
        "references) | flags the 0.3σ all-coordinate shift (d=64 / 384) | time d=64 | "
        "time d=384 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, fpr in ours["fpr"].items():
        flags = " / ".join("yes" if f else "no" for f in ours["shift"][name])
        lines.append(f"| repwatch {name} (α = 0.05) | {fpr:.2f} | {ours['power'][name]:.2f} | "
                     f"{flags} | | |")
    if evid:
        for name, r in evid.items():
            shift = f"{'yes' if r['drift_on_shift_64'] else 'no'} / " \
                    f"{'yes' if r['drift_on_shift_384'] else 'no'}"
            lines.append(
                f"| Evidently `{name}` | {r['fpr']:.2f} ({r['fpr_trials']} trials) | "
                f"{r['power']:.2f} ({r['power_trials']} trials) | {shift} | "
                f"{fmt(min(r['time_64_s']))} | {fmt(min(r['time_384_s']))} |"
            )
            print(f"evidently {name:22s} fpr {r['fpr']:.2f} power {r['power']:.2f}  "
                  f"t64 {fmt(min(r['time_64_s']))}  "
                  f"t384 {fmt(min(r['time_384_s']))}")
        lines += [
            "",
            "Evidently's methods are called directly (`evidently.legacy.metrics.data_drift."
            "embedding_drift_methods`), the computation its `EmbeddingsDrift` metric runs; "
            "a full `Report` adds a t-SNE projection for the plot (~14 s here) on top. Defaults "
            "are absolute thresholds (`model`: ROC AUC > 0.55, `mmd`: MMD² > 0.015, `distance`: "
            "0.2, `ratio`: 20 % of components); the bootstrap variants compare with a "
            "reference-only bootstrap (for `mmd` its 5 % quantile).",
        ]
    else:
        lines.append("| Evidently | not run | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per library per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each in a rotated order")
    ap.add_argument("--skip-alibi", action="store_true")
    ap.add_argument("--skip-evidently", action="store_true")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="0: libraries' default threading")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ours-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child()
        return
    if args.ours_child:
        with np.load(args.ours_child[0]) as f:
            arrays = {k: f[k] for k in f.files}
        ours_out = run_ours(arrays, int(os.environ.get("REPEAT", "3")))
        Path(args.ours_child[1]).write_text(json.dumps(ours_out))
        return
    env = child_env(args.clock, args.threads, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "drift_arrays.npz"
        np.savez(npz, **make_data())
        runs: dict[str, list[dict[str, Any]]] = {"repwatch": [], "alibi": [], "evidently": []}
        order = ["repwatch"] + [w for w, skip in (("alibi", args.skip_alibi),
                                                  ("evidently", args.skip_evidently)) if not skip]
        for r in range(args.rounds):  # alternating order, the same repeats for every library
            k = r % len(order)
            for which in order[k:] + order[:k]:
                res = run_peer(which, npz, {**env, "QUALITY": "1" if r == 0 else "0"})
                if res is not None:
                    runs[which].append(res)
        ours, alibi, evid = (_merge(runs[w]) for w in ("repwatch", "alibi", "evidently"))
    assert ours is not None
    mem = json.loads(subprocess.run([sys.executable, __file__, "--memory-child"], check=True,
                                    capture_output=True, text=True, env=env).stdout)
    how = (f"process CPU time, every library pinned to {args.threads} thread(s)"
           if args.clock == "cpu" else
           f"wall clock, {args.threads or 'default'} thread(s)")
    text = report(ours, alibi, evid, mem, args.repeat, how, args.rounds)
    stem = "drift_speed" if args.clock == "cpu" else "drift_speed_wall"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"how": how, "repwatch": ours, "alibi": alibi, "evidently": evid, "memory": mem}, indent=1
    ))
    print(f"wrote {RESULTS / f'{stem}.md'}")


if __name__ == "__main__":
    main()
