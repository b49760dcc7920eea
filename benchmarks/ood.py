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
Timings are medians of interleaved repeats (the machine is shared).

pytorch-ood runs in its own virtualenv (``benchmarks/envs/setup_pytorch_ood.sh``) as a
subprocess on arrays passed through a temporary ``.npz``; without it the peer columns are empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

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
            print("no Pillow and no pytorch-ood venv: photo patches skipped")
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
    timings: dict[str, list[float]] = {}
    tasks: dict[str, Callable[[], Any]] = {
        "matmul (one call)": lambda: Q32 @ R.T,
        "matmul (kNN's blocks and threads)": blocked,
        "knn score": lambda: knn.score(Q),
        "knn score (1 selection thread)": lambda: knn1.score(Q),
        "mahalanobis score": lambda: maha.score(Qm),
        "matmul 200k x 128 x 128 float64 (one call)": lambda: Qm @ Wm,
        "relative mahalanobis score": lambda: rmaha.score(Qm),
        "energy score": lambda: energy.score(logits),
    }
    cpu: dict[str, list[float]] = {}
    for _ in range(repeats):  # interleaved, so that load from other processes hits all alike
        for name, fn in tasks.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            timings.setdefault(name, []).append(time.perf_counter() - t0)
            cpu.setdefault(name, []).append(time.process_time() - c0)
    med = {k: float(np.median(v)) for k, v in timings.items()}
    best = {k: float(np.min(v)) for k, v in timings.items()}
    out: dict[str, Any] = {
        "cpu_median_s": {k: float(np.median(v)) for k, v in cpu.items()},
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
    }
    if peer_ok:
        peer = run_peer(
            {
                "speed/knn_ref": R,
                "speed/knn_query": Q32,
                "speed/maha_fit": Zm,
                "speed/maha_fit_y": y,
                "speed/maha_query": Qm,
                "speed/logits": logits,
            },
            {"k": K, "repeats": repeats},
        )
        if peer is not None:
            out["peer_s"] = {
                k.split("/")[1]: float(v) for k, v in peer.items() if k.startswith("time/")
            }
    return out


def _with(det: KNNDetector, **params: Any) -> tuple[dict[str, Array], dict[str, Any]]:
    arrays, meta = det.get_state()
    meta = {**meta, "params": {**meta["params"], **params}}
    return arrays, meta


