"""``repwatch config check FILE``: print the effective configuration or the exact error."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="inspect configuration files",
        description="Inspect repwatch configuration files (one YAML file, REPWATCH_* overrides).",
    )
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser(
        "check",
        help="validate FILE (plus REPWATCH_* overrides) and print the effective config",
        description="Validate FILE with the REPWATCH_* environment overrides applied; print the "
        "effective configuration as YAML (secrets as references), or the exact error with exit "
        "status 2. Secrets ({env}/{file}) are resolved (a missing one names its field) and "
        "every detector is checked against the input it is fed.",
    )
    check.add_argument("file", help="YAML configuration file")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from monitor.config import ConfigError, dump_config, load_config, secret_problems
    from monitor.pipeline import check_inputs

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = secret_problems(config) + check_inputs(config)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    sys.stdout.write(dump_config(config))
    return 0
