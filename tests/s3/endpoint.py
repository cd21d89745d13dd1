"""A real S3 HTTP endpoint on 127.0.0.1 for tests and benchmarks: moto's server app behind a fault layer.

    python -m tests.s3.endpoint --port-file /tmp/port [--latency 0.01] [--server werkzeug|cheroot]

runs moto's S3 (and STS) WSGI application in its own process, on 127.0.0.1 only, wrapped in
`FaultLayer`, which a test steers over HTTP (`/_faults/...`, never forwarded to moto):

* `POST /_faults/config` with JSON `{"latency": s, "slowdown": n, "cut": {path: nbytes}, "flip": {path: [byte,
  times]}, "reject_keys": [access key id]}`: add `latency` seconds to every request; answer the next `n` S3
  requests `503 SlowDown`; for GETs of `path` (`/bucket/key`) without a Range header send `nbytes` of the
  body and then shut the TCP connection (once); flip the low bit of `byte` in the next `times` GET bodies of
  `path`; answer `403 InvalidAccessKeyId` to any request signed with a listed key id;
* `GET /_faults/requests`: every S3 request seen since the last reset, `[method, path, range]`;
* `POST /_faults/reset`: no faults, no requests.

The HTTP server is werkzeug's (moto's own, the default: the tests' `cut` fault shuts its socket) or,
with `--server cheroot`, CherryPy's cheroot, which keeps connections alive as real S3 does (werkzeug's
development server closes every connection after one answer, which caps moto near 250 small requests
per second on 2 cores; cheroot ~360): the small-object benchmark uses it, so that the store is not what it
measures (cheroot sends a 1 GiB body at ~15 MB/s: the large one stays on werkzeug).
A `cut` fault needs werkzeug and is refused otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def _xml_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>reversib-fault</RequestId></Error>").encode()


class FaultLayer:
    def __init__(self, app: WSGIApp, can_cut: bool = True) -> None:
        self.app = app
        self.can_cut = can_cut
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.latency = 0.0
            self.slowdown = 0
            self.cut: dict[str, int] = {}
            self.flip: dict[str, list[int]] = {}
            self.reject_keys: set[str] = set()
            self.requests: list[list[str | None]] = []

    def configure(self, conf: dict[str, Any]) -> None:
        if conf.get("cut") and not self.can_cut:
            raise ValueError("the cut fault needs the werkzeug server (--server werkzeug)")
        with self.lock:
            self.latency = float(conf.get("latency", self.latency))
            self.slowdown = int(conf.get("slowdown", self.slowdown))
            self.cut.update({k: int(v) for k, v in conf.get("cut", {}).items()})
            self.flip.update({k: [int(v[0]), int(v[1])] for k, v in conf.get("flip", {}).items()})
            self.reject_keys.update(conf.get("reject_keys", []))

    # -- WSGI ---------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_faults/"):
            return self._control(environ, start_response, path)
        method = environ["REQUEST_METHOD"]
        rng = environ.get("HTTP_RANGE")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        with self.lock:
            latency = self.latency
            self.requests.append([method, path, rng])
            match = _CREDENTIAL.search(auth)
            if match and match.group(1) in self.reject_keys:
                return self._error(start_response, "403 Forbidden", "InvalidAccessKeyId",
                                   "The AWS Access Key Id you provided does not exist in our records.")
            if self.slowdown > 0:
                self.slowdown -= 1
                return self._error(start_response, "503 Slow Down", "SlowDown", "Please reduce your request rate.")
            cut = self.cut.pop(path, None) if method == "GET" and rng is None else None
            flip: int | None = None
            if method == "GET" and path in self.flip:
                flip, times = self.flip[path]
                if times <= 1:
                    del self.flip[path]
                else:
                    self.flip[path][1] = times - 1
        if latency:
            time.sleep(latency)
        if cut is None and flip is None:
            return self.app(environ, start_response)
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured[:] = [status, headers]
            return lambda data: None

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = captured
        if flip is not None and flip < len(body):
            body = body[:flip] + bytes([body[flip] ^ 0x01]) + body[flip + 1:]
        start_response(status, headers)
        if cut is None or not status.startswith("200"):
            return [body]
        return self._cut(environ, body[:cut])

    @staticmethod
    def _cut(environ: dict[str, Any], head: bytes) -> Iterator[bytes]:
        yield head
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _error(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
        body = _xml_error(code, message)
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def _control(self, environ: dict[str, Any], start_response: StartResponse, path: str) -> list[bytes]:
        answer: Any = {"ok": True}
        if path == "/_faults/config":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            self.configure(json.loads(environ["wsgi.input"].read(size) or b"{}"))
        elif path == "/_faults/reset":
            self.reset()
        elif path == "/_faults/requests":
            with self.lock:
                answer = list(self.requests)
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"unknown fault control path"]
        data = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]


def _write_port(port_file: str, port: int) -> None:
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, port_file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True, help="the chosen port is written here once listening")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every S3 request")
    p.add_argument("--server", choices=("werkzeug", "cheroot"), default="werkzeug",
                   help="HTTP server: werkzeug (moto's; closes each connection) or cheroot (keep-alive)")
    args = p.parse_args(argv)
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = DomainDispatcherApplication(create_backend_app)
    if args.server == "cheroot":
        from cheroot import wsgi

        layer = FaultLayer(app, can_cut=False)
        layer.latency = args.latency
        httpd = wsgi.Server(("127.0.0.1", args.port), layer, numthreads=64, request_queue_size=256)
        httpd.prepare()
        _write_port(args.port_file, int(httpd.bind_addr[1]))
        try:
            httpd.serve()
        except KeyboardInterrupt:
            httpd.stop()
        return 0
    layer = FaultLayer(app)
    layer.latency = args.latency
    server = make_server("127.0.0.1", args.port, layer, threaded=True, request_handler=MotoRequestHandler)
    server.daemon_threads = True
    _write_port(args.port_file, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