# --- report -----------------------------------------------------------------------------------
def summary(rows: list[dict[str, Any]], info: dict[str, Any], sp: dict[str, Any]) -> list[str]:
    """The issue's targets, met or not, computed from this run."""
    ours = {(r["rep"], r["detector"]): r for r in rows if r.get("impl") == "repwatch"}
    L = ["## Against the targets", ""]
    ssl = ours.get(("SSL embedding", "knn (k=10)"))
    raw = ours[("raw pixels", "knn (k=10)")]
    ssl_d = ours.get(("SSL embedding", "knn (default k = n/1000)"))
    raw_d = ours[("raw pixels", "knn (default k = n/1000)")]
    if ssl is not None and ssl_d is not None and "far (all)" in ssl:
        L.append(
            f"- kNN on the SSL embedding, far OOD: AUROC {ssl_d['far (all)'][0]:.3f} with the "
            f"default k (= 1 here), {ssl['far (all)'][0]:.3f} with k=10 (target ≥ 0.95: "
            f"{'met' if min(ssl['far (all)'][0], ssl_d['far (all)'][0]) >= 0.95 else 'NOT met'}"
            f"); raw pixels {raw_d['far (all)'][0]:.3f} / {raw['far (all)'][0]:.3f}."
        )
        L.append(
            f"- kNN on held-out digits 8–9, AUROC / FPR95: SSL embedding "
            f"{ssl_d['digits 8-9'][0]:.3f} / {ssl_d['digits 8-9'][1]:.3f} (default k), "
            f"{ssl['digits 8-9'][0]:.3f} / {ssl['digits 8-9'][1]:.3f} (k=10); raw pixels "
            f"{raw_d['digits 8-9'][0]:.3f} / {raw_d['digits 8-9'][1]:.3f} (default k), "
            f"{raw['digits 8-9'][0]:.3f} / {raw['digits 8-9'][1]:.3f} (k=10). On digits the "
            "SSL embedding is no better than the pixels for kNN. Disclosure: the default k "
            "(the paper's k ∝ n scaling) replaced a fixed k=10 after the k sweep below showed "
            "k=10 too large for this 693-row reference; the sweep is the evidence, k=10 stays "
            "in the table."
        )
    elif ssl is None:
        L.append("- The bundled digits models are absent: no SSL-embedding rows in this run.")
    best = max((r for r in ours.values() if "digits 8-9" in r), key=lambda r: r["digits 8-9"][0])
    L.append(
        f"- Best near-OOD (digits 8–9) AUROC among repwatch's rows: "
        f"{best['digits 8-9'][0]:.3f} ({best['detector']} on {best['rep']})."
    )
    med, bst = sp["median_s"], sp["min_s"]
    blk, one = "matmul (kNN's blocks and threads)", "matmul (one call)"
    r_blk = (med[blk] / med["knn score"], bst[blk] / bst["knn score"])
    r_one = (med[one] / med["knn score"], bst[one] / bst["knn score"])

    r_cpu = sp["cpu_median_s"][blk] / sp["cpu_median_s"]["knn score"]

    def verdict(r: tuple[float, float]) -> str:
        return "met" if min(r) >= 0.7 else ("met at best only" if max(r) >= 0.7 else "NOT met")

    L.append(
        f"- kNN scoring throughput (target ≥ 0.70 of the bare product): {r_blk[0]:.2f} "
        f"(median) / {r_blk[1]:.2f} (best) of the same product computed in kNN's own blocks "
        f"and threads ({verdict(r_blk)}); {r_one[0]:.2f} / {r_one[1]:.2f} of one `Q @ R.T` "
        f"call ({verdict(r_one)}); in CPU time {r_cpu:.2f} of the blocked product."
    )
    for name in ("mahalanobis score", "energy score"):
        rate = sp["n_records"] / med[name]
        L.append(
            f"- {name}: {rate:,.0f} records/s median (target ≥ 200,000: "
            f"{'met' if rate >= 200_000 else 'NOT met'})."
        )
    if info["agreement"]:
        same = [a for a in info["agreement"].values() if a["factor"] == "1"]
        ridge = [a["ridge_rel"] for a in info["agreement"].values() if a["ridge_rel"] is not None]
        L.append(
            f"- Agreement with pytorch-ood where the method is the same: kNN and logit scores "
            f"within {max(a['max_abs'] for a in same):.1e} (absolute); Mahalanobis/RMD within "
            f"{max(ridge):.1e} (relative) once pytorch-ood's 1e-6 ridge is applied to ours "
            "(without it, up to "
            f"{max(a['max_over_range'] for a in info['agreement'].values()):.1e} of the score "
            "range)."
        )
    L.append("")
    return L


