"""OOD detectors on the bundled digits models, side by side with pytorch-ood, plus speed.

Run: ``.venv/bin/python benchmarks/ood.py`` — writes ``benchmarks/results/ood.md``.

Quality. In-distribution = the test split of digits 0–7 (``digits.json``); reference = the train
split with its labels. OOD sets: digits 8–9 (near), uniform noise images and 8×8 patches of
scikit-learn's two sample photos (far). Representations: raw pixels, a PCA of them (fitted on
the reference) and, when ``serving/encoders/models/digits_classifier.onnx`` is present, the SSL
embedding, the classifier's penultimate features and its logits. Each detector reports AUROC
(OOD = positive) and FPR at 95 % TPR; pytorch-ood's KNN, Mahalanobis, RMD and energy/MSP/
max-logit score the same features, fitted on the same rows (repwatch holds 20 % of the
reference out for calibration; pytorch-ood gets the other 80 %), and the largest score
difference is reported where the method is the same.

Speed. kNN scoring of 10k queries (d = 128) against a 10k reference next to the bare float32
matrix product of the same size in the same run (one ``Q @ R.T`` call, and the same product in
row blocks into a reused buffer); Mahalanobis and energy scoring rates; pytorch-ood beside them.
Timings are medians of interleaved repeats (the machine is shared); pytorch-ood stays warm in
its own process and its calls are interleaved with repwatch's, the same number of each (CPU
time beside wall clock for both).

pytorch-ood runs in its own virtualenv (``benchmarks/envs/setup_pytorch_ood.sh``) as a
subprocess on arrays passed through a temporary ``.npz``; without it the peer columns are empty.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from ood_report import report  # sibling module: this script's directory is on sys.path

from detectors.ood import (
    EnergyDetector,
    KNNDetector,
    MahalanobisDetector,
    MaxLogitDetector,
    MSPDetector,
    OODDetector,
    RelativeMahalanobisDetector,
)
from detectors.ood._blocks import run_blocks
from detectors.ood.calibration import calibration_split

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "ood.md"
MODELS = ROOT / "serving" / "encoders" / "models"
PEER_PYTHON = ROOT / ".venv-pytorch-ood" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "ood_pytorch_ood.py"
K = 10
SEED = 0
Array = NDArray[Any]


# --- data -------------------------------------------------------------------------------------
def load_sets(photos: Array | None) -> tuple[dict[str, Array], Array, Array, Array]:
    """``(sets, X_ref, y_ref, X_val)``: evaluation sets of raw pixels (0..16), the labelled
    reference (train split) and the validation split (the logit detectors' reference)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data.astype(np.float64), digits.target
    meta_path = MODELS / "digits.json"
    if meta_path.exists():
        split = json.loads(meta_path.read_text())["split"]
        train, val, test = (np.asarray(split[k]) for k in ("train", "val", "test"))
    else:  # same rule as the model build: per class 60/20/20 of digits 0–7
        rng = np.random.default_rng(SEED)
        train_l, val_l, test_l = [], [], []
        for c in range(8):
            idx = rng.permutation(np.flatnonzero(y == c))
            a, b = int(0.6 * len(idx)), int(0.8 * len(idx))
            train_l.append(idx[:a])
            val_l.append(idx[a:b])
            test_l.append(idx[b:])
        train, val, test = (np.concatenate(v) for v in (train_l, val_l, test_l))
    rng = np.random.default_rng(SEED + 1)
    sets = {
        "id": X[test],
        "digits 8-9": X[y >= 8],
        "noise": rng.integers(0, 17, size=(500, 64)).astype(np.float64),
    }
    if photos is not None:
        sets["photos"] = photos
    return sets, X[train], y[train], X[val]


def representations(X_ref: Array, sets: dict[str, Array]) -> dict[str, Callable[[Array], Array]]:
    """Feature maps by name: raw pixels, PCA and (if bundled) the ONNX model's outputs."""
    mean = X_ref.mean(axis=0)
    _, _, vt = np.linalg.svd(X_ref - mean, full_matrices=False)
    comps = vt[:16].T
    reps: dict[str, Callable[[Array], Array]] = {
        "raw pixels": lambda X: X,
        "PCA-16 of pixels": lambda X: (X - mean) @ comps,
    }
    model = MODELS / "digits_classifier.onnx"
    if model.exists():
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

        def run(output: str) -> Callable[[Array], Array]:
            def f(X: Array) -> Array:
                res = sess.run([output], {"input": X.astype(np.float32)})[0]
                return np.asarray(res, dtype=np.float64)

            return f

        reps["SSL embedding"] = run("embedding")
        reps["classifier penultimate"] = run("penultimate")
        reps["logits"] = run("logits")
    return reps


# --- metrics ----------------------------------------------------------------------------------
def auroc(id_scores: Array, ood_scores: Array) -> float:
    """P(score_ood > score_id) + 0.5 P(tie): the Mann–Whitney form of the AUROC."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([id_scores, ood_scores]))
    n0, n1 = len(id_scores), len(ood_scores)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def fpr_at_95_tpr(id_scores: Array, ood_scores: Array) -> float:
    """Share of in-distribution records flagged at the threshold that catches 95 % of OOD."""
    thr = np.quantile(ood_scores, 0.05, method="inverted_cdf")  # flag score >= thr
    return float(np.mean(id_scores >= thr))


# --- peer -------------------------------------------------------------------------------------
def run_peer(arrays: dict[str, Array], config: dict[str, Any]) -> dict[str, Array] | None:
    if not PEER_PYTHON.exists():
        print(f"pytorch-ood venv missing ({PEER_PYTHON}); run benchmarks/envs/setup_pytorch_ood.sh")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        cfg = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
        np.savez(src, **{"config": cfg, **arrays})  # type: ignore[arg-type]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(
            [str(PEER_PYTHON), str(PEER_SCRIPT), str(src), str(dst)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.stderr.strip():
            print(proc.stderr.strip()[-2000:])
        if proc.returncode != 0:
            print(f"pytorch-ood peer failed with exit code {proc.returncode}")
            return None
        with np.load(dst, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}


def photo_patches(peer_ok: bool) -> Array | None:
    """8x8 patches of the sample photos; decoding the JPEGs needs Pillow."""
    try:
        import PIL  # noqa: F401
    except ImportError:  # repwatch's venv has no Pillow: decode the photos in the peer venv
        if not peer_ok:
            print("photo patches skipped: no Pillow here; pytorch-ood venv off or missing")
            return None
        out = run_peer({"photos": np.zeros(1)}, {})
        return None if out is None else out["photos"]
    import importlib.util

    spec = importlib.util.spec_from_file_location("ood_peer", PEER_SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    patches: Array = mod._photo_patches()
    return patches


# --- quality ----------------------------------------------------------------------------------
EMBEDDING_DETECTORS: dict[str, Callable[[], OODDetector]] = {
    "knn (k=10)": lambda: KNNDetector(k=K),
    "knn (default k = n/1000)": lambda: KNNDetector(),
    "mahalanobis (class-cond., LW)": lambda: MahalanobisDetector(),
    "mahalanobis (class-cond., no shrinkage)": lambda: MahalanobisDetector(shrinkage=0.0),
    "mahalanobis (plain, LW)": lambda: MahalanobisDetector(),
    "relative mahalanobis (LW)": lambda: RelativeMahalanobisDetector(),
    "relative mahalanobis (no shrinkage)": lambda: RelativeMahalanobisDetector(shrinkage=0.0),
}
LOGIT_DETECTORS: dict[str, Callable[[], OODDetector]] = {
    "energy": EnergyDetector,
    "msp": MSPDetector,
    "maxlogit": MaxLogitDetector,
}
#: ours -> (peer method, factor mapping the peer's score onto ours, description)
SAME_METHOD = {
    "knn (k=10)": ("knn", "1", "KNN(k=10), normalised"),
    "mahalanobis (class-cond., no shrinkage)": ("mahalanobis", "2N", "Mahalanobis"),
    "relative mahalanobis (no shrinkage)": ("rmd", "N", "RMD"),
    "energy": ("energy", "1", "EnergyBased"),
    "msp": ("msp", "1", "MaxSoftmax"),
    "maxlogit": ("maxlogit", "1", "MaxLogit"),
}


def quality(peer_ok: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    photos = photo_patches(peer_ok)
    sets, X_ref, y_ref, X_val = load_sets(photos)
    reps = representations(X_ref, sets)
    names = list(sets)
    sizes = np.cumsum([0] + [len(sets[s]) for s in names])
    fit_idx, _ = calibration_split(len(X_ref), 0.2, SEED)
    rows: list[dict[str, Any]] = []
    peer_in: dict[str, Array] = {}
    ours: dict[tuple[str, str], Array] = {}
    feats: dict[str, tuple[Array, Array]] = {}
    fitted: dict[str, dict[str, Any]] = {}
    for rep, f in reps.items():
        # The classifier was trained on the train split, whose logits are over-confident:
        # logit scores calibrate on the validation split it never fitted.
        Z_ref = f(X_val if rep == "logits" else X_ref)
        Z_eval = f(np.vstack([sets[s] for s in names]))
        feats[rep] = (Z_ref, Z_eval)
        dets = LOGIT_DETECTORS if rep == "logits" else EMBEDDING_DETECTORS
        for dname, make in dets.items():
            det = make()
            labels = None if "plain" in dname or rep == "logits" else y_ref
            try:
                det.fit(Z_ref, labels)
            except ValueError as exc:
                rows.append({"rep": rep, "detector": dname, "error": str(exc).split(";")[0]})
                continue
            scores = det.score(Z_eval)
            ours[(rep, dname)] = scores
            if "no shrinkage" in dname:
                fitted.setdefault(dname, {})[rep] = det
            rows.append(
                {
                    "rep": rep,
                    "detector": dname,
                    "impl": "repwatch",
                    **_metrics(scores, names, sizes),
                    "id_flagged": float(np.mean(scores[: sizes[1]] > det.threshold_)),
                }
            )
        if rep == "logits":
            peer_in["logits/eval"] = Z_eval
        else:
            safe = rep.replace(" ", "_").replace("/", "_")
            peer_in[f"rep/{safe}/fit"] = Z_ref[fit_idx]
            peer_in[f"rep/{safe}/fit_y"] = y_ref[fit_idx]
            peer_in[f"rep/{safe}/eval"] = Z_eval
    sweep: dict[str, dict[str, tuple[float, float]]] = {}
    for rep, (Z_ref, Z_eval) in feats.items():
        if rep == "logits":
            continue
        sweep[rep] = {}
        for k in (1, 5, 10, 20, 50):
            sc = KNNDetector(k=k).fit(Z_ref).score(Z_eval)
            m = _metrics(sc, names, sizes)
            sweep[rep][str(k)] = (m["digits 8-9"][0], m.get("far (all)", (float("nan"),))[0])
    agreement: dict[str, Any] = {}
    peer = run_peer(peer_in, {"k": K}) if peer_ok else None
    if peer is not None:
        n_fit = len(fit_idx)
        for rep in reps:
            safe = "logits" if rep == "logits" else rep.replace(" ", "_").replace("/", "_")
            for ours_name, (pname, factor, label) in SAME_METHOD.items():
                key = f"score/{safe}/{pname}"
                if key not in peer:
                    continue
                p = peer[key].astype(np.float64)
                rows.append(
                    {
                        "rep": rep,
                        "detector": f"pytorch-ood {label}",
                        "impl": "pytorch-ood",
                        **_metrics(p, names, sizes),
                    }
                )
                if (rep, ours_name) in ours:
                    scale = {"1": 1.0, "N": float(n_fit), "2N": 2.0 * n_fit}[factor]
                    o = ours[(rep, ours_name)]
                    diff = np.abs(o - scale * p)
                    ridge_rel = None
                    if ours_name in fitted:
                        Z_ref, Z_eval = feats[rep]
                        twin = _with_peer_ridge(
                            fitted[ours_name][rep], Z_ref[fit_idx], y_ref[fit_idx]
                        ).score(Z_eval)
                        ridge_rel = float(
                            (np.abs(twin - scale * p) / np.maximum(np.abs(twin), 1e-12)).max()
                        )
                    agreement[f"{rep} / {ours_name}"] = {
                        "ridge_rel": ridge_rel,
                        "peer": label,
                        "factor": factor,
                        "max_abs": float(diff.max()),
                        "max_rel": float((diff / np.maximum(np.abs(o), 1e-12)).max()),
                        "max_over_range": float(diff.max() / np.ptp(o)),
                        "score_range": [float(o.min()), float(o.max())],
                    }
    return rows, {
        "sets": {s: len(sets[s]) for s in names},
        "n_ref": len(X_ref),
        "n_fit": len(fit_idx),
        "n_val": len(X_val),
        "reps": list(reps),
        "agreement": agreement,
        "k_sweep": sweep,
        "peer": peer is not None,
    }


def _with_peer_ridge(det: Any, Z_fit: Array, y_fit: Array) -> Any:
    """A copy of a fitted no-shrinkage (relative) Mahalanobis with pytorch-ood's ridge added.

    pytorch-ood inverts ``sum of outer products + 1e-6 I``, i.e. ``Sigma + 1e-6/N I``; with this
    ridge repwatch's fit is the same function, which isolates the ridge as the only difference.
    """
    from detectors.ood._gaussian import class_stats, scaled_covariance, whitener

    twin = type(det).from_state(*det.get_state())
    n = Z_fit.shape[0]
    _, means, resid = class_stats(Z_fit, y_fit)
    twin.whitener_ = whitener(scaled_covariance(resid, 1.0, 1e-6 / n), n)
    twin.means_white_ = (means - twin.center_) @ twin.whitener_
    twin.means_sq_ = np.einsum("ij,ij->i", twin.means_white_, twin.means_white_)
    if isinstance(twin, RelativeMahalanobisDetector):
        _, _, resid0 = class_stats(Z_fit, None)
        twin.background_whitener_ = whitener(scaled_covariance(resid0, 1.0, 1e-6 / n), n)
    return twin


def _metrics(scores: Array, names: list[str], sizes: Array) -> dict[str, Any]:
    id_s = scores[: sizes[1]]
    out: dict[str, Any] = {}
    far = []
    for i, s in enumerate(names[1:], start=1):
        o = scores[sizes[i] : sizes[i + 1]]
        out[s] = (auroc(id_s, o), fpr_at_95_tpr(id_s, o))
        if s != "digits 8-9":
            far.append(o)
    if far:
        o = np.concatenate(far)
        out["far (all)"] = (auroc(id_s, o), fpr_at_95_tpr(id_s, o))
    return out


# --- speed ------------------------------------------------------------------------------------
def speed(peer_ok: bool, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(SEED)
    n, d = 10_000, 128
    knn = KNNDetector(k=K, calibration_fraction=0.2).fit(
        rng.normal(size=(12_500, d)).astype(np.float32)
    )  # 10,000 reference rows after hold-out
    R = knn.reference_
    Q = rng.normal(size=(n, d))
    Q32 = Q.astype(np.float32)
    rows = int(min(max(16, knn.block_bytes // (4 * R.shape[0])), n))

    def blocked() -> None:  # kNN's scheme without the selection: the honest roofline
        def block(lo: int, hi: int) -> None:
            Q32[lo:hi] @ R.T

        run_blocks(block, n, rows, None)

    n_m, n_cls = 200_000, 10
    y = rng.integers(0, n_cls, 20_000)
    Zm = rng.normal(size=(20_000, d)) + np.eye(n_cls, d)[y] * 3.0
    maha = MahalanobisDetector().fit(Zm, y)
    rmaha = RelativeMahalanobisDetector().fit(Zm, y)
    Qm = rng.normal(size=(n_m, d))
    Wm = maha.whitener_
    logits = rng.normal(size=(n_m, n_cls))
    energy = EnergyDetector().fit(logits[:20_000])
    knn1 = KNNDetector.from_state(*_with(knn, n_jobs=1))
    tasks: dict[str, Callable[[], Any]] = {
        "matmul (one call)": lambda: Q32 @ R.T,
        "matmul (kNN's blocks and threads)": blocked,
        "knn score": lambda: knn.score(Q32),  # float32 queries, as the peer gets them
        "knn score (n_jobs=1: blocks in sequence, threaded BLAS)": lambda: knn1.score(Q32),
        "mahalanobis score": lambda: maha.score(Qm),
        "matmul 200k x 128 x 128 float64 (one call)": lambda: Qm @ Wm,
        "relative mahalanobis score": lambda: rmaha.score(Qm),
        "energy score": lambda: energy.score(logits),
    }
    peer = None
    if peer_ok:
        peer = PeerServer(
            {
                "speed/knn_ref": R,
                "speed/knn_query": Q32,
                "speed/maha_fit": Zm,
                "speed/maha_fit_y": y,
                "speed/maha_query": Qm,
                "speed/logits": logits,
            },
            {"k": K},
        )
    names = list(tasks) + ([f"pytorch-ood {p}" for p in PEER_CALLS] if peer else [])
    timings: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        # Interleaved, peer included, so that load from other processes hits all alike: every
        # call the same number of times, the order rotated from repeat to repeat.
        for r in range(repeats):
            k = (r * 3) % len(names)
            for name in names[k:] + names[:k]:
                if name in tasks:
                    c0, t0 = time.process_time(), time.perf_counter()
                    tasks[name]()
                    wall, used = time.perf_counter() - t0, time.process_time() - c0
                else:
                    assert peer is not None
                    wall, used = peer.call(name.removeprefix("pytorch-ood "))
                timings.setdefault(name, []).append(wall)
                cpu.setdefault(name, []).append(used)
    finally:
        if peer is not None:
            peer.close()
    med = {k: float(np.median(v)) for k, v in timings.items()}
    best = {k: float(np.min(v)) for k, v in timings.items()}
    return {
        "cpu_median_s": {k: float(np.median(v)) for k, v in cpu.items()},
        "cpu_all_s": cpu,
        "median_s": med,
        "min_s": best,
        "all_s": timings,
        "n": n,
        "d": d,
        "k": K,
        "n_ref": int(R.shape[0]),
        "block_rows": rows,
        "n_records": n_m,
        "n_classes": n_cls,
        "repeats": repeats,
        "load_avg": os.getloadavg(),
    }


#: the peer's timed calls, in the order of :func:`speed`'s rows
PEER_CALLS = ("knn", "mahalanobis", "energy")


class PeerServer:
    """pytorch-ood in its own venv, warm, one timed call per request (see ``--serve``)."""

    def __init__(self, arrays: dict[str, Array], config: dict[str, Any]) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        src = Path(self._tmp.name) / "speed.npz"
        cfg = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
        np.savez(src, **{"config": cfg, **arrays})  # type: ignore[arg-type]
        self._proc = subprocess.Popen(
            [str(PEER_PYTHON), str(PEER_SCRIPT), "--serve", str(src)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"pytorch-ood peer did not start (said {line!r})")

    def call(self, name: str) -> tuple[float, float]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(name + "\n")
        self._proc.stdin.flush()
        out = json.loads(self._proc.stdout.readline())
        return float(out["wall"]), float(out["cpu"])

    def close(self) -> None:
        if self._proc.poll() is None and self._proc.stdin is not None:
            self._proc.stdin.write("quit\n")
            self._proc.stdin.flush()
            self._proc.wait(timeout=60)
        self._tmp.cleanup()


def _with(det: KNNDetector, **params: Any) -> tuple[dict[str, Array], dict[str, Any]]:
    arrays, meta = det.get_state()
    meta = {**meta, "params": {**meta["params"], **params}}
    return arrays, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-peer", action="store_true", help="skip pytorch-ood")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    peer_ok = not args.no_peer and PEER_PYTHON.exists()
    rows, info = quality(peer_ok)
    sp = speed(peer_ok, args.repeats)
    text = report(rows, info, sp)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    (args.out.with_suffix(".json")).write_text(
        json.dumps({"rows": rows, "info": info, "speed": sp}, indent=1)
    )


if __name__ == "__main__":
    main()
