"""Security detectors on the bundled digits models, against real attacks from ART.

Run: ``nice -n 15 .venv/bin/python benchmarks/security.py`` (needs the ``attacks`` extra:
``pip install -e '.[attacks]'``) — writes ``benchmarks/results/security.md`` and ``.json``.
Generated attacks are cached in ``benchmarks/.cache/`` (gitignored); ``--no-cache`` regenerates.

Three parts, each beside its peers in the same run:

1. **Per record** (:mod:`security_records`): FGSM ε=0.1 and PGD-L∞ ε ∈ {0.1, 0.2, 0.3}
   (40 steps) from ART on the torch mirror of the ONNX graph, counting only attacks that flip
   the prediction; repwatch's combined detector, each single signal and feature squeezing
   (Xu et al.) at thresholds calibrated on the clean validation split, at the test-clean ROC
   points, and AUROC. Plus an adaptive PGD that also pulls the SSL embedding and the
   penultimate features towards the target class.
2. **Per client** (:mod:`security_clients`): HopSkipJump (label-only) and SquareAttack (scores,
   L∞ ε=0.2), 20 runs each on the ONNX model, de-duplicated; benign clients of 1000 distinct
   images with 2 % noisy retries; one run split over 10 pseudonyms; each signal alone.
3. **Poisoning** (:mod:`security_poison`): 5 % label flips and a 5 % ART pixel-pattern
   backdoor in a feedback window, beside ART's SpectralSignatureDefense and ActivationDefence.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import security_clients
import security_poison
import security_records as rec
import torch
from numpy.typing import NDArray
from security_attacks import CACHE, hopskipjump_runs, square_runs, white_box
from security_models import OnnxDigits, check_agreement, load_torch_digits

from detectors.adversarial import Views
from serving.encoders.models import digits_data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "security.md"
Array = NDArray[Any]
TARGETS = {"@roc0.05": 0.8, "@roc0.01": 0.5, "@auroc": 0.95}


def per_record(model: Any, onnx_model: OnnxDigits, X01: Array, y: Array,
               split: dict[str, Array]) -> dict[str, Any]:
    tr, va, te = split["train"], split["val"], split["test"]
    ref, cal, clean = (rec.views_of(onnx_model, X01[i]) for i in (tr, va, te))
    adv = white_box(model, X01[te], y[te], seed=0)
    t0 = time.perf_counter()
    adv["adaptive_pgd_0.2"] = rec.adaptive_pgd(model, X01[te], y[te], ref, y[tr], eps=0.2)
    adv["adaptive_pgd_0.3"] = rec.adaptive_pgd(model, X01[te], y[te], ref, y[tr], eps=0.3)
    adaptive_s = time.perf_counter() - t0
    attacks: dict[str, tuple[Views, Array]] = {}
    flipped: dict[str, int] = {}
    for name, x in adv.items():
        v = rec.views_of(onnx_model, x)
        ok = v.prediction != y[te]
        flipped[name] = int(ok.sum())
        attacks[name] = (v.take(np.flatnonzero(ok)), x[ok])
    rows = {
        name: rec.evaluate(score, (cal, X01[va]), (clean, X01[te]), attacks)
        for name, score in rec.scorers(onnx_model, ref, y[tr], cal).items()
    }
    return {"rows": rows, "flipped": flipped, "n_test": len(te), "n_cal": len(va),
            "n_ref": len(tr), "adaptive_seconds": adaptive_s}


def per_client(onnx_model: OnnxDigits, X01: Array, y: Array, split: dict[str, Array],
               n_benign: int) -> dict[str, Any]:
    """Runs on test images 0–19 (the hash parameters were chosen on these) and 20–39."""
    te = split["test"]
    correct = te[onnx_model.logits(X01[te]).argmax(1) == y[te]]
    out = {}
    for name, ok in (("images 0-19 (tuning)", correct[:20]), ("images 20-39 (held out)",
                                                             correct[20:40])):
        hsj = hopskipjump_runs(onnx_model, X01[ok], y[ok], seed=0)
        square = square_runs(onnx_model, X01[ok], y[ok], seed=0, eps=0.2)
        out[name] = security_clients.run(onnx_model, X01, X01[ok], y[ok], hsj, square, seed=0,
                                         n_benign=n_benign, retry=0.02, eps=0.2)
    return out


# --- report --------------------------------------------------------------------------------
def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def record_tables(r: dict[str, Any]) -> list[str]:
    attacks = list(r["flipped"])
    lines = [
        "## 1. Adversarial inputs, per record",
        "",
        f"Reference: train split ({r['n_ref']}, labels); calibration: validation split "
        f"({r['n_cal']}, clean, the model's predictions); test: test split ({r['n_test']}) clean "
        "and attacked. Flipped predictions per attack (only these count): "
        + ", ".join(f"{k} {v}/{r['n_test']}" for k, v in r["flipped"].items()) + ".",
        "",
        "**At the test-clean ROC points** (detection at 5 % / 1 % FPR on clean test records) "
        "and AUROC. Targets: ≥ 0.80 at 5 %, ≥ 0.50 at 1 %, AUROC ≥ 0.95.",
        "",
        "| detector | " + " | ".join(attacks) + " |",
        "| --- | " + " | ".join("---" for _ in attacks) + " |",
    ]
    for name, row in r["rows"].items():
        cells = [f"{_f(row[f'{a}@roc0.05'])} / {_f(row[f'{a}@roc0.01'])} / "
                 f"{_f(row[f'{a}@auroc'], 3)}" for a in attacks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**At the thresholds calibrated on the validation split** (what a deployment gets; "
        "the clean column is the flag rate on clean test records): detection at fpr 0.05 / "
        "0.01.",
        "",
        "| detector | clean | " + " | ".join(attacks) + " |",
        "| --- | --- | " + " | ".join("---" for _ in attacks) + " |",
    ]
    for name, row in r["rows"].items():
        cells = [f"{_f(row[f'{a}@cal0.05'])} / {_f(row[f'{a}@cal0.01'])}" for a in attacks]
        lines.append(f"| {name} | {_f(row['clean@0.05'], 3)} / {_f(row['clean@0.01'], 3)} | "
                     + " | ".join(cells) + " |")
    return lines


def client_tables(runs: dict[str, Any]) -> list[str]:
    lines = ["", "## 2. Black-box query attacks, per client", "",
             "Window hashes: 16 levels, windows of 4 values; count rule over the last m = 5 "
             "queries with k calibrated (2 here), query_fpr = 0.00025 per signal — chosen by "
             "sweeps on the tuning runs (levels 4/8/12/16, windows 2/3/4/8, query_fpr "
             "0.00025–0.005, m 5/8/20, and row + column windows or position-keyed windows "
             "over the 8×8 image, which did no better there than the flat windows); the "
             "held-out runs attack 20 other test images with the same settings. The previous "
             "settings (m = 20, query_fpr = 0.001, so k = 3) stopped Square in 16/20 tuning "
             "and 11/20 held-out runs. Benign clients are judged after calibration, then each "
             "attack run is a new client (the global index holds all of them).",
             "",
             "**What no query-history rule can stop.** Square on 8×8 digits at ε = 0.2 often "
             "wins with its initialisation (vertical ±ε stripes over the whole image: unique "
             "query 2) or its first patch (query 3). The first query of a run is the clean "
             "image, which nothing flags, so a k-of-m rule alerts at query k + 1 at the "
             "earliest, and a run that succeeds by then is out of reach for any signal. The "
             "tables give the issue's protocol (stopped before success, of all 20 runs) and, "
             "beside it, the same count over the runs that last longer than k + 1 queries."]
    for title, r in runs.items():
        lines += ["", f"### Runs on {title}", "", *_client_table(r)]
    return lines


def _client_table(r: dict[str, Any]) -> list[str]:
    c = r["calibration"]
    q = r["queries_per_run"]
    lines = [
        f"Calibrated on 10 benign clients × 1000 distinct images (+2 % retries, σ = 0.01): "
        f"τ = {c['tau']:.4f} (embedding distance), min shared window hashes = "
        f"{c['min_shared']}, k = {c['k']} of the last {c['window']} queries, benign flag rate "
        f"{c['benign_flag_rate']:.4f}, {c['stop_hashes']} frequent (background) hashes ignored. "
        f"Unique queries per run: HopSkipJump median {int(np.median(q['HopSkipJump']))}, "
        f"Square median {int(np.median(q['Square']))} (Square stops at its first success). "
        "Alert = unique-query number at which the client is alerted.",
        "",
        "| signals | benign clients alerted (1000 q each) | benign flag rate | HSJ flagged | "
        "HSJ median / max alert | Square stopped before success (all runs) | of the runs "
        "lasting over k + 1 queries | HSJ over 10 pseudonyms: first alert, pseudonyms "
        "alerted | longest Square run over 10 pseudonyms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("both signals", "embedding distance only", "window hashes only"):
        row = r[name]
        hsj = [a for a in row["HopSkipJump"]["alerts"] if a is not None]
        n = len(row["HopSkipJump"]["alerts"])
        split_h, split_s = row["HopSkipJump over 10 pseudonyms"], row["Square over 10 pseudonyms"]
        lines.append(
            f"| {name} | {row['benign_alerted']}/{row['benign_clients']} | "
            f"{row['benign_flag_rate']:.4f} | {len(hsj)}/{n} | "
            f"{_f(float(np.median(hsj)) if hsj else None, 1)} / {max(hsj) if hsj else '–'} | "
            f"{row['Square']['stopped_before_success']}/{n} | "
            f"{row['Square']['stopped_before_success']}/{row['Square']['reachable']} | "
            f"{split_h['first_alert'] or 'none'} of {split_h['queries']}, "
            f"{split_h['pseudonyms_alerted']} | {split_s['first_alert'] or 'none'} of "
            f"{split_s['queries']} |"
        )
    both = r["both signals"]
    lines += ["", "Square, per run (unique queries), both signals: alert / success — "
              + ", ".join(f"{a or '–'}/{s or '–'}" for a, s in
                          zip(both["Square"]["alerts"], both["Square"]["success"], strict=True))]
    return lines


def poison_tables(r: dict[str, Any], seeds: int) -> list[str]:
    lines = [
        "", "## 3. Poisoned feedback", "",
        f"Trusted reference: train split; clean calibration: validation split; feedback window: "
        f"the test split with 5 % poisoned, {seeds} draws pooled. Target: recall ≥ 0.95 at "
        "precision ≥ 0.7.", "",
        "Each cell: precision / recall / the window's estimated poisoning rate (true 0.05).",
        "",
        "| detector | label flips | backdoor (dirty label) | repeated trigger (clean label) |",
        "| --- | --- | --- | --- |",
    ]
    for name in r["flip"]:
        cells = [f"{_f(r[k][name]['precision'])} / {_f(r[k][name]['recall'])} / "
                 f"{_f(r[k][name]['rate'], 3)}" for k in ("flip", "backdoor", "repeat")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--no-cache", action="store_true", help="regenerate the attacks")
    ap.add_argument("--benign-clients", type=int, default=100)
    ap.add_argument("--poison-seeds", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("art").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    if args.no_cache and CACHE.exists():
        shutil.rmtree(CACHE)
    t0 = time.perf_counter()
    X, y, split_lists = digits_data()
    X01 = (X / 16.0).astype(np.float32)
    split = {k: np.asarray(v) for k, v in split_lists.items()}
    model, onnx_model = load_torch_digits(), OnnxDigits()
    agreement = check_agreement(model, onnx_model, X01)
    if agreement > 1e-4:
        raise SystemExit(f"torch mirror disagrees with the ONNX model by {agreement:.2e}")
    records = per_record(model, onnx_model, X01, y, split)
    clients = per_client(onnx_model, X01, y, split, args.benign_clients)
    poison = security_poison.run(onnx_model, X01, y, split, args.poison_seeds,
                                 args.finetune_epochs)
    seconds = time.perf_counter() - t0
    import art

    head = [
        "# Security detectors: adversarial inputs, query attacks, poisoned feedback",
        "",
        f"Written by `benchmarks/security.py` ({seconds:.0f} s on {platform.machine()}, "
        f"2 shared cores, torch {torch.__version__} one thread, ART {art.__version__}, "
        f"numpy {np.__version__}). Bundled digits models "
        "(`serving/encoders/models/`); attacks on inputs in [0, 1], the models see ×16. "
        f"The torch mirror used for white-box attacks matches the ONNX graph to {agreement:.1e}. "
        "The black-box attacks query the ONNX model on onnxruntime.",
        "",
    ]
    text = "\n".join(head + record_tables(records) + client_tables(clients)
                     + poison_tables(poison, args.poison_seeds)) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"records": records, "clients": clients, "poison": poison, "seconds": seconds},
        indent=1, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
