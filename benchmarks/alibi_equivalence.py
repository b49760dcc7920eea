"""repwatch's MMD² equals alibi-detect 0.13 ``MMDDrift(backend='pytorch')`` on the same data.

    .venv/bin/python benchmarks/alibi_equivalence.py

Same arrays, same bandwidth (repwatch's median heuristic, passed to alibi-detect as ``sigma``
with ``configure_kernel_from_x_ref=False``). alibi-detect runs in ``.venv-alibi`` (its licence
and its numpy<2 pin keep it out of the product environment). Exits non-zero if any relative
difference exceeds 1e-5 in float64. float32 inputs are reported too: alibi-detect then computes
in float32, so its MMD² near zero carries float32 cancellation error.
Writes ``benchmarks/results/drift_alibi_equivalence.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from detectors.drift import MMDDrift

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / ".venv-alibi" / "bin" / "python"
TOL = 1e-5


def main() -> int:
    if not PEER.exists():
        print(f"{PEER} missing: run benchmarks/envs/setup_alibi.sh", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    ours: dict[str, float] = {}
    for d in (8, 64, 384):
        for shift in (0.0, 0.3):
            ref = rng.normal(size=(1000, d))
            test = rng.normal(shift, 1.0, size=(300, d))
            for dtype in (np.float64, np.float32):
                key = f"d{d}_shift{shift}_{np.dtype(dtype).name}"
                r, t = ref.astype(dtype), test.astype(dtype)
                det = MMDDrift().fit(r)
                arrays[f"eq_ref_{key}"], arrays[f"eq_test_{key}"] = r, t
                arrays[f"eq_sigma_{key}"] = np.array([det.bandwidth_], dtype=dtype)
                ours[key] = float(det.score(t)[0])
    with tempfile.TemporaryDirectory() as tmp:
        npz, dst = Path(tmp) / "eq.npz", Path(tmp) / "eq.json"
        np.savez(npz, **arrays)
        subprocess.run([str(PEER), str(ROOT / "benchmarks" / "drift_peers.py"),
                        "alibi-equivalence", str(npz), str(dst)], check=True)
        theirs = json.loads(dst.read_text())
    lines = [
        "# MMD² equivalence with alibi-detect 0.13 (`MMDDrift(backend='pytorch')`)",
        "",
        "`benchmarks/alibi_equivalence.py`: N = 1000, n = 300, Gaussian data, same bandwidth "
        f"(repwatch's median heuristic passed as `sigma`). Required: relative difference ≤ {TOL} "
        "in float64.",
        "",
        "| case | repwatch MMD² | alibi-detect MMD² | relative difference |",
        "| --- | --- | --- | --- |",
    ]
    worst = 0.0
    for key, mine in ours.items():
        rel = abs(mine - theirs[key]) / max(abs(theirs[key]), 1e-300)
        if key.endswith("float64"):
            worst = max(worst, rel)
        lines.append(f"| {key} | {mine:.10g} | {theirs[key]:.10g} | {rel:.2e} |")
        print(f"{key:28s} ours {mine: .10e} alibi {theirs[key]: .10e} rel {rel:.2e}")
    verdict = "PASS" if worst <= TOL else "FAIL"
    lines += ["", f"Worst float64 relative difference: {worst:.2e} → **{verdict}**."]
    out = ROOT / "benchmarks" / "results" / "drift_alibi_equivalence.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"worst float64 relative difference {worst:.2e}: {verdict}; wrote {out}")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
