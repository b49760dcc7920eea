"""Drift quality: power of each test, the random-feature trade-off, online run length vs ERT.

    .venv/bin/python benchmarks/drift_quality.py [--trials 20] [--refs 20]

Seeded Gaussian experiments; writes ``benchmarks/results/drift_quality.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from detectors.drift import ClassifierDrift, KSDrift, MMDDrift, OnlineMMDDrift

RESULTS = Path(__file__).resolve().parent / "results"


def power(make: Any, N: int, n: int, d: int, shift: np.ndarray, trials: int, seed: int) -> tuple[
    float, float
]:
    """Fraction of trials flagged, and mean predict time; a fresh reference every 5 trials."""
    rng = np.random.default_rng(seed)
    hits, spent, det = 0, 0.0, None
    for i in range(trials):
        if i % 5 == 0:
            det = make(i).fit(rng.normal(size=(N, d)))
        Y = rng.normal(size=(n, d)) + shift
        t = time.perf_counter()
        hits += bool(det.predict(Y).is_drift)  # type: ignore[union-attr]
        spent += time.perf_counter() - t
    return hits / trials, spent / trials


def run_lengths(
    ert: int, W: int, N: int, d: int, refs: int, streams: int, B: int | None
) -> np.ndarray:
    """Run lengths, shape ``(refs, streams)``: one row per reference (and calibration)."""
    rng = np.random.default_rng(500)
    out = np.empty((refs, streams))
    for r in range(refs):
        det = OnlineMMDDrift(ert=ert, window_size=W, n_bootstraps=B, seed=r)
        det.fit(rng.normal(size=(N, d)))
        for s in range(streams):
            det.reset()
            while not (res := det.update_batch(rng.normal(size=(2 * ert, d)))).is_drift:
                pass
            out[r, s] = res.detection_time
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--refs", type=int, default=20)
    args = ap.parse_args()
    T = args.trials
    lines = ["# Drift quality: power, random-feature trade-off, online run length", "",
             "`benchmarks/drift_quality.py`, seeded Gaussian data, α = 0.05, B = 100 permutations.",
             ""]

    d, N, n = 64, 2000, 500
    all_coords = np.full(d, 0.3)
    one_coord = np.zeros(d)
    one_coord[0] = 0.3
    lines += [f"## Power at N = {N}, n = {n}, d = {d} ({T} trials each)", "",
              "| test | 0.3σ shift in every coordinate | 0.3σ shift in one coordinate |",
              "| --- | --- | --- |"]
    tests = {
        "MMDDrift": lambda i: MMDDrift(seed=i),
        "KSDrift (Bonferroni)": lambda i: KSDrift(seed=i),
        "KSDrift (BH)": lambda i: KSDrift(correction="bh", seed=i),
        "ClassifierDrift (linear)": lambda i: ClassifierDrift(seed=i),
        "ClassifierDrift (rff)": lambda i: ClassifierDrift(features="rff", seed=i),
    }
    for name, make in tests.items():
        p_all, _ = power(make, N, n, d, all_coords, T, 1)
        p_one, _ = power(make, N, n, d, one_coord, T, 2)
        lines.append(f"| {name} | {p_all:.2f} | {p_one:.2f} |")
        print(f"power {name:26s} all-coords {p_all:.2f} one-coord {p_one:.2f}")

    N2, shift = 5000, one_coord
    lines += ["", f"## Exact kernel vs random Fourier features (N = {N2}, n = {n}, d = {d}, "
              f"0.3σ shift in one coordinate, {T} trials)", "",
              "| method | power | predict time |", "| --- | --- | --- |"]
    for label, make in {
        "exact": lambda i: MMDDrift(method="exact", seed=i),
        "rff, D = 1024": lambda i: MMDDrift(method="rff", n_features=1024, seed=i),
        "rff, D = 4096": lambda i: MMDDrift(method="rff", n_features=4096, seed=i),
    }.items():
        pw, t = power(make, N2, n, d, shift, T, 3)
        lines.append(f"| {label} | {pw:.2f} | {t * 1e3:.0f} ms |")
        print(f"rff trade-off {label:14s} power {pw:.2f} predict {t * 1e3:.0f} ms")

    lines += ["", "## Online MMD: mean run length without drift vs target ERT", "",
              "Run length = records until the first (false) detection, averaged over "
              f"{args.refs} references × streams; thresholds at the order statistic whose "
              "expected exceedance is 1/ERT. Each reference (and its calibration) has its own run "
              "length, so the standard error is over per-reference means.", "",
              "| ERT | W | N | d | B | references × streams | mean run length ± s.e. | "
              "relative error | median |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    configs: list[tuple[int, int, int, int, int | None, int, int]] = [
        (500, 50, 2000, 64, 1000, args.refs, 10),  # the calibration-speed setting
        (500, 50, 2000, 64, None, 2 * args.refs, 5),  # the default, B = 10 ERT = 5000
        (50, 10, 500, 4, None, 5 * args.refs, 10),  # the unit test's setting
    ]
    for ert, W, Nr, dd, B, refs, streams in configs:
        t = time.perf_counter()
        rl = run_lengths(ert, W, Nr, dd, refs, streams, B)
        err = rl.mean() / ert - 1
        se = rl.mean(axis=1).std() / np.sqrt(refs)  # references are the independent units
        B_txt = B if B is not None else f"default ({max(1000, 10 * ert)})"
        lines.append(f"| {ert} | {W} | {Nr} | {dd} | {B_txt} | {refs} × {streams} | "
                     f"{rl.mean():.0f} ± {se:.0f} | {err:+.1%} | {np.median(rl):.0f} |")
        print(f"ERT {ert} W {W} B {B}: mean run length {rl.mean():.0f} ({err:+.1%}) "
              f"± {se:.0f} over {refs}x{streams} runs in {time.perf_counter() - t:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift_quality.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'drift_quality.md'}")


if __name__ == "__main__":
    main()
