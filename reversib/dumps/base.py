"""Shared pieces of the dump checks: errors that become findings, and running a client tool.

A client tool runs as a subprocess in its own session, with the connection in its environment
(never a password in argv), fed from a source stream by a thread, watched by the main thread for
the run's `CancelToken` and a wall-clock limit: on either, the whole process group is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from reversib.model import Finding, FindingKind
from reversib.sources.base import Cancelled, CancelToken

STDERR_KEEP = 64 * 1024


class DumpProblem(Exception):
    """A problem with one dump that becomes one finding of `kind`."""

    def __init__(self, kind: FindingKind, expected: str, actual: str, detail: str | None = None):
        super().__init__(actual)
        self.kind = kind
        self.expected = expected
        self.actual = actual
        self.detail = detail

    def finding(self, path: str) -> Finding:
        return Finding(self.kind, path, expected=self.expected, actual=self.actual, detail=self.detail)


def unverifiable(message: str, expected: str = "a dump that can be checked") -> DumpProblem:
    return DumpProblem(FindingKind.DUMP_UNVERIFIABLE, expected, message)


@dataclass
class ToolResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    def error_lines(self, n: int = 5) -> str:
        lines = [ln for ln in self.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        return " | ".join(lines[:n]) or f"exit status {self.returncode}"


@dataclass
class Structure:
    """What the structural level learnt about a dump."""

    format: str
    tables: set[str] = field(default_factory=set)  # "schema.table" (PostgreSQL) or "table"
    data_sections: int = 0
    decoded_bytes: int = 0
    notes: list[Finding] = field(default_factory=list)


def missing_tables(tables: set[str], wanted: list[str]) -> list[str]:
    """The `wanted` tables absent from `tables` ("schema.table" or "table"; a bare name matches any schema)."""
    def has(w: str) -> bool:
        if w in tables:
            return True
        return "." not in w and any(t.rsplit(".", 1)[-1] == w for t in tables)

    return [w for w in wanted if not has(w)]


# Debian and Ubuntu install psql, pg_restore... as links to postgresql-common's `pg_wrapper`
PG_VERSIONS_DIR = Path("/usr/lib/postgresql")


def find_tool(name: str, *alternatives: str) -> str:
    for n in (name, *alternatives):
        found = shutil.which(n)
        if found:
            return unwrapped(found, n)
    raise unverifiable(f"client tool {name!r} is not installed (needed to check this dump)",
                       f"the {name} client tool")


def unwrapped(path: str, name: str) -> str:
    """The program Debian's `pg_wrapper` would run for `path`, when that choice is certain.

    The wrapper is a Perl script that picks a PostgreSQL version and runs that version's program (about
    16 ms per start on the bench machine, and a dump check starts several tools).  With one version of
    the program installed under /usr/lib/postgresql, that version is the wrapper's only choice: it is
    run directly.  With several, the wrapper keeps choosing (its rules: cluster, newest version)."""
    try:
        if os.path.basename(os.path.realpath(path)) != "pg_wrapper":
            return path
        versions = [p for p in PG_VERSIONS_DIR.glob(f"*/bin/{name}") if os.access(p, os.X_OK)]
    except OSError:
        return path
    return str(versions[0]) if len(versions) == 1 else path


def run_tool(argv: list[str], *, env: dict[str, str], cancel: CancelToken, timeout: float | None = None,
             stdin: Iterable[bytes] | None = None, keep_stdout: bool = True) -> ToolResult:
    """Run `argv`, feeding `stdin` chunks; stop it (process group) on cancel or after `timeout` seconds."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except FileNotFoundError as exc:
        raise unverifiable(f"client tool {argv[0]!r} cannot be run: {exc.strerror}") from exc
    out: list[bytes] = []
    err = bytearray()
    feed_error: list[BaseException] = []

    def feed() -> None:
        assert proc.stdin is not None and stdin is not None
        try:
            for chunk in stdin:
                proc.stdin.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the tool stopped reading: its exit status says why
        except BaseException as exc:  # a source read error, a cancellation: reported after the tool ends
            feed_error.append(exc)
            with suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            with suppress(OSError):
                proc.stdin.close()

    def drain_out() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 16):
            out.append(chunk)

    def drain_err() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read(1 << 14):
            if len(err) < STDERR_KEEP:
                err.extend(chunk[: STDERR_KEEP - len(err)])

    threads = [threading.Thread(target=drain_err, daemon=True)]
    if keep_stdout:
        threads.append(threading.Thread(target=drain_out, daemon=True))
    if stdin is not None:
        threads.append(threading.Thread(target=feed, daemon=True))
    for t in threads:
        t.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    try:
        while proc.poll() is None:
            if cancel.cancelled:
                raise Cancelled(cancel.reason)
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            with suppress(subprocess.TimeoutExpired):
                proc.wait(0.05)
    except BaseException:
        with suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    for t in threads:
        t.join(10)
    if feed_error:
        raise feed_error[0]
    return ToolResult(proc.returncode, b"".join(out), bytes(err), timed_out)


@contextmanager
def private_dir() -> Iterator[Path]:
    """A private (0700) temporary folder, removed afterwards whatever happens."""
    d = Path(tempfile.mkdtemp(prefix="reversib-dump-"))
    try:
        os.chmod(d, 0o700)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a client tool: ours without any PG*/MYSQL* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MYSQL"))}
    env.update(extra)
    return env
