"""The worker's admin HTTP API: replace a model's reference at run time, authenticated, logged.

``POST /v1/models/<model>/reference`` with ``Authorization: Bearer <token>`` and a JSON body
``{"path": "<reference directory or array file on the worker>"}``. The reference is loaded and
swapped on the worker's loop thread (between batches), persisted in the checkpoint directory so a
restart keeps it, logged at WARNING and counted in ``repwatch_reference_replacements_total``.
Every refused call (missing/wrong token) is logged too. ``GET /v1/status`` needs the token as well.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.runtime import Worker

log = logging.getLogger(__name__)
_REF = re.compile(r"^/v1/models/([A-Za-z0-9_.\-]+)/reference$")


class AdminServer:
    def __init__(self, worker: Worker, token: bytes, host: str = "127.0.0.1", port: int = 0,
                 timeout_s: float = 120.0) -> None:
        if not token:
            raise ValueError("the admin API needs a non-empty token (monitor.admin_token)")
        self.worker, self.token, self.timeout_s = worker, token, timeout_s
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                got = self.headers.get("Authorization", "")
                ok = got.startswith("Bearer ") and hmac.compare_digest(
                    got[len("Bearer "):].encode(), admin.token
                )
                if not ok:
                    log.warning("admin call %s %s from %s refused: bad or missing bearer token",
                                self.command, self.path, self.client_address[0])
                    self._reply(401, {"error": "missing or wrong bearer token"})
                return ok

            def do_GET(self) -> None:
                if self.path != "/v1/status":
                    return self._reply(404, {"error": "not found"})
                if self._authorized():
                    w = admin.worker
                    self._reply(200, {
                        "processed": w.processed,
                        "partitions": sorted(f"{t}/{p}" for t, p in w.state),
                        "references": {m: r.source for m, r in w.references.items()},
                    })

            def do_POST(self) -> None:
                m = _REF.match(self.path)
                if m is None:
                    return self._reply(404, {"error": "not found"})
                if not self._authorized():
                    return None
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                    path = str(body["path"])
                except (ValueError, KeyError, TypeError):
                    return self._reply(400, {"error": 'body must be JSON {"path": "..."}'})
                actor = self.client_address[0]
                fut = admin.worker.submit(
                    lambda: admin.worker.replace_reference(m.group(1), path, actor)
                )
                try:
                    result = fut.result(admin.timeout_s)
                except KeyError as exc:
                    return self._reply(404, {"error": str(exc.args[0])})
                except (OSError, ValueError) as exc:
                    log.warning("admin reference replacement for %r failed: %s", m.group(1), exc)
                    return self._reply(400, {"error": str(exc)})
                except TimeoutError:
                    return self._reply(503, {"error": "the worker did not apply it in time"})
                except Exception as exc:  # a broken artifact must not kill the admin thread
                    log.exception("admin reference replacement for %r failed", m.group(1))
                    return self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})
                self._reply(200, result)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="repwatch-admin")
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
