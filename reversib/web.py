"""The daemon's HTTP server (standard library only): metrics, health, a landing page, a small API.

    GET  /                               HTML: the checks with their last outcome
    GET  /metrics                        Prometheus text format, rendered from the history
    GET  /-/healthy                      200 while the process serves
    GET  /-/ready                        200 when the configuration is loaded and the history answers, else 503
    GET  /api/v1/checks                  JSON: every configured check with its last run
    GET  /api/v1/checks/<id>/runs        JSON: the newest runs of a check (?limit=N, at most 500)
    POST /api/v1/checks/<id>/verify      run a check now; only with `Authorization: Bearer <token>` when
                                         a token is configured (`daemon.api_token_env`/`_file`), else 404
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from reversib import __version__
from reversib.history import CheckSummary, HistoryError, iso, to_datetime
from reversib.metrics import HistoryCollector

if TYPE_CHECKING:
    from reversib.daemon import Daemon

log = logging.getLogger("reversib.http")
MAX_RUNS = 500


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: WebServer


class WebServer:
    def __init__(self, daemon: Daemon, collector: HistoryCollector, address: tuple[str, int]) -> None:
        self.daemon = daemon
        self.collector = collector
        try:
            self._server = _Server(address, _Handler)
        except OSError as exc:
            from reversib.daemon import DaemonError

            raise DaemonError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}") from None
        self._server.app = self
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="reversib-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------ views

    def summaries(self) -> tuple[list[dict[str, Any]], bool]:
        checks = self.daemon.scheduled_checks()
        try:
            found = self.daemon.history.check_summaries([c.check.check_id for c in checks])
            ok = True
        except HistoryError as exc:
            log.error("cannot read the history: %s", exc)
            found, ok = {}, False
        rows = []
        for sc in checks:
            cid = sc.check.check_id
            s = found.get(cid) or CheckSummary(cid)
            nxt = self.daemon.next_slot(cid)
            rows.append({
                "check": cid, "name": sc.check.name, "labels": sc.check.labels,
                "schedule": sc.check.schedule.model_dump(exclude_none=True) if sc.check.schedule else None,
                "next_run": iso(to_datetime(nxt)) if nxt is not None else None,
                "running": self.daemon.busy(cid) or s.running > 0,
                "last_run": s.latest.to_dict() if s.latest is not None else None,
                "last_success": iso(s.last_success_at),
                "runs": s.runs_total, "outcomes": s.outcomes, "skipped_slots": s.skipped,
            })
        return rows, ok

    def landing(self) -> str:
        rows, ok = self.summaries()
        esc = html.escape
        lines = []
        for r in rows:
            last = r["last_run"]
            outcome = "never run" if last is None else last["outcome"]
            when = "" if last is None else last["finished_at"] or ""
            lines.append(
                f"<tr><td><a href=\"api/v1/checks/{esc(r['check'])}/runs\">{esc(r['check'])}</a></td>"
                f"<td>{esc(r['name'])}</td><td class=\"{esc(outcome.replace(' ', '-'))}\">{esc(outcome)}</td>"
                f"<td>{esc(when)}</td><td>{esc(r['last_success'] or 'never')}</td>"
                f"<td>{esc(r['next_run'] or '')}</td></tr>")
        warning = "" if ok else "<p><strong>The history database does not answer.</strong></p>"
        return (
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>reversib</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{padding:.2em .8em;text-align:left}"
            ".passed{color:#070}.failed{color:#b00;font-weight:bold}.error{color:#a50}</style></head><body>"
            f"<h1>reversib {esc(__version__)}</h1>{warning}"
            "<table><tr><th>check</th><th>name</th><th>last outcome</th><th>finished</th><th>last success</th>"
            "<th>next run</th></tr>" + "".join(lines) + "</table>"
            "<p><a href=\"metrics\">metrics</a> · <a href=\"api/v1/checks\">API</a> · "
            "<a href=\"-/ready\">ready</a></p></body></html>\n")

    def authorized(self, header: str | None) -> bool | None:
        """None: no token configured (the endpoint does not exist); else whether the header carries it."""
        token = self.daemon.api_token
        if token is None:
            return None
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"reversib/{__version__}"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode(), "application/json",
                   headers)

    def _text(self, code: int, text: str) -> None:
        self._send(code, text.encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        path = url.path
        try:
            if path == "/metrics":
                self._send(200, app.collector.render(), CONTENT_TYPE_LATEST)
            elif path == "/-/healthy":
                self._text(200, "reversib is healthy.\n")
            elif path == "/-/ready":
                try:
                    app.daemon.history.ping()
                except HistoryError as exc:
                    self._text(503, f"not ready: {exc}\n")
                    return
                self._text(200, "reversib is ready.\n")
            elif path == "/":
                self._send(200, app.landing().encode(), "text/html; charset=utf-8")
            elif path == "/api/v1/checks":
                rows, ok = app.summaries()
                self._json(200 if ok else 503, {"schema": 1, "checks": rows})
            elif path.startswith("/api/v1/checks/") and path.endswith("/runs"):
                check_id = unquote(path[len("/api/v1/checks/"):-len("/runs")])
                if all(sc.check.check_id != check_id for sc in app.daemon.scheduled_checks()):
                    self._json(404, {"error": f"unknown check {check_id!r}"})
                    return
                try:
                    limit = min(MAX_RUNS, max(1, int(parse_qs(url.query).get("limit", ["50"])[0])))
                except ValueError:
                    self._json(400, {"error": "limit must be an integer"})
                    return
                runs = app.daemon.history.runs(check_id, limit=limit)
                self._json(200, {"schema": 1, "check": check_id, "runs": [r.to_dict() for r in runs]})
            else:
                self._json(404, {"error": "not found"})
        except HistoryError as exc:
            self._json(503, {"error": f"history database: {exc}"})

    def do_POST(self) -> None:
        app = self.server.app
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 16))
        if not (path.startswith("/api/v1/checks/") and path.endswith("/verify")):
            self._json(404, {"error": "not found"})
            return
        allowed = app.authorized(self.headers.get("Authorization"))
        if allowed is None:
            self._json(404, {"error": "not found (no API token is configured: daemon.api_token_env or _file)"})
            return
        if not allowed:
            self._json(401, {"error": "a valid 'Authorization: Bearer <token>' header is required"},
                       {"WWW-Authenticate": 'Bearer realm="reversib"'})
            return
        check_id = unquote(path[len("/api/v1/checks/"):-len("/verify")])
        answer = app.daemon.request_run(check_id)
        if answer.accepted:
            log.info("verify-now of check %s requested through the API", check_id,
                     extra={"event": "api_verify", "check": check_id})
            self._json(202, {"accepted": True, "check": check_id})
        elif answer.reason == "unknown check":
            self._json(404, {"error": f"unknown check {check_id!r}"})
        else:
            self._json(409, {"accepted": False, "error": answer.reason})
