"""``repwatch monitor`` (run a worker) and ``repwatch reference fit|replace``.

Heavy imports (numpy detectors, kafka-python, prometheus-client) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("repwatch.monitor")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "monitor",
        help="run a monitor worker (Kafka consumer group member)",
        description="Run a monitor worker: consume the records topic in the consumer group, run "
        "each model's detectors, checkpoint, commit, and send alerts (Kafka topic, webhooks). "
        "Serves /metrics and, when monitor.admin_port is set, the admin API. Stops cleanly on "
        "SIGTERM or SIGINT.",
    )
    p.add_argument("--config", required=True, help="YAML configuration file")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop (checkpoint, commit, leave the group) after this long "
                   "(default: run until SIGTERM or SIGINT)")
    p.set_defaults(func=_monitor)

    r = sub.add_parser(
        "reference",
        help="build or replace model references",
        description="Build a model's reference (what its detectors compare against) or swap it "
        "in a running worker.",
    )
    rsub = r.add_subparsers(dest="reference_command", metavar="ACTION", required=True)
    fit = rsub.add_parser(
        "fit",
        help="fit a model's detectors and save a reference directory",
        description="Fit a model's configured detectors on embeddings from an array file or a "
        "time/offset range of the records topic, and save the reference directory.",
    )
    fit.add_argument("--config", required=True, help="YAML configuration file")
    fit.add_argument("--model", required=True, help="configured model name")
    fit.add_argument("--out", required=True, help="reference directory to write")
    src = fit.add_mutually_exclusive_group(required=True)
    src.add_argument("--array", help="embeddings file (.npy, or .npz with array 'X')")
    src.add_argument("--from-topic", action="store_true",
                     help="read the model's records from the records topic")
    fit.add_argument("--start", help="from-topic: ISO time or epoch ms of the first record "
                     "(default: the earliest retained)")
    fit.add_argument("--end", help="from-topic: ISO time or epoch ms after the last record "
                     "(default: the end of the topic now)")
    fit.add_argument("--start-offset", type=int, help="from-topic: first offset per partition "
                     "(default: the earliest retained)")
    fit.add_argument("--end-offset", type=int, help="from-topic: end offset per partition "
                     "(default: the end of the topic now)")
    fit.add_argument("--model-version", help="from-topic: only records of this model version "
                     "(default: every version)")
    fit.add_argument("--max-records", type=int, default=200_000,
                     help="from-topic: use at most this many of the model's records")
    fit.set_defaults(func=_fit)

    rep = rsub.add_parser(
        "replace",
        help="swap the reference of a running worker (admin API)",
        description="Ask a running worker, through its admin API (bearer token), to load a new "
        "reference for a model; the worker logs the replacement and keeps it across restarts.",
    )
    rep.add_argument("--url", required=True, help="admin API base URL, e.g. http://127.0.0.1:9109")
    rep.add_argument("--model", required=True, help="configured model name")
    rep.add_argument("--path", required=True, help="reference path as seen by the worker")
    rep.add_argument("--token-env", default="REPWATCH_ADMIN_TOKEN",
                     help="environment variable holding the admin token")
    rep.set_defaults(func=_replace)


def _load(path: str) -> Any:
    from monitor.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _monitor(args: argparse.Namespace) -> int:
    from monitor.admin import AdminServer
    from monitor.config import ConfigPathError, read_secret, secret_problems
    from monitor.metrics import serve_metrics
    from monitor.runtime import Worker

    config = _load(args.config)
    if config is None:
        return 2
    problems = secret_problems(config)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    try:
        worker = Worker(config)
    except ConfigPathError as exc:
        print(f"error: {exc.path}: {exc.problem}", file=sys.stderr)
        return 2
    mc = config.monitor
    server = serve_metrics(worker.registry, mc.metrics_host, mc.metrics_port)
    log.info("metrics on http://%s:%d/metrics", mc.metrics_host, server.port)
    admin = None
    if mc.admin_port is not None:
        token = read_secret(mc.admin_token)
        if not token:
            print("error: monitor.admin_port needs monitor.admin_token (env or file)",
                  file=sys.stderr)
            return 2
        admin = AdminServer(worker, token, mc.admin_host, mc.admin_port)
        log.info("admin API on http://%s:%d", mc.admin_host, admin.port)
    try:
        worker.run(max_seconds=args.max_seconds)
    finally:
        if admin is not None:
            admin.close()
        server.close()
    log.info("stopped after %d records", worker.processed)
    return 0


def _epoch_ms(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


def _fit(args: argparse.Namespace) -> int:
    try:
        return _fit_reference(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _fit_reference(args: argparse.Namespace) -> int:
    import numpy as np

    from monitor.reference import fit_reference, read_inputs, save_reference

    config = _load(args.config)
    if config is None:
        return 2
    try:
        mcfg = config.model(args.model)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    inputs: dict[str, Any] = {}
    if args.array:
        inputs = read_inputs(Path(args.array))
        X = inputs["embedding"]
        source = f"array:{args.array}"
    else:
        from monitor import records as R
        from monitor.kafka_io import read_range

        values = read_range(
            config.kafka, config.topics.records, start_ms=_epoch_ms(args.start),
            end_ms=_epoch_ms(args.end), start_offset=args.start_offset,
            end_offset=args.end_offset, max_messages=10 * args.max_records,
        )
        batch = R.decode_many(values)
        recs = [
            r for r in batch.records
            if r.model == args.model and r.kind in ("inference", "reference")
            and (args.model_version is None or r.model_version == args.model_version)
        ][: args.max_records]
        if not recs:
            print(f"error: no records of model {args.model!r} in that range of "
                  f"{config.topics.records}", file=sys.stderr)
            return 1
        X = R.stack_embeddings(recs).astype(np.float64)
        if recs and all(r.scores is not None for r in recs) and len(
                {r.scores.shape for r in recs if r.scores is not None}) == 1:
            inputs["logits"] = np.stack([r.scores for r in recs if r.scores is not None])
        source = (f"topic:{config.topics.records} start={args.start or args.start_offset} "
                  f"end={args.end or args.end_offset} records={len(recs)}")
    try:
        ref = fit_reference(mcfg, X, source, inputs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = save_reference(ref, Path(args.out))
    print(json.dumps({"model": args.model, "reference": str(out), "rows": ref.rows,
                      "dim": ref.dim, "detectors": list(ref.detectors)}))
    return 0


def _replace(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env)
    if not token:
        print(f"error: set the admin token in ${args.token_env}", file=sys.stderr)
        return 2
    req = urllib.request.Request(
        f"{args.url.rstrip('/')}/v1/models/{args.model}/reference",
        data=json.dumps({"path": args.path}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=180) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"error: HTTP {exc.code}: {exc.read().decode()}", file=sys.stderr)
        return 1