def report(rows: list[dict[str, Any]], info: dict[str, Any], sp: dict[str, Any]) -> str:
    L: list[str] = ["# OOD detectors: quality and speed", ""]
    L.append(
        f"Generated by `benchmarks/ood.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        ", "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at the end); numpy {np.__version__}."
    )
    L.append("")
    L += summary(rows, info, sp)
    L.append(
        f"Reference: digits 0–7 train split ({info['n_ref']} rows with labels; repwatch fits "
        f"on {info['n_fit']} and calibrates on the rest, pytorch-ood fits on the same "
        f"{info['n_fit']}). Logit scores are calibrated on the validation split of digits 0–7 "
        f"({info['n_val']} rows), which the classifier never fitted (its train-split logits are "
        "over-confident and would set too strict a threshold). Representations: raw pixels "
        "(0..16), a 16-component PCA of them fitted on the reference, and the bundled ONNX "
        "digits model's SSL embedding (32-d), classifier penultimate features (32-d) and "
        "logits (8). Far OOD: uniform-noise images and 8×8 patches of scikit-learn's two "
        "sample photos (downsampled 4×, min-max scaled to 0..16). Evaluation: "
        + ", ".join(f"{k} ({v})" for k, v in info["sets"].items())
        + ". AUROC with OOD as positive; FPR95 = share of in-distribution test records "
        "flagged at the threshold that catches 95 % of the OOD set (lower is better). "
        "`ID flagged` = share of the in-distribution test split above repwatch's calibrated "
        "threshold (target 1 %; only "
        f"{info['sets']['id']} records, so ±1 record = ±{100 / info['sets']['id']:.2f} pp)."
    )
    L.append("")
    ood_sets = [s for s in info["sets"] if s != "id"]
    cols = ood_sets + (["far (all)"] if len(ood_sets) > 1 else [])
    head = "| representation | detector | " + " | ".join(f"{c} AUROC / FPR95" for c in cols)
    L += [head + " | ID flagged |", "|" + "---|" * (len(cols) + 3)]
    order = {rep: i for i, rep in enumerate(info["reps"])}
    for r in sorted(rows, key=lambda r: (order[r["rep"]], r.get("impl") == "pytorch-ood")):
        if "error" in r:
            L.append(
                f"| {r['rep']} | {r['detector']} | "
                + " | ".join("—" for _ in cols)
                + f" | fit fails: {r['error']} |"
            )
            continue
        cells = [f"{r[c][0]:.3f} / {r[c][1]:.3f}" if c in r else "—" for c in cols]
        idf = f"{100 * r['id_flagged']:.1f} %" if "id_flagged" in r else ""
        L.append(f"| {r['rep']} | {r['detector']} | " + " | ".join(cells) + f" | {idf} |")
    L.append("")
    if info["agreement"]:
        L += [
            "## Agreement with pytorch-ood (same method, same fitted rows)",
            "",
            "pytorch-ood runs in float64 (`torch.set_default_dtype`). Its Mahalanobis uses the "
            "*sum* of centred outer products plus a 1e-6 ridge and reports half the squared "
            "distance, RMD the same sums; repwatch uses the covariance (divided by N) and the "
            "full squared distance, so its scores equal 2N× (Mahalanobis) and N× (RMD) "
            "pytorch-ood's up to that ridge (`Sigma + 1e-6/N I`); the 'with ridge' column adds "
            "the same ridge to repwatch's fit, leaving only floating-point differences. "
            "repwatch's kNN reference is stored in float32. Singular covariances (constant "
            "pixels, dead ReLU units) make repwatch's no-shrinkage fit refuse (see the table "
            "above), so those rows are absent.",
            "",
            "| representation / detector | pytorch-ood | factor | max abs diff | max rel diff "
            "| max abs diff / score range | max rel diff, with ridge | score range |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, a in info["agreement"].items():
            L.append(
                f"| {key} | {a['peer']} | {a['factor']} | {a['max_abs']:.2e} | "
                f"{a['max_rel']:.2e} | {a['max_over_range']:.2e} | "
                + (f"{a['ridge_rel']:.2e}" if a["ridge_rel"] is not None else "—")
                + f" | {a['score_range'][0]:.3g} … {a['score_range'][1]:.3g} |"
            )
        L.append("")
    med, best, cpu = sp["median_s"], sp["min_s"], sp["cpu_median_s"]
    peer = sp.get("peer_s", {})
    L += [
        "## Speed",
        "",
        f"kNN: {sp['n']:,} queries × {sp['n_ref']:,} reference rows × d={sp['d']}, k={sp['k']}, "
        f"float32 product, row blocks of {sp['block_rows']}. Each row: median / best of "
        f"{len(sp['all_s']['knn score'])} interleaved repeats (the machine is shared, so the "
        "median carries other jobs' load; the best is closest to an idle machine). Throughput "
        "ratios are time(matmul) / time(row). CPU time (all threads of this process) is the "
        "least load-sensitive measure of the work the selection adds; a multi-threaded BLAS "
        "call also counts its threads' spin-waiting.",
        "",
        "| what | seconds (median / best) | records/s (best) | vs one-call matmul "
        "(median / best) | vs matmul in kNN's blocks (median / best) | CPU s (median) | "
        "vs matmul in kNN's blocks, CPU time |",
        "|---|---|---|---|---|---|---|",
    ]
    mm, mb = "matmul (one call)", "matmul (kNN's blocks and threads)"
    for name in (mm, mb, "knn score", "knn score (1 selection thread)"):
        L.append(
            f"| {name} | {med[name]:.3f} / {best[name]:.3f} | {sp['n'] / best[name]:,.0f} | "
            f"{med[mm] / med[name]:.2f} / {best[mm] / best[name]:.2f} | "
            f"{med[mb] / med[name]:.2f} / {best[mb] / best[name]:.2f} | "
            f"{cpu[name]:.3f} | {cpu[mb] / cpu[name]:.2f} |"
        )
    if "knn" in peer:
        t = peer["knn"]
        L.append(
            f"| pytorch-ood KNN (scikit-learn NearestNeighbors, n_jobs=-1; best of repeats) | "
            f"— / {t:.3f} | {sp['n'] / t:,.0f} | — / {best[mm] / t:.2f} | — / {best[mb] / t:.2f} "
            "| — | — |"
        )
    L += [
        "",
        f"Per-record scores on {sp['n_records']:,} records (d={sp['d']}, {sp['n_classes']} "
        f"classes; energy on {sp['n_classes']} logits), including input validation; pytorch-ood "
        "in float64 on the same arrays (best of repeats):",
        "",
        "| what | seconds (median / best) | records/s (median / best) | pytorch-ood records/s |",
        "|---|---|---|---|",
    ]
    for name, pk in (
        ("mahalanobis score", "mahalanobis"),
        ("relative mahalanobis score", None),
        ("energy score", "energy"),
        ("matmul 200k x 128 x 128 float64 (one call)", None),
    ):
        pr = f"{sp['n_records'] / peer[pk]:,.0f}" if pk and pk in peer else "—"
        L.append(
            f"| {name} | {med[name]:.3f} / {best[name]:.3f} | {sp['n_records'] / med[name]:,.0f} "
            f"/ {sp['n_records'] / best[name]:,.0f} | {pr} |"
        )
    L.append("")
    if info.get("k_sweep"):
        ks = sorted({k for r in info["k_sweep"].values() for k in map(int, r)})
        L += [
            "## kNN: sensitivity to k",
            "",
            "What each k gives on this reference (693 fitted rows; the default rule picks k=1). "
            "Cells: AUROC digits 8-9 / far (all).",
            "",
            "| representation | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|" + "---|" * len(ks),
        ]
        for rep, r in info["k_sweep"].items():
            L.append(
                f"| {rep} | "
                + " | ".join(f"{r[str(k)][0]:.3f} / {r[str(k)][1]:.3f}" for k in ks)
                + " |"
            )
        L.append("")
    L += [
        "## Notes",
        "",
        "- Exact kNN is bound by the matrix product: at 10k reference rows (d = 128) a batch of "
        "1,000 records costs ~15 ms on a quiet machine (2-4x that under load). No approximate "
        "index is bundled; one (e.g. faiss "
        "IVF/HNSW, on this machine's local index as `faiss-cpu`) would only pay off well beyond "
        "~100k reference rows and was not evaluated here.",
        "- The 'matmul in kNN's blocks' baseline runs the same product in the same row blocks "
        "and threads (single-threaded BLAS per block, blocks in parallel), without the "
        "selection: it is the honest roofline. Under load from other jobs it beats one "
        "multi-threaded `Q @ R.T` call, whose two BLAS threads wait for each other; on a "
        "quiet machine the two tie.",
        "- Relative Mahalanobis by design ignores directions in which the classes do not "
        "differ; on raw pixels it is the weakest far-OOD detector. Plain Mahalanobis (no "
        "labels) is weak on near OOD everywhere: use labels when the reference has them.",
        "- The classifier is confident on many noise images: logit scores (energy, max-logit) "
        "miss far OOD that the embedding detectors catch.",
        "- `ID flagged` rests on 289 records; the calibration tests "
        "(`tests/detectors/ood/test_ood_calibration.py`) check the ±1 pp target on 10,000.",
        "- The photo patches are decoded with Pillow in the pytorch-ood environment: "
        "repwatch's environment has no Pillow.",
        "",
    ]
    return "\n".join(L)


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
