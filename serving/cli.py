"""``repwatch serve --config FILE``: run the serving sidecar (uvicorn, one process)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the serving sidecar (Open Inference Protocol + record stream)",
        description="Run the serving sidecar: the configured ONNX models (or tap mode in front of "
        "an upstream OIP server) over the Open Inference Protocol v2, with every prediction's "
        "embedding streamed to the records topic off the request path; /v1/records, "
        "/v1/feedback and /metrics beside it.",
    )
    p.add_argument("--config", required=True, help="YAML configuration file")
    p.add_argument("--host", help="listen address (default: serving.host of the config)")
    p.add_argument("--port", type=int, help="HTTP port (default: serving.port of the config)")
    p.add_argument("--grpc-port", type=int,
                   help="OIP gRPC port (default: serving.grpc_port of the config; unset: no gRPC)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from monitor.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("grpc_port", args.grpc_port)) if v is not None}
    if overrides:  # into the config, so REST and gRPC listen on the same host
        config = config.model_copy(
            update={"serving": config.serving.model_copy(update=overrides)}
        )
    import uvicorn

    from serving.app import create_app

    try:
        app = create_app(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import gc

    # Everything loaded so far (onnxruntime, FastAPI, numpy) lives for the whole process: keep it
    # out of the garbage collector's scans, which request-path allocations trigger.
    gc.freeze()
    uvicorn.run(
        app,
        host=config.serving.host,
        port=config.serving.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(config.serving.flush_timeout_seconds) + 1,
    )
    return 0
