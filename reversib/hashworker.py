"""Hashing in a helper process, for many small local files.

On two cores, threads cannot speed up thousands of tiny reads (each one is mostly interpreter work,
and GIL hand-offs cost more than they save), so the verifier hands batches of small files to one
helper process while it hashes others itself.  The helper is `python -m reversib.hashworker`: it
stays light (no pydantic, no SQLAlchemy) and talks JSON lines over its stdin/stdout, so it never
depends on how the parent was started (multiprocessing's spawn would re-import the parent's
`__main__`).  It exits when its stdin closes, so it cannot outlive the run.

Request:  {"root": "/export", "items": [["path", ["sha256"]], ...]}
Response: {"results": [["path", {"sha256": "..."} | null, bytes_read, "error" | null], ...]}
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

BatchItem = tuple[str, tuple[str, ...]]
BatchResult = tuple[str, dict[str, str] | None, int, str | None]


def hash_batch(root: str, items: list[Any], sources: dict[str, Any]) -> list[BatchResult]:
    """Hash each (path, algorithms) below `root`: (path, digests or None, bytes read, error or None)."""
    from reversib.digests import CHUNK, hash_stream
    from reversib.sources.local import LocalSource

    source = sources.get(root)
    if source is None:
        source = sources[root] = LocalSource(root)
    buf = bytearray(CHUNK)
    out: list[BatchResult] = []
    for path, algorithms in items:
        try:
            with source.open_range(path) as stream:
                got, nbytes = hash_stream(stream, list(algorithms), buf)
        except OSError as exc:
            out.append((path, None, 0, exc.strerror or str(exc)))
            continue
        out.append((path, got, nbytes, None))
    return out


def serve() -> None:
    sources: dict[str, Any] = {}
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        results = hash_batch(request["root"], request["items"], sources)
        out.write(json.dumps({"results": results}) + "\n")
        out.flush()


class HelperProcess:
    """The parent's handle: `submit(root, items)` returns a Future of the batch's results."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "reversib.hashworker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="surrogatepass",
                                      bufsize=1)
        self._waiting: deque[Future[list[BatchResult]]] = deque()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="reversib-hashworker", daemon=True)
        self._reader.start()

    def submit(self, root: str, items: list[BatchItem]) -> Future[list[BatchResult]]:
        future: Future[list[BatchResult]] = Future()
        with self._lock:
            self._waiting.append(future)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"root": root, "items": items}) + "\n")
        self._proc.stdin.flush()
        return future

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._lock:
                future = self._waiting.popleft()
            future.set_result([tuple(r) for r in json.loads(line)["results"]])  # type: ignore[misc]
        with self._lock:
            while self._waiting:
                self._waiting.popleft().set_exception(RuntimeError(
                    f"the hashing helper process ended unexpectedly (exit code {self._proc.poll()})"))

    def close(self, kill: bool = False) -> None:
        if kill:
            self._proc.kill()
        elif self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        self._proc.wait(timeout=30)
        self._reader.join(timeout=5)


if __name__ == "__main__":
    serve()
