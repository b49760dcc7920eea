"""Serving sidecar benchmark: OIP over HTTP against raw ``session.run``, in the same run.

    python benchmarks/serving_latency.py   # full: 10-minute soak, broker down 60 s
    python benchmarks/serving_latency.py --soak-seconds 120 --soak-down-seconds 30   # short soak

Models: the bundled digits classifier (``serving/encoders/models``) and a ~100k-parameter CNN
built here with ``onnx.helper`` (random weights; speed does not depend on them). For each:

* raw ``session.run`` at batch 1 in this process (same session options as the sidecar);
* the sidecar (``repwatch serve``, a subprocess on loopback) with the record stream on (to a
  real Tansu broker) and off, measured in alternating rounds with ``wrk``: binary OIP at one
  connection (latency percentiles) and at several connections (throughput), and JSON OIP;
* OIP over gRPC (``serving.grpc_port``) beside binary REST on the same sidecar, both from a
  Python client in this process (grpcio's stub, ``http.client``), alternating, one connection:
  the gRPC rows of the overhead over ``session.run`` and the sidecar's CPU per request;
* a soak at a steady request rate (``hey -q``) with the broker killed in the middle and
  restarted on the same port: failed requests, RSS over time, records sent/dropped.

Writes ``benchmarks/results/serving.md``. Needs ``wrk`` and ``hey`` (``apt-get install -y wrk
hey``). Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor import localstack  # noqa: E402
from serving import kafka_clients  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_tools import (  # noqa: E402
    Sidecar,
    bodies,
    build_cnn,
    cpu_seconds,
    grpc_client,
    http_client,
    raw_run,
    wrk,
)

DIGITS = ROOT / "serving" / "encoders" / "models" / "digits_classifier.onnx"
OUT = ROOT / "benchmarks" / "results" / "serving.md"


# ---- the runs -----------------------------------------------------------------------------------
def compare(
    name: str, model: Path, x: np.ndarray, broker: localstack.Service, args: Any, workdir: Path
) -> dict[str, Any]:
    scripts = bodies(x, workdir, name)
    raw = raw_run(model, x, 3.0)
    on = Sidecar(model, name, broker.address, workdir, kafka_client=args.kafka_client, grpc=True,
                 compression=args.compression)
    off = Sidecar(model, name, None, workdir)
    # The same stream with the previous default compression, for its CPU per request.
    gz = (Sidecar(model, name, broker.address, workdir, kafka_client=args.kafka_client,
                  compression="gzip") if args.gzip_row and args.compression != "gzip" else None)
    url = "/v2/models/" + name + "/infer"
    runs: dict[str, list[dict[str, float]]] = {
        k: []
        for k in ("on_lat", "off_lat", "on_tp", "off_tp", "gz_tp", "json_tp", "py_rest", "py_grpc")
    }
    body = (workdir / f"{name}.bin").read_bytes()
    clients = {
        "py_rest": lambda: http_client(on.url + url, body, len(body) - x.nbytes, args.duration),
        "py_grpc": lambda: grpc_client(f"127.0.0.1:{on.grpc_port}", name, x, args.duration),
    }
    try:
        for s in (on, off, gz) if gz is not None else (on, off):  # warm-up; producers connect
            wrk(s.url + url, scripts["bin"], 1, 2)
        for r in range(args.rounds):
            order = [(on, "on"), (off, "off")] if r % 2 == 0 else [(off, "off"), (on, "on")]
            for s, tag in order:
                runs[f"{tag}_lat"].append(wrk(s.url + url, scripts["bin"], 1, args.duration))
            for s, tag in order + ([(gz, "gz")] if gz is not None else []):
                before = s.cpu()
                before["broker"] = cpu_seconds(f"/proc/{broker.proc.pid}/stat")
                res = wrk(s.url + url, scripts["bin"], args.connections, args.duration)
                after = s.cpu()
                after["broker"] = cpu_seconds(f"/proc/{broker.proc.pid}/stat")
                n = res["rps"] * max(1, round(args.duration))
                for k in after:  # CPU microseconds per request, by where it was spent
                    res[f"cpu_{k}"] = (after[k] - before[k]) / n * 1e6
                runs[f"{tag}_tp"].append(res)
            runs["json_tp"].append(
                wrk(on.url + url, scripts["json"], args.connections, args.duration)
            )
        json_lat = wrk(on.url + url, scripts["json"], 1, args.duration)
        for r in range(args.rounds):  # REST and gRPC from the same kind of client, alternating
            for tag in ("py_rest", "py_grpc") if r % 2 == 0 else ("py_grpc", "py_rest"):
                before = on.cpu()
                res = clients[tag]()
                after = on.cpu()
                res["cpu"] = sum(after[k] - before[k] for k in after) / res["n"] * 1e6
                runs[tag].append(res)
        stream_metrics = on.metrics()
    finally:
        on.stop()
        off.stop()
        if gz is not None:
            gz.stop()

    def med(key: str, field: str) -> float:
        return statistics.median(run[field] for run in runs[key])

    total_non2xx = sum(run.get("non2xx", 0) for v in runs.values() for run in v)
    return {
        "name": name,
        "raw": raw,
        "params": None,
        "on_p50": med("on_lat", "p50"),
        "off_p50": med("off_lat", "p50"),
        "on_p99": med("on_lat", "p99"),
        "off_p99": med("off_lat", "p99"),
        "on_rps1": med("on_lat", "rps"),
        "off_rps1": med("off_lat", "rps"),
        "on_tp": med("on_tp", "rps"),
        "off_tp": med("off_tp", "rps"),
        "on_tp_p99": med("on_tp", "p99"),
        "off_tp_p99": med("off_tp", "p99"),
        "json_tp": med("json_tp", "rps"),
        "json_p50": json_lat["p50"],
        "py_rest_p50": med("py_rest", "p50"),
        "py_grpc_p50": med("py_grpc", "p50"),
        "py_rest_p99": med("py_rest", "p99"),
        "py_grpc_p99": med("py_grpc", "p99"),
        "py_rest_cpu": med("py_rest", "cpu"),
        "py_grpc_cpu": med("py_grpc", "cpu"),
        "non2xx": total_non2xx,
        "runs": runs,
        "stream": stream_metrics,
    }


def soak(model: Path, x: np.ndarray, args: Any, workdir: Path) -> dict[str, Any]:
    broker = localstack.start_tansu()
    side = Sidecar(
        model,
        "digits",
        broker.address,
        workdir,
        queue_size=args.soak_queue,
        kafka_client=args.kafka_client,
    )
    bodies(x, workdir, "soak")
    body = workdir / "soak.bin"
    hlen = str(len(body.read_bytes()) - x.nbytes)
    hey = subprocess.Popen(
        [
            "hey",
            "-z",
            f"{args.soak_seconds}s",
            "-c",
            "4",
            "-q",
            str(args.soak_rate // 4),
            "-m",
            "POST",
            "-T",
            "application/octet-stream",
            "-H",
            f"Inference-Header-Content-Length: {hlen}",
            "-D",
            str(body),
            f"{side.url}/v2/models/digits/infer",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    t0 = time.monotonic()
    kill_at = args.soak_seconds / 2 - args.soak_down_seconds / 2
    # (t, rss MB, records sent, stream state in readiness, readiness probe ms)
    samples: list[tuple[float, float, float, str, float]] = []
    events: list[str] = []
    down = False
    restarted = False
    sent_at_restart = 0.0
    try:
        while hey.poll() is None:
            t = time.monotonic() - t0
            m = side.metrics()
            sent = sum(
                v for k, v in m.items() if k.startswith("repwatch_serving_records_sent_total")
            )
            state, probe_ms = side.stream_state()
            if samples and state != samples[-1][3]:
                events.append(f"{t:.0f} s: readiness reports the stream {state}")
            samples.append((t, side.rss_mb(), sent, state, probe_ms))
            if not down and not restarted and t >= kill_at:
                broker.stop()
                down = True
                events.append(f"{t:.0f} s: broker killed")
            elif down and t >= kill_at + args.soak_down_seconds:
                new = localstack.start_tansu(port=broker.port, workdir=broker.workdir)
                broker.proc = new.proc
                down, restarted = False, True
                sent_at_restart = sent
                events.append(f"{t:.0f} s: broker restarted on the same port")
            time.sleep(1.0)
        report = hey.stdout.read() if hey.stdout else ""
        time.sleep(3)
        final = side.metrics()
        state, probe_ms = side.stream_state()
        samples.append(
            (
                time.monotonic() - t0,
                side.rss_mb(),
                sum(
                    v
                    for k, v in final.items()
                    if k.startswith("repwatch_serving_records_sent_total")
                ),
                state,
                probe_ms,
            )
        )
    finally:
        side.stop()
        broker.stop()
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", report))
    errors = re.search(r"Error distribution:(.*)", report, re.S)
    return {
        "samples": samples,
        "events": events,
        "codes": codes,
        "errors": errors.group(1).strip() if errors else "",
        "final": final,
        "sent_after_restart": samples[-1][2] - sent_at_restart,
        "hey": report,
    }


# ---- report -------------------------------------------------------------------------------------
def _server_stack() -> str:
    """What uvicorn runs on here: it picks uvloop and httptools when they are importable (the
    ``serving`` extra installs both), else asyncio and h11."""
    import importlib.util

    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio loop"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"uvicorn + {loop} + {http}"


def render(
    results: list[dict[str, Any]], soak_res: dict[str, Any] | None, args: Any, load: str
) -> str:
    lines = [
        "# Serving sidecar benchmark",
        "",
        f"Generated by `python benchmarks/serving_latency.py {' '.join(sys.argv[1:])}`. "
        f"One sidecar process ({_server_stack()}, onnxruntime CPU with 1 intra-op "
        "thread), `wrk` on loopback, the record stream to a real Tansu broker on the same machine. "
        f"Stream compression `kafka.compression: {args.compression}`. "
        f"{args.rounds} alternating rounds of {args.duration} s per measurement, medians shown. "
        f"Machine: {os.cpu_count()} cores shared with other work (load average at start: {load}). "
        f"Producer client (`serving.kafka_client`): **{args.kafka_client}**.",
        "",
    ]
    if results:
        lines += _render_compare(results, args)
    if soak_res is not None:
        s = soak_res
        rss = [x[1] for x in s["samples"]]
        lines += [
            "",
            f"## Soak: {args.soak_seconds} s at {args.soak_rate} req/s, broker down "
            f"{args.soak_down_seconds} s in the middle",
            "",
            "(`--soak-seconds`/`--soak-down-seconds` default to the full 600 s soak with the "
            "broker down 60 s; this run used the values above.)",
            "",
            f"Status codes: {s['codes']}; errors: {s['errors'] or 'none'}.",
            f"Events: {'; '.join(s['events'])}.",
            f"RSS: start {rss[0]:.1f} MB, max {max(rss):.1f} MB, end {rss[-1]:.1f} MB "
            f"(queue_size {args.soak_queue}).",
            f"Records sent after the restart: {s['sent_after_restart']:.0f}.",
            "Final stream counters: "
            + ", ".join(f"{k} = {v:.0f}" for k, v in s["final"].items() if "_created" not in k)
            + ".",
            "",
            f"Readiness probe during the soak: max {max(x[4] for x in s['samples']):.1f} ms; "
            "`stream` is the record stream's state in `/v2/health/ready` (degraded after "
            "`serving.stream_stall_seconds`, default 30 s, without a delivery while records wait; "
            "readiness stays 200 and predictions are unaffected).",
            "",
            "RSS, records sent and stream state over time (every ~10 s):",
            "",
            "| t (s) | RSS (MB) | records sent | stream |",
            "| --- | --- | --- | --- |",
        ]
        step = max(1, len(s["samples"]) // 20)
        for t, mb, sent, state, _ in s["samples"][::step]:
            lines.append(f"| {t:.0f} | {mb:.1f} | {sent:.0f} | {state} |")
    return "\n".join(lines) + "\n"


def _render_compare(results: list[dict[str, Any]], args: Any) -> list[str]:
    lines = [
        "## Binary OIP at batch 1 against raw `session.run`",
        "",
        "| model | raw `session.run` p50 | HTTP p50, stream on | overhead p50 (target ≤ 0.35 ms) "
        "| HTTP p50, stream off | p99 on / off (c=1) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        over = r["on_p50"] - r["raw"]["p50"]
        lines.append(
            f"| {r['name']} | {r['raw']['p50']:.3f} ms | {r['on_p50']:.3f} ms | **{over:.3f} ms** "
            f"| {r['off_p50']:.3f} ms | {r['on_p99']:.3f} / {r['off_p99']:.3f} ms |"
        )
    lines += [
        "",
        "## OIP over gRPC beside binary REST (batch 1, one connection, stream on)",
        "",
        "The same sidecar serves both (`serving.grpc_port`); both are driven from a Python client "
        "in the benchmark process (grpcio's blocking stub with raw input contents, and "
        "`http.client` keep-alive with the binary extension), alternating rounds, so the two rows "
        "pay the same kind of client cost; `wrk`'s REST p50 above is the C-client figure. CPU = "
        "the sidecar process (all threads and the producer child) per request.",
        "",
        "| model | raw `session.run` p50 | REST binary p50 | gRPC p50 | gRPC overhead over "
        "`session.run` p50 | gRPC / REST p50 | p99 REST / gRPC | sidecar CPU per request "
        "REST / gRPC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['raw']['p50']:.3f} ms | {r['py_rest_p50']:.3f} ms | "
            f"{r['py_grpc_p50']:.3f} ms | **{r['py_grpc_p50'] - r['raw']['p50']:.3f} ms** | "
            f"{r['py_grpc_p50'] / r['py_rest_p50']:.2f} | {r['py_rest_p99']:.3f} / "
            f"{r['py_grpc_p99']:.3f} ms | {r['py_rest_cpu']:.0f} / {r['py_grpc_cpu']:.0f} µs |"
        )
    lines += [
        "",
        f"## Stream on vs off (binary, {args.connections} connections) and JSON",
        "",
        "Target: on/off throughput ≥ 0.95 and p99 on/off ≤ 1.05 at 1 and at "
        f"{args.connections} connections. c=1 figures are the latency runs.",
        "",
        "| model | c=1 on/off throughput | c=1 p99 on/off | throughput on | throughput off | "
        "on/off | p99 on | p99 off | p99 on/off | JSON throughput (stream on) | JSON/binary | "
        "JSON p50 (c=1) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['on_rps1'] / r['off_rps1']:.3f} | "
            f"{r['on_p99'] / r['off_p99']:.3f} | {r['on_tp']:.0f}/s | {r['off_tp']:.0f}/s | "
            f"{r['on_tp'] / r['off_tp']:.3f} | {r['on_tp_p99']:.3f} ms | {r['off_tp_p99']:.3f} ms "
            f"| {r['on_tp_p99'] / r['off_tp_p99']:.3f} | {r['json_tp']:.0f}/s | "
            f"{r['json_tp'] / r['on_tp']:.2f} | {r['json_p50']:.3f} ms |"
        )
    lines += [
        "",
        "## Where the CPU goes (µs of CPU per request during the throughput runs, medians)",
        "",
        "Measured from `/proc` per thread and process, so it holds even when other work on the "
        "machine makes throughput noisy. *record thread* = the sidecar's record-building thread "
        f"(plus onnxruntime/uvicorn helpers); *producer* = the {args.kafka_client} child process; "
        "*broker* = Tansu (off: idle).",
        "",
        "| model | stream | event loop | record thread | producer process | broker | total |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for tag in ("on", "off", "gz"):
            if not r["runs"][f"{tag}_tp"]:
                continue
            vals = [
                statistics.median(x[f"cpu_{k}"] for x in r["runs"][f"{tag}_tp"])
                for k in ("main", "threads", "producer", "broker")
            ]
            label = {"on": f"on ({args.compression})", "gz": "on (gzip)"}.get(tag, tag)
            lines.append(
                f"| {r['name']} | {label} | "
                + " | ".join(f"{v:.0f}" for v in vals)
                + f" | {sum(vals):.0f} |"
            )
    lines += ["", "### Reading the numbers", ""]
    for r in results:
        cpu = {
            tag: {
                k: statistics.median(x[f"cpu_{k}"] for x in r["runs"][f"{tag}_tp"])
                for k in ("main", "threads", "producer", "broker")
            }
            for tag in ("on", "off")
        }
        extra = sum(cpu["on"].values()) - sum(cpu["off"].values())
        base = sum(cpu["off"].values())
        lines.append(
            f"- {r['name']}: the record stream costs {extra:.0f} µs of CPU per request "
            f"({100 * extra / base:.0f} % of the {base:.0f} µs a request costs without it): "
            f"event loop {cpu['on']['main'] - cpu['off']['main']:+.0f}, record thread "
            f"{cpu['on']['threads'] - cpu['off']['threads']:+.0f}, {args.kafka_client} process "
            f"{cpu['on']['producer']:.0f}, broker {cpu['on']['broker']:.0f}. When the machine is "
            "CPU-bound, throughput with the stream on can be at best that fraction lower; "
            f"at batch 1 and one connection the p50 moves by "
            f"{1000 * (r['on_p50'] - r['off_p50']):+.0f} µs."
        )
    lines += [
        "- Wall-clock throughput and p99 on this shared 2-core machine vary by tens of percent "
        "between identical rounds (see the per-round numbers): other jobs, wrk, the broker and "
        "the producer process all share the same two cores. The CPU table is the stable measure.",
        "- The producer child runs confluent-kafka (librdkafka) when it is installed "
        "(`serving.kafka_client: auto`), else kafka-python. kafka-python is pure Python "
        "(~13 µs/record in a tight loop, 22-24 µs per request at these rates); librdkafka "
        "costs 8-10 µs per request with gzip, about half of it compressing (4 µs with lz4, "
        "which the monitor's kafka-python consumer can only read with the `lz4` package). "
        "`--kafka-client kafka-python` measures the other client. What is left is in the "
        "serving process: the record thread and the event loop's enqueue.",
        "",
        "Per-round numbers (binary, stream on / off):",
        "",
    ]
    for r in results:
        for key in ("on_lat", "off_lat", "on_tp", "off_tp", "gz_tp", "json_tp", "py_rest",
                    "py_grpc"):
            cells = ", ".join(
                f"p50 {x['p50']:.3f} p99 {x['p99']:.3f} ms {x['rps']:.0f}/s" for x in r["runs"][key]
            )
            lines.append(f"- {r['name']} {key}: {cells}")
        sent = sum(v for k, v in r["stream"].items() if "records_sent_total" in k)
        dropped = {
            k.split('reason="')[1].rstrip('"}'): v
            for k, v in r["stream"].items()
            if "records_dropped_total" in k and v
        }
        lines.append(
            f"- {r['name']}: records sent to Kafka {sent:.0f}, dropped {dropped or 0}; "
            f"non-2xx responses {r['non2xx']:.0f}"
        )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=4, help="wrk connections for throughput")
    p.add_argument("--soak-seconds", type=int, default=600)
    p.add_argument("--soak-down-seconds", type=int, default=60)
    p.add_argument("--soak-rate", type=int, default=400, help="requests per second in the soak")
    p.add_argument("--soak-queue", type=int, default=10000)
    p.add_argument("--skip-soak", action="store_true")
    p.add_argument("--soak-only", action="store_true", help="skip the latency/throughput runs")
    p.add_argument("--models", default="digits,cnn100k", help="comma-separated subset")
    p.add_argument("--compression", default="lz4", help="kafka.compression of the stream")
    p.add_argument("--no-gzip-row", dest="gzip_row", action="store_false",
                   help="skip the third sidecar (stream on with gzip, for its CPU per request)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--kafka-client",
        choices=kafka_clients.CLIENTS,
        default="auto",
        help="the sidecar's producer client (serving.kafka_client)",
    )
    args = p.parse_args()
    args.kafka_client = kafka_clients.resolve(args.kafka_client)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="repwatch-bench-serving-"))
    cnn = workdir / "cnn100k.onnx"
    params = build_cnn(cnn)
    models = [
        ("cnn100k", cnn, np.random.default_rng(1).normal(size=(1, 1, 28, 28)).astype(np.float32))
    ]
    if DIGITS.is_file():
        from sklearn.datasets import load_digits

        models.insert(0, ("digits", DIGITS, load_digits().data[:1].astype(np.float32)))
    else:
        print(f"warning: {DIGITS} missing; digits model skipped", file=sys.stderr)
    models = [m for m in models if m[0] in args.models.split(",") and not args.soak_only]
    broker = localstack.start_tansu()
    results = []
    try:
        for name, path, x in models:
            print(f"== {name}", flush=True)
            res = compare(name, path, x, broker, args, workdir)
            if name == "cnn100k":
                res["params"] = params
            results.append(res)
            print(
                json.dumps(
                    {k: v for k, v in res.items() if k not in ("runs", "stream")}, default=str
                ),
                flush=True,
            )
    finally:
        broker.stop()
    soak_res = None
    if not args.skip_soak and DIGITS.is_file():
        print(f"== soak {args.soak_seconds} s", flush=True)
        from sklearn.datasets import load_digits

        soak_res = soak(DIGITS, load_digits().data[:1].astype(np.float32), args, workdir)
    text = render(results, soak_res, args, load)
    if soak_res is not None:
        text += (
            "\n<details><summary>hey output</summary>\n\n```\n"
            + soak_res["hey"]
            + "```\n</details>\n"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
