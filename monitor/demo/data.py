"""What the demo sends: the reference, and the inputs of each phase (images or embeddings).

With the bundled digits models the phases are *images* (0..16 pixels) sent to the sidecar,
which computes their embeddings; ``synthetic`` gives Gaussian embeddings produced straight to
Kafka. Every phase is drawn from a seeded generator, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

DRIFT_MAX_NOISE = 5.0  # pixel noise s.d. at the end of the drift phase (pixels are 0..16)
OOD_FRACTION = 0.6  # share of the OOD phase that is out of distribution (rest: clean)


@dataclass(frozen=True)
class PhaseInputs:
    """The inputs of one phase: images for the sidecar, or embeddings for Kafka.

    ``clients``: the client id of each row (default: seven benign clients in turn);
    ``feedback``: the label POSTed to ``/v1/feedback`` for each row after its inference (-1:
    none); ``attack``: the rows that are the incident (the ROC's positives; default: all).
    """

    name: str
    images: NDArray[np.float32] | None
    embeddings: NDArray[np.float32] | None
    clients: tuple[str, ...] | None = None
    feedback: NDArray[np.int64] | None = None
    attack: NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        arr = self.images if self.images is not None else self.embeddings
        return 0 if arr is None else int(arr.shape[0])

    def client(self, i: int) -> str:
        return self.clients[i] if self.clients is not None else f"client-{i % 7}"


@dataclass(frozen=True)
class DemoData:
    reference: NDArray[np.float64]
    description: str
    phases: dict[str, PhaseInputs]  # in play order: clean, drift, recovery, ood, ...
    # The raw digits (pixels, labels) and the trusted reference rows, for the security plan.
    pixels: NDArray[np.float32] | None = None
    labels: NDArray[np.int64] | None = None
    ref_rows: NDArray[np.int64] | None = None

    @property
    def images(self) -> bool:
        return self.phases["clean"].images is not None


def _digits() -> tuple[Any, NDArray[np.float32], NDArray[np.float64], dict[str, Any]]:
    import onnxruntime as ort

    from serving.encoders.models import DIGITS_ENCODER, digits_data

    X, _, split = digits_data()
    sess = ort.InferenceSession(str(DIGITS_ENCODER), providers=["CPUExecutionProvider"])
    emb = sess.run(["embedding"], {"input": X})[0].astype(np.float64)
    return sess, X, emb[split["train"] + split["val"]], split


def embed(X: NDArray[Any]) -> NDArray[np.float64]:
    """SSL embeddings of digits pixels through the bundled encoder."""
    import onnxruntime as ort

    from serving.encoders.models import DIGITS_ENCODER

    sess = ort.InferenceSession(str(DIGITS_ENCODER), providers=["CPUExecutionProvider"])
    out: NDArray[np.float64] = sess.run(["embedding"], {"input": X.astype(np.float32)})[0]
    return out.astype(np.float64)


def load(synthetic: bool, n: int, security: bool = False) -> DemoData:
    """The reference and the phases of ``n`` records each, seeded; with ``security``, the
    security incidents' phases too (images only, see :mod:`monitor.demo.security`)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, n)[:, None]
    if not synthetic:
        try:
            _, X, ref, split = _digits()
        except (ImportError, OSError, KeyError) as exc:
            print(f"(digits models unavailable: {exc}; using synthetic embeddings)")
        else:
            from serving.encoders.models import digits_data

            y = digits_data()[1]
            test, ood = np.asarray(split["test"]), np.asarray(split["ood"])

            def clean() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
                """``n`` held-out images (with repeats) and the label to send as feedback for
                each: its true label on an image's first occurrence in the phase, else -1 (a
                labeller labels an input once; the same labelled input three times in a
                feedback window is what the poisoning burst signal looks for)."""
                idx = test[rng.integers(0, len(test), n)]
                first = np.zeros(n, dtype=bool)
                first[np.unique(idx, return_index=True)[1]] = True
                return X[idx], np.where(first, y[idx], -1)

            noise = rng.normal(0, 1, (n, 64)) * DRIFT_MAX_NOISE * ramp  # gradual: 0 at the start
            drift = np.clip(clean()[0] + noise, 0, 16)
            novel = np.where((rng.random(n) < 0.5)[:, None], X[ood[rng.integers(0, len(ood), n)]],
                             rng.uniform(0, 16, (n, 64)))
            is_novel = rng.random(n) < OOD_FRACTION
            oods = np.where(is_novel[:, None], novel, clean()[0])
            (c0, y0), (r1, ry1), (r2, ry2) = clean(), clean(), clean()
            f32 = np.float32
            phases = {
                "clean": PhaseInputs("clean", c0.astype(f32), None, feedback=y0),
                "drift": PhaseInputs("drift", drift.astype(f32), None),
                "recovery": PhaseInputs("recovery", r1.astype(f32), None, feedback=ry1),
                "ood": PhaseInputs("ood", oods.astype(f32), None, attack=is_novel),
            }
            if security:
                from monitor.demo import security as S

                phases["recovery-2"] = PhaseInputs("recovery-2", r2.astype(f32), None,
                                                   feedback=ry2)
                pool, pool_y = clean()
                phases.update(S.phases(pool, pool_y, X, n))
            return DemoData(
                ref, "bundled digits models: reference = SSL embeddings of digits 0-7 train/val; "
                "phases are images sent as OIP requests to the serving sidecar", phases,
                X, y.astype(np.int64), np.asarray(split["train"] + split["val"]))
    d = 32
    ref = rng.normal(size=(2000, d))
    far_rows = rng.random((n, 1)) < OOD_FRACTION
    far = rng.normal(size=(n, d)) + np.where(far_rows, 4.0, 0.0)
    emb = {"clean": rng.normal(size=(n, d)), "drift": rng.normal(size=(n, d)) + 0.8 * ramp,
           "recovery": rng.normal(size=(n, d)), "ood": far}
    return DemoData(ref, "synthetic 32-d Gaussians (no sidecar): drift shifts the mean by up "
                    "to 0.8 per dimension, OOD moves 60% of records 4 s.d. away",
                    {k: PhaseInputs(k, None, v.astype(np.float32),
                                    attack=far_rows[:, 0] if k == "ood" else None)
                     for k, v in emb.items()})


def _embeddings(
    synthetic: bool, n: int
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], str, tuple[NDArray[Any], NDArray[Any]] | None]:
    """(reference, clean phase, drifted phase, description, raw images of both phases).

    A clean phase of held-out digits 0-7 and a drifted one with 60% digits 8-9, as embeddings
    (and as images with the bundled models); the dashboards' live panel test feeds on it.
    """
    rng = np.random.default_rng(0)
    if not synthetic:
        try:
            sess, X, ref, split = _digits()
            emb = sess.run(["embedding"], {"input": X})[0].astype(np.float32)
            ref = emb[split["train"] + split["val"]]  # float32, as the stream carries
            test_idx, ood_idx = np.asarray(split["test"]), np.asarray(split["ood"])
            clean_idx = test_idx[rng.integers(0, len(test_idx), n)]
            mixed_idx = np.where(rng.random(n) < 0.6, ood_idx[rng.integers(0, len(ood_idx), n)],
                                 test_idx[rng.integers(0, len(test_idx), n)])
            return (ref, emb[clean_idx], emb[mixed_idx],
                    "bundled digits models: reference = SSL embeddings of digits 0-7 train/val; "
                    "clean = held-out 0-7 images, drifted = 60% digits 8-9",
                    (X[clean_idx].astype(np.float32), X[mixed_idx].astype(np.float32)))
        except (ImportError, OSError, KeyError) as exc:
            print(f"(digits models unavailable: {exc}; using synthetic embeddings)")
    ref = rng.normal(size=(2000, 32))
    return (ref, rng.normal(size=(n, 32)).astype(np.float32),
            rng.normal(0.4, 1.0, size=(n, 32)).astype(np.float32),
            "synthetic 32-d Gaussians, drifted phase shifted by 0.4 per dimension", None)
