"""The ``repwatch`` command line.

Each sub-command lives next to the code it drives and exposes ``register(subparsers)``; heavy
imports (torch, FastAPI, Kafka) happen inside the handlers so ``repwatch --help`` stays fast and
works with only the core installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from monitor.cli_format import Parser
from monitor.version import version

# Modules that add sub-commands, in --help order.
COMMAND_MODULES = (
    "monitor.cli_config",
    "monitor.demo",
    "serving.cli",
    "monitor.cli_monitor",
    "serving.encoders.cli",
    "monitor.cli_dashboards",
    "monitor.cli_report",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="repwatch",
        description="Drift and security monitoring for ML models in SSL representation space.",
        epilog="Run 'repwatch COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the installed version and exit")
    parser.add_argument("--log-level", default="INFO",
                        help="logging level: DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command has not landed in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kafka-python logs every connection at INFO; keep its warnings and errors only.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
