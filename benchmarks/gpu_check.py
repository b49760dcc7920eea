"""The GPU paths, exercised in one short script (for a task that is lent a GPU machine).

    .venv/bin/python benchmarks/gpu_check.py [--device cuda] [--out FILE]

Checks, each against the numpy/CPU reference in the same run:

* ``MMDDrift(device=...)``, exact and random-feature methods: statistic and permutation null
  equal to numpy's within float32 rounding, and the time of ``predict`` on both;
* onnxruntime: which execution providers the installed build offers, and whether a session on
  the bundled digits encoder really runs on ``CUDAExecutionProvider`` (onnxruntime-gpu silently
  falls back to the CPU when CUDA libraries are missing: ``session.get_providers()`` tells),
  with its outputs against the CPU session's.

``--device cpu`` runs the same checks through torch on the CPU (what the CPU suite can do);
nothing here needs a GPU to run, only to say something about one. Prints a Markdown report and
writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENCODER = ROOT / "serving" / "encoders" / "models" / "digits_encoder.onnx"


def _best(f: Any, repeat: int = 3) -> float:
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


def mmd_rows(device: str) -> list[str]:
    from detectors.drift import MMDDrift

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(5000, 64)), rng.normal(0.1, 1.0, size=(500, 64))
    rows = []
    for method in ("exact", "rff"):
        ref = MMDDrift(method=method, n_permutations=200).fit(X)  # type: ignore[arg-type]
        dev = MMDDrift(method=method, n_permutations=200, device=device).fit(X)  # type: ignore[arg-type]
        s0, n0 = ref._statistic_and_null(Y, 200)
        s1, n1 = dev._statistic_and_null(Y, 200)
        err = float(np.max(np.abs(n1 - n0)) / max(np.max(np.abs(n0)), 1e-300))
        t0, t1 = _best(lambda r=ref: r.predict(Y)), _best(lambda d=dev: d.predict(Y))
        rows.append(
            f"| MMD {method}, N=5000, n=500, B=200 | {s0:.6g} / {s1:.6g} | {err:.1e} | "
            f"{t0 * 1e3:.1f} ms | {t1 * 1e3:.1f} ms | {t0 / t1:.2f}x |"
        )
    return rows


def onnx_rows(device: str) -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    lines = [f"onnxruntime {ort.__version__}, available providers: {', '.join(avail)}", ""]
    cpu = ort.InferenceSession(str(ENCODER), providers=["CPUExecutionProvider"])
    want = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else [
        "CPUExecutionProvider"
    ]
    sess = ort.InferenceSession(str(ENCODER), providers=[p for p in want if p in avail])
    inp = cpu.get_inputs()[0]
    shape = [1 if not isinstance(s, int) else s for s in inp.shape]
    shape[0] = 256
    x = np.random.default_rng(0).random(shape, dtype=np.float32) * 16
    a = cpu.run(None, {inp.name: x})[0]
    b = sess.run(None, {inp.name: x})[0]
    t0 = _best(lambda: cpu.run(None, {inp.name: x}))
    t1 = _best(lambda: sess.run(None, {inp.name: x}))
    lines += [
        f"session providers in use: {', '.join(sess.get_providers())}",
        f"batch 256 on the digits encoder: max |diff| vs CPU {float(np.max(np.abs(a - b))):.1e}; "
        f"{t0 * 1e3:.2f} ms CPU, {t1 * 1e3:.2f} ms on the session above",
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    lines = [
        "# GPU paths against the CPU reference",
        "",
        f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
        f"device under test: {args.device}",
        "",
        "| case | statistic numpy / device | max rel. diff of the null | predict numpy | "
        "predict device | speed-up |",
        "|---|---|---|---|---|---|",
        *mmd_rows(args.device),
        "",
        *onnx_rows(args.device),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
