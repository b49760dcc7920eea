"""Peer side of the drift benchmarks: runs alibi-detect or Evidently on arrays from an .npz.

Run by ``benchmarks/drift_speed.py`` and ``benchmarks/alibi_equivalence.py`` with the peer's own
interpreter (``.venv-alibi``, ``.venv-evidently``; see ``benchmarks/envs/``). It never imports
repwatch, and repwatch never imports it: alibi-detect is under the Business Source License.

    python benchmarks/drift_peers.py {alibi|evidently|alibi-equivalence} IN.npz OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

# DRIFT_BENCH_CLOCK=cpu: process CPU time (stable on a shared machine when single-threaded).
CLOCK = time.process_time if os.environ.get("DRIFT_BENCH_CLOCK") == "cpu" else time.perf_counter


def _timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t = CLOCK()
        out = fn()
        times.append(CLOCK() - t)
    return times, out


def run_alibi(data: Any, repeat: int) -> dict[str, Any]:
    t = time.perf_counter()
    import torch
    from alibi_detect.cd import KSDrift, MMDDrift, MMDDriftOnline

    out: dict[str, Any] = {"import_s": time.perf_counter() - t,
                           "torch_threads": torch.get_num_threads()}
    for d in (64, 384):
        ref, test = data[f"mmd_ref_{d}"], data[f"mmd_test_{d}"]
        t = CLOCK()
        cd = MMDDrift(ref, backend="pytorch", p_val=0.05, n_permutations=100)
        init = CLOCK() - t
        times, res = _timed(lambda cd=cd, test=test: cd.predict(test), repeat)
        out[f"mmd_{d}"] = {"init_s": init, "predict_s": times, "p_val": float(res["data"]["p_val"])}
    ks_ref, ks_test = data["ks_ref"], data["ks_test"]
    t = CLOCK()
    ks = KSDrift(ks_ref, p_val=0.05)
    init = CLOCK() - t
    times, _ = _timed(lambda: ks.predict(ks_test), repeat)
    out["ks"] = {"init_s": init, "predict_s": times}
    ref, stream = data["online_ref"], data["online_stream"]
    t = CLOCK()
    od = MMDDriftOnline(ref, ert=500, window_size=50, backend="pytorch", n_bootstraps=1000,
                        verbose=False)
    init = CLOCK() - t
    n_rec = min(300, stream.shape[0])
    t = CLOCK()
    for x in stream[:n_rec]:
        od.predict(x)
    out["online"] = {"init_s": init, "per_record_s": (CLOCK() - t) / n_rec}
    return out


def run_evidently(data: Any, repeat: int, budget_s: float = 60.0) -> dict[str, Any]:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    import pandas as pd
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import (
        distance,
        mmd,
        model,
        ratio,
    )

    methods = {
        "model": model(),
        "model(bootstrap)": model(bootstrap=True),
        "mmd": mmd(),
        "mmd(bootstrap)": mmd(bootstrap=True),
        "ratio": ratio(),
        "distance": distance(),
        "distance(bootstrap)": distance(bootstrap=True),
    }
    out: dict[str, Any] = {}
    pairs = data["nodrift_ref"], data["nodrift_test"]
    subtle = data["nodrift_ref"], data["subtle_test"]
    for name, method in methods.items():
        row: dict[str, Any] = {}
        for d in (64, 384):
            ref, test = pd.DataFrame(data[f"mmd_ref_{d}"]), pd.DataFrame(data[f"mmd_test_{d}"])
            times, res = _timed(lambda m=method, r=ref, c=test: m(c.copy(), r.copy()), repeat)
            row[f"time_{d}_s"] = times
            row[f"drift_on_shift_{d}"] = bool(res[1])
        for label, (refs, tests) in {"fpr": pairs, "power": subtle}.items():
            flags, t0 = [], time.perf_counter()
            for ref, test in zip(refs, tests, strict=True):
                flags.append(bool(method(pd.DataFrame(test), pd.DataFrame(ref))[1]))
                if time.perf_counter() - t0 > budget_s:
                    break
            row[f"{label}_trials"] = len(flags)
            row[label] = float(np.mean(flags))
        out[name] = row
    return out


def run_alibi_equivalence(data: Any) -> dict[str, Any]:
    from alibi_detect.cd import MMDDrift

    out = {}
    for key in sorted(k[len("eq_ref_"):] for k in data.files if k.startswith("eq_ref_")):
        ref, test, sigma = data[f"eq_ref_{key}"], data[f"eq_test_{key}"], data[f"eq_sigma_{key}"]
        cd = MMDDrift(ref, backend="pytorch", sigma=sigma, configure_kernel_from_x_ref=False,
                      n_permutations=20)
        _, mmd2, _ = cd.score(test)
        out[key] = float(mmd2)
    return out


def main() -> None:
    which, src, dst = sys.argv[1:4]
    repeat = int(os.environ.get("REPEAT", "3"))
    with np.load(src) as f:
        data = {k: f[k] for k in f.files}

    class _Files(dict):  # type: ignore[type-arg]  # np.load-like access
        @property
        def files(self) -> list[str]:
            return list(self)

    if which == "alibi":
        result = run_alibi(data, repeat)
    elif which == "evidently":
        result = run_evidently(data, repeat)
    elif which == "alibi-equivalence":
        result = run_alibi_equivalence(_Files(data))
    else:
        raise SystemExit(f"unknown peer {which!r}")
    with open(dst, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
