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
    """The inputs of one phase: images for the sidecar, or embeddings for Kafka."""

    name: str
    images: NDArray[np.float32] | None
    embeddings: NDArray[np.float32] | None

    def __len__(self) -> int:
        arr = self.images if self.images is not None else self.embeddings
        return 0 if arr is None else int(arr.shape[0])


@dataclass(frozen=True)
class DemoData:
    reference: NDArray[np.float64]
    description: str
    phases: dict[str, PhaseInputs]  # clean, drift, recovery, ood

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


def load(synthetic: bool, n: int) -> DemoData:
    """The reference and the four phases of ``n`` records each, seeded."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, n)[:, None]
    if not synthetic:
        try:
            _, X, ref, split = _digits()
        except (ImportError, OSError, KeyError) as exc:
            print(f"(digits models unavailable: {exc}; using synthetic embeddings)")
        else:
            test, ood = np.asarray(split["test"]), np.asarray(split["ood"])

            def clean() -> NDArray[np.float32]:
                return X[test[rng.integers(0, len(test), n)]]

            noise = rng.normal(0, 1, (n, 64)) * DRIFT_MAX_NOISE * ramp  # gradual: 0 at the start
            drift = np.clip(clean() + noise, 0, 16)
            novel = np.where((rng.random(n) < 0.5)[:, None], X[ood[rng.integers(0, len(ood), n)]],
                             rng.uniform(0, 16, (n, 64)))
            oods = np.where((rng.random(n) < OOD_FRACTION)[:, None], novel, clean())
            phases: dict[str, NDArray[Any]] = {"clean": clean(), "drift": drift,
                                               "recovery": clean(), "ood": oods}
            return DemoData(
                ref, "bundled digits models: reference = SSL embeddings of digits 0-7 train/val; "
                "phases are images sent as OIP requests to the serving sidecar",
                {k: PhaseInputs(k, v.astype(np.float32), None) for k, v in phases.items()})
    d = 32
    ref = rng.normal(size=(2000, d))
    far = rng.normal(size=(n, d)) + np.where(rng.random((n, 1)) < OOD_FRACTION, 4.0, 0.0)
    emb = {"clean": rng.normal(size=(n, d)), "drift": rng.normal(size=(n, d)) + 0.8 * ramp,
           "recovery": rng.normal(size=(n, d)), "ood": far}
    return DemoData(ref, "synthetic 32-d Gaussians (no sidecar): drift shifts the mean by up "
                    "to 0.8 per dimension, OOD moves 60% of records 4 s.d. away",
                    {k: PhaseInputs(k, None, v.astype(np.float32)) for k, v in emb.items()})


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
