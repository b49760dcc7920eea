"""Record codec throughput: msgpack v1 (ours) against a JSON encoding of the same record.

Run: ``.venv/bin/python benchmarks/codec.py`` — writes ``benchmarks/results/codec.md``.
Single-threaded on purpose (the target is records/s on one core). Numbers are best-of-5 to damp
noise from other processes on a shared machine; ratios compare runs taken back to back.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from monitor import records as R

N = 50_000
REPEATS = 5
OUT = Path(__file__).parent / "results" / "codec.md"


def make_records(d: int, n: int) -> list[R.Record]:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return [
        R.Record(
            model="digits",
            model_version="3",
            record_id=f"{i:012d}",
            timestamp_ms=1_700_000_000_000 + i,
            embedding=emb[i],
            prediction=int(i % 10),
            client_id="c0ffee",
            input_digest=b"\x01" * 16,
        )
        for i in range(n)
    ]


def json_encode(r: R.Record) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "model": r.model,
            "model_version": r.model_version,
            "id": r.record_id,
            "ts": r.timestamp_ms,
            "kind": r.kind,
            "embedding": r.embedding.tolist(),
            "prediction": r.prediction,
            "client_id": r.client_id,
            "input_digest": r.input_digest.hex() if r.input_digest else None,
        }
    ).encode()


def json_decode(b: bytes) -> R.Record:
    m = json.loads(b)
    return R.Record(
        model=m["model"],
        model_version=m["model_version"],
        record_id=m["id"],
        timestamp_ms=m["ts"],
        kind=m["kind"],
        embedding=np.asarray(m["embedding"], dtype=np.float32),
        prediction=m["prediction"],
        client_id=m["client_id"],
        input_digest=bytes.fromhex(m["input_digest"]) if m["input_digest"] else None,
    )


def rate(fn: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    rows = []
    for d in (128, 384):
        recs = make_records(d, N)
        ours = [R.encode(r) for r in recs]
        theirs = [json_encode(r) for r in recs]
        assert R.decode(ours[7]) == recs[7]
        np.testing.assert_allclose(json_decode(theirs[7]).embedding, recs[7].embedding)
        enc = rate(lambda: [R.encode(r) for r in recs], N)  # noqa: B023
        dec = rate(lambda: [R.decode(b) for b in ours], N)  # noqa: B023
        dec_many = rate(lambda: R.decode_many(ours), N)  # noqa: B023
        jenc = rate(lambda: [json_encode(r) for r in recs], N)  # noqa: B023
        jdec = rate(lambda: [json_decode(b) for b in theirs], N)  # noqa: B023
        size, jsize = np.mean([len(b) for b in ours]), np.mean([len(b) for b in theirs])
        rows.append((d, size, jsize, enc, jenc, dec, dec_many, jdec))
    lines = [
        "# Record codec benchmark",
        "",
        f"`benchmarks/codec.py`, {N:,} records per run, best of {REPEATS}, one thread, "
        f"Python {platform.python_version()}, {platform.machine()}. Baseline: the same record as "
        "JSON with the embedding as a list of floats.",
        "",
        "| d | bytes (msgpack) | bytes (JSON) | encode rec/s | JSON encode rec/s | decode rec/s |"
        " decode_many rec/s | JSON decode rec/s | decode speed-up vs JSON |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d, size, jsize, enc, jenc, dec, dec_many, jdec in rows:
        lines.append(
            f"| {d} | {size:.0f} | {jsize:.0f} | {enc:,.0f} | {jenc:,.0f} | {dec:,.0f} | "
            f"{dec_many:,.0f} | {jdec:,.0f} | {max(dec, dec_many) / jdec:.1f}× |"
        )
    text = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
