"""One contract suite over every registered detector (``detectors.base.registered()``).

Each family has a small factory that knows how to build a fast instance, make data and call
that family's API; the checks themselves are generic:

* state round-trips through ``save``/``load`` (arrays + JSON, no pickle) to identical output;
* ``predict``/``score`` do not mutate the detector or their input;
* refitting with the same parameters and seed gives the same state and output;
* scores are higher for anomalous/drifted data than for clean data;
* a stationary stream stays within the detector's false-alarm budget.

A detector whose family has no factory fails loudly: add its factory here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors.base import Detector, load, registered

REGISTRY = registered()
Data = Callable[[np.random.Generator, int], Any]


def _comparable(out: Any) -> str:
    """Canonical JSON of a result (arrays as lists, NaN compares equal)."""
    if hasattr(out, "to_dict"):
        out = out.to_dict()
    elif is_dataclass(out) and not isinstance(out, type):
        out = asdict(out)
    return json.dumps(out, sort_keys=True, default=lambda v: np.asarray(v).tolist())


def _same_state(a: Detector, b: Detector) -> bool:
    (arr_a, meta_a), (arr_b, meta_b) = a.get_state(), b.get_state()
    if arr_a.keys() != arr_b.keys() or _comparable(meta_a) != _comparable(meta_b):
        return False
    return all(
        np.array_equal(arr_a[k], arr_b[k], equal_nan=arr_a[k].dtype.kind in "fc") for k in arr_a
    )


# --- families ------------------------------------------------------------------------------
class Family:
    """How to build, feed and read one family of detectors."""

    streaming = False

    def build(self, cls: type[Detector]) -> Detector:
        return cls()

    def reference(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def clean(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def anomalous(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def fit(self, det: Detector, rng: np.random.Generator) -> Detector:
        det.fit(self.reference(rng))  # type: ignore[attr-defined]
        return det

    def run(self, det: Detector, X: Any) -> Any:
        return det.predict(X)  # type: ignore[attr-defined]

    def severity(self, det: Detector, X: Any) -> float:
        return float(np.mean(det.score(X)))  # type: ignore[attr-defined]

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        raise NotImplementedError


class DriftBatch(Family):
    """``fit(X_ref)``, ``score(X) -> (1,)``, ``predict(X) -> DriftResult`` (one window)."""

    def _labels(self, cls: type[Detector]) -> bool:
        return getattr(cls, "input_kind", "embeddings") == "labels"

    def build(self, cls: type[Detector]) -> Detector:
        self.labels = self._labels(cls)
        return cls()

    def reference(self, rng: np.random.Generator) -> Any:
        return rng.choice(4, 300, p=[0.4, 0.3, 0.2, 0.1]) if self.labels else rng.normal(
            size=(200, 5)
        )

    def clean(self, rng: np.random.Generator) -> Any:
        return rng.choice(4, 150, p=[0.4, 0.3, 0.2, 0.1]) if self.labels else rng.normal(
            size=(100, 5)
        )

    def anomalous(self, rng: np.random.Generator) -> Any:
        return rng.choice(4, 150, p=[0.1, 0.2, 0.3, 0.4]) if self.labels else rng.normal(
            0.8, 1.0, size=(100, 5)
        )

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        rng = np.random.default_rng(11)
        alarms = 0
        for i in range(60):
            det = self.build(cls)
            if "seed" in det.get_params():
                det.seed = i  # type: ignore[attr-defined]
            det = self.fit(det, rng)
            alarms += bool(det.predict(self.clean(rng)).is_drift)  # type: ignore[attr-defined]
        assert alarms <= 9, f"{alarms}/60 false alarms at alpha=0.05 (P(>=10) ~ 0.002)"


class DriftStreaming(Family):
    """``fit(X_ref)``, ``update(x)``/``update_batch(X) -> OnlineDriftResult`` (stateful)."""

    streaming = True

    def build(self, cls: type[Detector]) -> Detector:
        return cls(ert=50, window_size=5, n_bootstraps=400)  # type: ignore[call-arg]

    def reference(self, rng: np.random.Generator) -> Any:
        return rng.normal(size=(150, 3))

    def clean(self, rng: np.random.Generator) -> Any:
        return rng.normal(size=(20, 3))

    def anomalous(self, rng: np.random.Generator) -> Any:
        return rng.normal(1.5, 1.0, size=(20, 3))

    def run(self, det: Detector, X: Any) -> Any:
        return det.update_batch(X)  # type: ignore[attr-defined]

    def severity(self, det: Detector, X: Any) -> float:
        copy = type(det).from_state(*det.get_state())
        return float(np.mean(copy.update_batch(X).statistics[-5:]))  # type: ignore[attr-defined]

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        # ERT 50: a run length beyond 10 records has probability ~(1 - 1/50)^10 ~ 0.82.
        rng = np.random.default_rng(12)
        early = 0
        for i in range(40):
            det = self.fit(cls(ert=50, window_size=5, n_bootstraps=400, seed=i), rng)  # type: ignore[call-arg]
            early += bool(det.update_batch(rng.normal(size=(10, 3))).is_drift)  # type: ignore[attr-defined]
        assert early <= 16, f"{early}/40 streams alarmed within 10 records at ERT=50 (~7 expected)"


class OOD(Family):
    """``fit(X_ref, y)``, ``score(X) -> (n,)``, ``predict(X) -> OODResult`` (per record)."""

    def build(self, cls: type[Detector]) -> Detector:
        from detectors.ood.base import LogitDetector

        self.logits = issubclass(cls, LogitDetector)
        return cls()

    def _clusters(self, rng: np.random.Generator, n: int) -> tuple[Any, Any]:
        y = rng.integers(0, 3, n)
        return rng.normal(size=(n, 5)) + 6.0 * np.eye(5)[y], y

    def fit(self, det: Detector, rng: np.random.Generator) -> Detector:
        X, y = self._clusters(rng, 600)
        det.fit(X, y)  # type: ignore[attr-defined]
        return det

    def reference(self, rng: np.random.Generator) -> Any:
        return self._clusters(rng, 600)[0]

    def clean(self, rng: np.random.Generator) -> Any:
        return self._clusters(rng, 200)[0]

    def anomalous(self, rng: np.random.Generator) -> Any:
        if self.logits:  # no class stands out: low evidence, flat softmax
            return rng.normal(size=(200, 5))
        X, y = self._clusters(rng, 200)
        # Mirrored through the origin along its own class axis: far from its class, pointing
        # where no class points (cosine kNN), along a direction where the background is wide
        # too (an axis no class uses would cancel out in relative Mahalanobis, by design).
        return X - 12.0 * np.eye(5)[y]

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        rng = np.random.default_rng(13)
        det = self.fit(self.build(cls), rng)
        res = det.predict(self.clean(rng))  # type: ignore[attr-defined]
        budget = float(res.fpr)
        rate = float(np.mean(res.is_ood))
        assert rate <= budget + 3 * np.sqrt(budget * (1 - budget) / 200) + 0.01, (
            f"flags {rate:.3f} of clean records, budget fpr={budget}"
        )


class AdversarialRecords(Family):
    """``fit(Views, y)``, ``score(Views) -> (n,)``, ``predict(Views) -> AdversarialResult``.

    Data arrays are ``[embedding | features | prediction]`` so that inputs copy as one array.
    """

    def _clusters(self, rng: np.random.Generator, n: int) -> tuple[Any, Any]:
        y = rng.integers(0, 3, n)
        Z = rng.normal(size=(n, 5)) + 6.0 * np.eye(5)[y]
        F = rng.normal(size=(n, 5)) + 6.0 * np.eye(5)[y]
        return np.hstack([Z, F, y[:, None]]), y

    @staticmethod
    def views(X: Any) -> Any:
        from detectors.adversarial import Views

        return Views(X[:, :5], X[:, 10].astype(np.int64), X[:, 5:10])

    def fit(self, det: Detector, rng: np.random.Generator) -> Detector:
        X, y = self._clusters(rng, 600)
        det.fit(self.views(X), y)  # type: ignore[attr-defined]
        return det

    def clean(self, rng: np.random.Generator) -> Any:
        return self._clusters(rng, 200)[0]

    def anomalous(self, rng: np.random.Generator) -> Any:
        X, y = self._clusters(rng, 200)
        # the prediction flipped, the features pushed off every class (as OOD's factory does)
        X[:, 10] = (y + 1) % 3
        X[:, 5:10] -= 12.0 * np.eye(5)[y]
        return X

    def run(self, det: Detector, X: Any) -> Any:
        return det.predict(self.views(X))  # type: ignore[attr-defined]

    def severity(self, det: Detector, X: Any) -> float:
        return float(np.mean(det.score(self.views(X))))  # type: ignore[attr-defined]

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        rng = np.random.default_rng(14)
        det = self.fit(self.build(cls), rng)
        res = self.run(det, self.clean(rng))
        budget = float(res.fpr)
        rate = float(np.mean(res.is_adversarial))
        assert rate <= budget + 3 * np.sqrt(budget * (1 - budget) / 200) + 0.01, (
            f"flags {rate:.3f} of clean records, budget fpr={budget}"
        )


class QueryStream(Family):
    """``fit(clients, E, H, D)`` on benign traffic, ``update_batch(...) -> QueryResult``.

    Data arrays are ``[client id | 64 pixels]`` (one array per batch); the embedding is the
    centred input, the hashes and digests are computed from it here.
    """

    streaming = True

    def build(self, cls: type[Detector]) -> Detector:
        return cls(history=8, window=10, max_clients=64, index_size=1 << 12)  # type: ignore[call-arg]

    @staticmethod
    def split(X: Any) -> tuple[Any, ...]:
        from detectors.adversarial import content_digest, window_hashes

        clients = [f"client-{int(c)}" for c in X[:, 0]]
        pixels = X[:, 1:]
        return clients, pixels - 0.5, window_hashes(pixels), content_digest(pixels)

    def _benign(self, rng: np.random.Generator, n: int, first_client: int) -> Any:
        ids = first_client + rng.integers(0, 10, n)
        return np.hstack([ids[:, None], rng.random((n, 64))])

    def fit(self, det: Detector, rng: np.random.Generator) -> Detector:
        det.fit(*self.split(self._benign(rng, 400, 0)))  # type: ignore[attr-defined]
        return det

    def clean(self, rng: np.random.Generator) -> Any:
        return self._benign(rng, 60, 100)

    def anomalous(self, rng: np.random.Generator) -> Any:
        walk = rng.random(64) + np.cumsum(rng.normal(0, 0.002, (30, 64)), axis=0)
        return np.hstack([np.full((30, 1), 7.0), walk])

    def run(self, det: Detector, X: Any) -> Any:
        return det.update_batch(*self.split(X))  # type: ignore[attr-defined]

    def severity(self, det: Detector, X: Any) -> float:
        copy = type(det).from_state(*det.get_state())
        return float(np.mean(self.run(copy, X).counts))

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        rng = np.random.default_rng(15)
        det = self.fit(self.build(cls), rng)
        alerts = len(self.run(det, self._benign(rng, 2000, 200)).alerts)
        assert alerts == 0, f"{alerts} of 10 benign clients alerted within 200 queries each"


class Poisoning(Family):
    """``fit(X_ref, y_ref)``, ``predict(X, labels) -> PoisoningResult`` on a feedback window.

    Data arrays are ``[representation | label]``.
    """

    def build(self, cls: type[Detector]) -> Detector:
        kwargs: dict[str, Any] = {"fpr": 0.05}  # the union detector splits it over 3 signals
        if "window_size" in cls._param_names():
            kwargs["window_size"] = 200
        return cls(**kwargs)

    def _clusters(self, rng: np.random.Generator, n: int) -> Any:
        y = rng.integers(0, 3, n)
        return np.hstack([rng.normal(size=(n, 5)) + 6.0 * np.eye(5)[y], y[:, None]])

    def fit(self, det: Detector, rng: np.random.Generator) -> Detector:
        X = self._clusters(rng, 800)
        det.fit(X[:, :-1], X[:, -1].astype(np.int64))  # type: ignore[attr-defined]
        return det

    def clean(self, rng: np.random.Generator) -> Any:
        return self._clusters(rng, 200)

    def anomalous(self, rng: np.random.Generator) -> Any:
        X = self._clusters(rng, 200)
        X[:, -1] = (X[:, -1] + 1) % 3  # every label flipped ...
        X[:, :-1] = np.repeat(X[::5, :-1], 5, axis=0) + 0.001 * rng.normal(size=(200, 5))
        X[:, -1] = np.repeat(X[::5, -1], 5)  # ... in bursts of 5 near-duplicates
        return X

    def run(self, det: Detector, X: Any) -> Any:
        return det.predict(X[:, :-1], X[:, -1].astype(np.int64))  # type: ignore[attr-defined]

    def severity(self, det: Detector, X: Any) -> float:
        scores = det.score(X[:, :-1], X[:, -1].astype(np.int64))  # type: ignore[attr-defined]
        return float(np.mean(np.minimum(scores, 1e6)))

    def false_alarm_ok(self, cls: type[Detector]) -> None:
        rng = np.random.default_rng(16)
        det = self.fit(self.build(cls), rng)
        res = self.run(det, self.clean(rng))
        budget = float(res.fpr)
        rate = float(np.mean(res.is_poisoned))
        assert rate <= budget + 3 * np.sqrt(budget * (1 - budget) / 200) + 0.01, (
            f"flags {rate:.3f} of clean feedback, budget fpr={budget}"
        )


FAMILIES: dict[str, Callable[[type[Detector]], Family]] = {
    "drift": lambda cls: DriftStreaming() if hasattr(cls, "update_batch") else DriftBatch(),
    "ood": lambda cls: OOD(),
    "adversarial": lambda cls: (
        QueryStream() if hasattr(cls, "update_batch") else AdversarialRecords()
    ),
    "poisoning": lambda cls: Poisoning(),
}


def family_of(name: str) -> Family:
    prefix = name.split(".")[0]
    if prefix not in FAMILIES:
        pytest.fail(
            f"detector {name!r} belongs to family {prefix!r}, which has no contract factory; "
            "add one to FAMILIES in tests/detectors/test_contract.py"
        )
    return FAMILIES[prefix](REGISTRY[name])


NAMES = sorted(REGISTRY)


def test_something_is_registered() -> None:
    assert any(n.startswith("drift.") for n in NAMES), NAMES


@pytest.fixture(params=NAMES)
def case(request: pytest.FixtureRequest) -> tuple[str, Family, Detector]:
    name = request.param
    fam = family_of(name)
    return name, fam, fam.fit(fam.build(REGISTRY[name]), np.random.default_rng(0))


def test_state_round_trip(case: tuple[str, Family, Detector], tmp_path: Path) -> None:
    name, fam, det = case
    rng = np.random.default_rng(1)
    if fam.streaming:  # save mid-stream, then both continue identically
        fam.run(det, fam.clean(rng))
    path = tmp_path / "det.npz"
    det.save(path)
    again = load(path)
    assert type(again) is type(det) and again.name == name
    assert _same_state(det, again)
    X = fam.anomalous(rng)
    assert _comparable(fam.run(det, X)) == _comparable(fam.run(again, X))


def test_scoring_does_not_mutate(case: tuple[str, Family, Detector]) -> None:
    _, fam, det = case
    X = fam.anomalous(np.random.default_rng(2))
    X_before = np.array(X, copy=True)
    if fam.streaming:  # updating is its job; the reference and calibration must not move
        before = {k: np.array(v, copy=True) for k, v in vars(det).items()
                  if k in ("x_ref_", "thresholds_", "bandwidth_", "kxx_term_")}
        fam.run(det, X)
        for k, v in before.items():
            np.testing.assert_array_equal(getattr(det, k), v, err_msg=k)
    else:
        snapshot = type(det).from_state(*det.get_state())
        fam.run(det, X)
        fam.severity(det, X)
        assert _same_state(det, snapshot)
    np.testing.assert_array_equal(X, X_before)


def test_refit_is_deterministic(case: tuple[str, Family, Detector]) -> None:
    name, fam, det = case
    other = fam.fit(fam.build(REGISTRY[name]), np.random.default_rng(0))
    assert _same_state(det, other)
    X = fam.anomalous(np.random.default_rng(3))
    assert _comparable(fam.run(det, X)) == _comparable(fam.run(other, X))


def test_higher_is_more_anomalous(case: tuple[str, Family, Detector]) -> None:
    _, fam, det = case
    rng = np.random.default_rng(4)
    assert fam.severity(det, fam.anomalous(rng)) > fam.severity(det, fam.clean(rng))


@pytest.mark.parametrize("name", NAMES)
def test_stationary_data_stays_within_false_alarm_budget(name: str) -> None:
    family_of(name).false_alarm_ok(REGISTRY[name])
