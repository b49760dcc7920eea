"""``repwatch dashboards build|push``: generate the Grafana dashboards, upload them.

``build`` writes the JSON (``dashboards/generated/`` in a checkout) with grafana-foundation-sdk;
``push`` uploads the dashboards to a Grafana server over its HTTP API with grafana-client, into
a folder (created when missing), overwriting earlier versions of the same uid. Both need the
``ops`` extra. The API token comes from the environment or a file, never the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_FOLDER = "repwatch"
FOLDER_UID = "repwatch"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboards", help="build the Grafana dashboards or push them to Grafana",
        description="The Grafana dashboards (overview, per model) generated from the metric "
        "catalogue with grafana-foundation-sdk; needs the ops extra.")
    cmds = p.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)
    b = cmds.add_parser("build", help="write the dashboard JSON files",
                        description="Write every dashboard as <uid>.json.")
    b.add_argument("--out", type=Path, default=None,
                   help="directory to write into (default: dashboards/generated/ of the checkout)")
    b.set_defaults(func=run_build)
    u = cmds.add_parser(
        "push", help="upload the dashboards to Grafana (HTTP API)",
        description="Upload the dashboards into a Grafana folder (created when missing), "
        "overwriting earlier versions with the same uid. The token is read from the "
        "environment or a file, never from the command line.")
    u.add_argument("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000")
    u.add_argument("--token-env", default="GRAFANA_TOKEN",
                   help="environment variable holding a service-account token")
    u.add_argument("--token-file", type=Path, default=None,
                   help="file holding the token (default: none, the token comes from "
                   "--token-env)")
    u.add_argument("--folder", default=DEFAULT_FOLDER, help="folder title to put them in")
    u.add_argument("--from-dir", type=Path, default=None,
                   help="push these JSON files instead (default: generate the dashboards)")
    u.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    u.set_defaults(func=run_push)


OPS_EXTRA = "install the ops extra: pip install 'repwatch[ops]'"


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise SystemExit(f"repwatch dashboards needs {module}; {OPS_EXTRA}") from None


def _generated() -> list[dict[str, Any]]:
    from monitor import dashboards

    _need("grafana_foundation_sdk")
    return [dashboards.render(b) for b in dashboards.boards()]


def run_build(args: argparse.Namespace) -> int:
    from monitor import dashboards

    _need("grafana_foundation_sdk")
    for path in dashboards.write(args.out or dashboards.GENERATED):
        print(path)
    return 0


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            return args.token_file.read_text().strip()
        except OSError as exc:
            raise SystemExit(f"cannot read the Grafana token file {args.token_file}: {exc}") \
                from None
    return os.environ.get(args.token_env) or None


def _load(directory: Path) -> list[dict[str, Any]]:
    files = sorted(directory.glob("*.json"))
    if not files:
        raise SystemExit(f"no dashboard JSON files in {directory}")
    docs = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{f} is not a dashboard JSON file: {exc}") from None
        if not isinstance(doc, dict) or "uid" not in doc or "panels" not in doc:
            raise SystemExit(f"{f} is not a dashboard (needs 'uid' and 'panels')")
        docs.append(doc)
    return docs


def push(url: str, token: str | None, docs: list[dict[str, Any]], folder: str = DEFAULT_FOLDER,
         timeout: float = 10.0) -> list[str]:
    """Upload ``docs`` into ``folder`` (created when missing); returns the dashboard URLs."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    folders = api.folder.get_all_folders()
    match = [f for f in folders if f.get("title") == folder]
    if match:
        folder_uid = match[0]["uid"]
    else:
        try:
            folder_uid = api.folder.create_folder(folder, uid=FOLDER_UID)["uid"]
        except GrafanaClientError as exc:
            if exc.status_code != 409:  # 409: the uid exists under another title
                raise
            folder_uid = FOLDER_UID
    out = []
    for doc in docs:
        body = {"dashboard": {**doc, "id": None}, "folderUid": folder_uid, "overwrite": True,
                "message": "repwatch dashboards push"}
        answer = api.dashboard.update_dashboard(body)
        out.append(str(answer.get("url", doc["uid"])))
    return out


def run_push(args: argparse.Namespace) -> int:
    _need("grafana_client")
    from grafana_client.client import GrafanaException

    docs = _load(args.from_dir) if args.from_dir else _generated()
    token = _token(args)
    try:
        urls = push(args.url, token, docs, args.folder, args.timeout)
    except GrafanaException as exc:
        hint = " (check the token: --token-env/--token-file)" if exc.status_code in (401, 403) \
            else ""
        print(f"Grafana at {args.url} refused the upload: {exc}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach Grafana at {args.url}: {exc}", file=sys.stderr)
        return 1
    for u in urls:
        print(f"pushed {u}")
    return 0
