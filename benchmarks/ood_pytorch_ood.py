"""Peer side of ``benchmarks/ood.py``: run pytorch-ood on arrays from an ``.npz``.

Runs inside the pytorch-ood virtualenv (``benchmarks/envs/setup_pytorch_ood.sh``), never in
repwatch's own environment: ``python benchmarks/ood_pytorch_ood.py IN.npz OUT.npz``.

Input keys (all optional):

* ``photos`` (any value): also return 8x8 grey patches of scikit-learn's sample photos
  (they need Pillow, which repwatch's environment lacks) as ``photos``;
* ``rep/<name>/fit``, ``rep/<name>/fit_y``, ``rep/<name>/eval``: features to fit KNN,
  Mahalanobis and RMD on and to score; ``logits/eval``: logits for energy, MSP and max-logit;
* ``speed/knn_ref``, ``speed/knn_query``, ``speed/maha_fit``, ``speed/maha_fit_y``,
  ``speed/maha_query``, ``speed/logits``: arrays for the timing section;
* ``config``: JSON bytes with ``k`` (KNN neighbours) and ``repeats`` (timing repeats).

Output: ``score/<rep>/<method>`` and ``time/<what>`` (seconds, best of ``repeats``).

``python benchmarks/ood_pytorch_ood.py --serve IN.npz`` is the interleaved timing mode that
``benchmarks/ood.py`` uses: it fits on the ``speed/*`` arrays, prints ``ready``, then runs one
call per line read from stdin (``knn``, ``mahalanobis``, ``energy``; ``quit`` ends it) and
prints ``{"wall": s, "cpu": s}`` for it, so that the driver can alternate its own calls with
the peer's, the same number of each, while both processes stay warm.
Computation is float64 (``torch.set_default_dtype``) so that scores can be compared with
repwatch's to 1e-5; pytorch-ood allocates its Mahalanobis means/covariance in the default dtype.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _photo_patches(n_per_image: int = 250, factor: int = 4, seed: int = 0) -> np.ndarray:
    """8x8 grey patches of the sample photos, downsampled ``factor``x, min-max scaled to 0..16."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    out = []
    for img in load_sample_images().images:
        grey = img.astype(np.float64).mean(axis=2)
        h, w = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
        small = grey[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        rows = rng.integers(0, small.shape[0] - 8, n_per_image)
        cols = rng.integers(0, small.shape[1] - 8, n_per_image)
        for r, c in zip(rows, cols, strict=True):
            patch = small[r : r + 8, c : c + 8].ravel()
            span = np.ptp(patch)
            out.append(16.0 * (patch - patch.min()) / (span if span > 0 else 1.0))
    return np.asarray(out)


def main(src: str, dst: str) -> None:
    import torch
    from pytorch_ood.detector import KNN, RMD, EnergyBased, Mahalanobis, MaxLogit, MaxSoftmax

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(2)
    with np.load(src, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    config = json.loads(bytes(data.pop("config", np.zeros(0, np.uint8))).decode() or "{}")
    k, repeats = int(config.get("k", 10)), int(config.get("repeats", 3))
    out: dict[str, np.ndarray] = {}
    t = torch.from_numpy

    if "photos" in data:
        out["photos"] = _photo_patches()

    reps = sorted({key.split("/")[1] for key in data if key.startswith("rep/")})
    for rep in reps:
        z, y = t(data[f"rep/{rep}/fit"]), t(data[f"rep/{rep}/fit_y"]).long()
        ev = t(data[f"rep/{rep}/eval"])
        knn = KNN(None, k=k).fit_features(z, y)
        out[f"score/{rep}/knn"] = knn.predict_features(ev).numpy()
        for name, cls in (("mahalanobis", Mahalanobis), ("rmd", RMD)):
            try:
                det = cls(None).fit_features(z, y)
                out[f"score/{rep}/{name}"] = det.predict_features(ev).numpy()
            except Exception as exc:  # a singular covariance is a result worth reporting
                print(f"pytorch-ood {name} on {rep}: {type(exc).__name__}: {exc}", file=sys.stderr)
    if "logits/eval" in data:
        lg = t(data["logits/eval"])
        out["score/logits/energy"] = EnergyBased.score(lg).numpy()
        out["score/logits/msp"] = MaxSoftmax.score(lg).numpy()
        out["score/logits/maxlogit"] = MaxLogit.score(lg).numpy()

    if "speed/knn_ref" in data:
        # pytorch-ood's KNN is scikit-learn's NearestNeighbors (n_jobs=-1) underneath
        ref32 = t(data["speed/knn_ref"])
        q32 = t(data["speed/knn_query"])
        knn = KNN(None, k=k).fit_features(ref32, torch.zeros(len(ref32), dtype=torch.long))
        out["time/knn"] = np.array(_best(lambda: knn.predict_features(q32), repeats))
        z, y = t(data["speed/maha_fit"]), t(data["speed/maha_fit_y"]).long()
        maha = Mahalanobis(None).fit_features(z, y)
        q = t(data["speed/maha_query"])
        out["time/mahalanobis"] = np.array(_best(lambda: maha.predict_features(q), repeats))
        lg = t(data["speed/logits"])
        out["time/energy"] = np.array(_best(lambda: EnergyBased.score(lg), repeats))
    np.savez(dst, **out)  # type: ignore[arg-type]


def serve(src: str) -> None:
    """One timed call per stdin line: wall and process CPU time (all threads) of that call."""
    import torch
    from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis

    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(2)
    with np.load(src, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    config = json.loads(bytes(data.pop("config", np.zeros(0, np.uint8))).decode() or "{}")
    t = torch.from_numpy
    ref, q = t(data["speed/knn_ref"]), t(data["speed/knn_query"])
    knn = KNN(None, k=int(config.get("k", 10))).fit_features(
        ref, torch.zeros(len(ref), dtype=torch.long)
    )
    maha = Mahalanobis(None).fit_features(
        t(data["speed/maha_fit"]), t(data["speed/maha_fit_y"]).long()
    )
    qm, lg = t(data["speed/maha_query"]), t(data["speed/logits"])
    calls: dict[str, Callable[[], Any]] = {
        "knn": lambda: knn.predict_features(q),
        "mahalanobis": lambda: maha.predict_features(qm),
        "energy": lambda: EnergyBased.score(lg),
    }
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name == "quit":
            break
        c0, t0 = time.process_time(), time.perf_counter()
        calls[name]()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
