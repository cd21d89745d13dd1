"""PostgreSQL dumps: structural level (custom archive walk + `pg_restore --list`; plain SQL scan)
and restore level (scratch database, `pg_restore --no-owner --no-privileges --exit-on-error` or
`psql -X -v ON_ERROR_STOP=1` on the filtered plain dump, then row counts and read-only assertions)."""

from __future__ import annotations

import io
import itertools
import os
import queue
import re
import secrets
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reversib.config import DumpConfig, DumpRestoreConfig
from reversib.dumps import pgdirectory, safety
from reversib.dumps.base import DumpProblem, Structure, find_tool, missing_tables, private_dir, run_tool, unverifiable
from reversib.dumps.detect import decoded
from reversib.dumps.expectations import (
    Checked,
    QueryError,
    check_expectations,
    restore_timed_out,
    restored,
    shown_rows,
)
from reversib.dumps.pgarchive import Archive, chunk_reader, read_archive
from reversib.dumps.scratch import (
    PgServer,
    PsqlError,
    Target,
    host_is_local,
    pg_drop,
    pg_ident,
    pg_preflight,
    pg_remove_dead,
    psql,
    scratch_name,
)
from reversib.model import Finding, FindingKind, Severity
from reversib.sources.base import CancelToken, Source

if TYPE_CHECKING:
    from reversib.history import History


def structural(source: Source, path: str, kind: str, compression: str, cancel: CancelToken,
               files: set[str]) -> Structure:
    """The structural level of a PostgreSQL dump (`files`: every file path of the export, for a
    directory dump's data files)."""
    if kind == "postgres-custom":
        return _custom(decoded(source, path, compression), cancel)
    if kind == "postgres-plain":
        return plain_structure(source, path, compression, "postgres", cancel)
    if kind == "postgres-tar":
        return _tar(source, path, compression, cancel)
    if kind == "postgres-directory":
        return pgdirectory.structural(source, path, files, cancel)
    raise unverifiable(f"the {kind} format is not supported", "a supported dump format")


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _tar(source: Source, path: str, compression: str, cancel: CancelToken) -> Structure:
    """A `pg_dump -Ft` archive: every member read to its end, toc.dat parsed, every data member present."""
    members: dict[str, int] = {}
    arch = None
    try:
        with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(decoded(source, path, compression))),
                          mode="r|") as tar:
            for member in tar:
                cancel.check()
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                if member.name == "toc.dat":
                    arch = read_archive(f.read, 3)
                else:
                    while f.read(1 << 20):
                        pass
                members[member.name] = member.size
    except (tarfile.TarError, EOFError) as exc:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, "a complete tar archive",
                          f"tar: {exc} (after {len(members)} members)") from exc
    if arch is None:
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a pg_dump tar archive", "no toc.dat member")
    absent = [e for e in arch.data_entries if e.filename and e.filename not in members]
    if absent:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, f"{len(arch.data_entries)} data members",
                          f"{len(absent)} absent ({', '.join(str(e.filename) for e in absent[:5])})")
    res = run_tool([find_tool("pg_restore"), "--list"], env=_tool_env(), cancel=cancel, timeout=300,
                   stdin=decoded(source, path, compression))
    if res.returncode != 0:
        msg = res.error_lines()
        if "unsupported version" in msg or "not supported" in msg:
            raise unverifiable(f"pg_restore is too old for this dump: {msg}", "a pg_restore that reads this dump")
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a table of contents pg_restore reads", msg)
    return Structure("postgres-tar", arch.tables, len(arch.data_entries), sum(members.values()))


def _custom(stream: Iterator[bytes], cancel: CancelToken) -> Structure:
    """Walk a custom archive's chunks to the end, then `pg_restore --list` on its table of contents."""
    read = chunk_reader(stream)

    arch = read_archive(read)
    # pg_restore reads the same table of contents: proves this client can read this archive version.
    res = run_tool([find_tool("pg_restore"), "--list"], env=_tool_env(), cancel=cancel, timeout=300,
                   stdin=[arch.toc_bytes])
    if res.returncode != 0:
        msg = res.error_lines()
        if "unsupported version" in msg or "not supported" in msg:
            raise unverifiable(f"pg_restore is too old for this dump: {msg}", "a pg_restore that reads this dump")
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a table of contents pg_restore reads", msg)
    return Structure("postgres-custom", arch.tables, len(arch.data_entries), arch.size)


def _tool_env() -> dict[str, str]:
    from reversib.dumps.base import clean_env

    return clean_env({})


def plain_structure(source: Source, path: str, compression: str, dialect: str,
                    cancel: CancelToken | None = None) -> Structure:
    lines = safety.lines_of(decoded(source, path, compression))
    result = safety.scan(lines if cancel is None else _cancellable(lines, cancel), dialect)
    fmt = "postgres-plain" if dialect == "postgres" else "mysql"
    if result.refusal is not None:
        r = result.refusal
        raise DumpProblem(FindingKind.DUMP_REFUSED, "a dump without client commands or statements leaving the "
                          "scratch database", f"line {r.line}: {r.reason}: {r.text}")
    st = Structure(fmt, result.tables, result.copy_blocks)
    tool = "pg_dump" if dialect == "postgres" else "mysqldump"
    if result.header and not result.footer:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, f"the {tool} completion footer",
                          f"absent: the dump ends at line {result.lines}")
    if result.open_statement:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, "a dump ending after a complete statement",
                          f"the dump ends inside a statement or data block at line {result.lines}")
    if not result.header:
        st.notes.append(Finding(FindingKind.DUMP_TRUNCATED, None, expected=f"the {tool} header and footer comments",
                                actual="none: made without comments, completeness cannot be told from a footer",
                                severity=Severity.WARNING))
    return st


def _cancellable(lines: Iterable[bytes], cancel: CancelToken) -> Iterator[bytes]:
    """`lines`, stopping (Cancelled) soon after the run is: a scan of millions of lines obeys SIGTERM."""
    for n, line in enumerate(lines):
        if not n & 0xFFF:
            cancel.check()
        yield line


@dataclass
class RestoreReport:
    seconds: float = 0.0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)


class _Counted:
    def __init__(self, chunks: Iterable[bytes]):
        self.chunks = chunks
        self.n = 0

    def __iter__(self) -> Iterator[bytes]:
        for c in self.chunks:
            self.n += len(c)
            yield c


class _Linked(CancelToken):
    """Cancelled with the run's token, or on its own (the structural check running alongside failed)."""

    def __init__(self, parent: CancelToken):
        super().__init__()
        self.parent = parent

    @property
    def cancelled(self) -> bool:
        return super().cancelled or self.parent.cancelled

    def check(self) -> None:
        self.parent.check()
        super().check()


class _Tee:
    """The chunks the structural walk reads, handed on (a bounded queue) to the restore tool's stdin:
    the dump is read once for both levels.  When the tool stops reading, the walk goes on alone."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._q: queue.Queue[bytes] = queue.Queue(maxsize=16)
        self._gone = threading.Event()
        self.n = 0

    def _put(self, chunk: bytes) -> None:
        while not self._gone.is_set():
            try:
                self._q.put(chunk, timeout=0.1)
                return
            except queue.Full:
                continue

    def walked(self) -> Iterator[bytes]:
        """The source's chunks for the walk (each also queued for the tool; the end, even on error)."""
        try:
            for chunk in self._chunks:
                self._put(chunk)
                yield chunk
        finally:
            self._put(b"")

    def consumer(self) -> Iterator[bytes]:
        try:
            while not self._gone.is_set() and (chunk := self._q.get()):
                self.n += len(chunk)
                yield chunk
        finally:
            self._gone.set()

    def close(self) -> None:
        """The restore is over (or never started): the walk stops handing chunks on."""
        self._gone.set()


def check_and_restore(source: Source, path: str, kind: str, compression: str, dump: DumpConfig, target: Target,
                      run_id: str, history: History, cancel: CancelToken,
                      files: set[str]) -> tuple[Structure, RestoreReport | None]:
    """Both levels of a PostgreSQL dump whose restore is due.  The restore starts once the table of
    contents is known (expected tables present); for a custom or directory dump the rest of the
    structural check runs alongside it, reading the same bytes once where the dump is streamed.  A
    structural problem raises DumpProblem: the restore, if started, is stopped and its scratch
    database dropped, and only the structural finding is reported (as when run one after the other).
    Returns the structure and the restore report (None: not restored, an expected table is absent)."""
    expected = dump.expect_tables
    if kind in ("postgres-plain", "postgres-tar"):  # plain: scanned to the end before anything runs
        structure = structural(source, path, kind, compression, cancel, files)
        if missing_tables(structure.tables, expected):
            return structure, None
        if kind == "postgres-plain":
            feed = _Counted(safety.filter_lines(safety.lines_of(decoded(source, path, compression)), "postgres"))
            return structure, _restore(path, kind, dump, target, run_id, history, cancel, structure.decoded_bytes,
                                       stdin=feed, counted=lambda: feed.n)
        feed = _Counted(decoded(source, path, compression))
        return structure, _restore(path, kind, dump, target, run_id, history, cancel, structure.decoded_bytes,
                                   stdin=feed, counted=lambda: feed.n)
    root = source.process_root()
    if kind == "postgres-directory":
        arch = pgdirectory.read_toc(source, path)
        if missing_tables(arch.tables, expected):
            return pgdirectory.structural(source, path, files, cancel, arch), None
        if root is None:  # S3, SFTP: copied into a private folder by the structural pass, restored from there
            with private_dir() as copy:
                structure = pgdirectory.structural(source, path, files, cancel, arch, copy_to=copy)
                return structure, _restore(path, kind, dump, target, run_id, history, cancel,
                                           structure.decoded_bytes, file=str(copy), counted=lambda: _du(copy))
        folder = os.path.join(root, path)
        return _alongside(lambda: pgdirectory.structural(source, path, files, cancel, arch),
                          lambda token: _restore(path, kind, dump, target, run_id, history, token, _du(Path(folder)),
                                                 file=folder, counted=lambda: _du(Path(folder))), cancel)
    # custom
    toc = _custom_toc(source, path, compression)
    if missing_tables(toc.tables, expected):
        return _custom(decoded(source, path, compression), cancel), None
    if root is not None and compression == "none":  # pg_restore reads the file itself (read-only)
        file = os.path.join(root, path)
        size = os.path.getsize(file)
        return _alongside(lambda: _custom(decoded(source, path, compression), cancel),
                          lambda token: _restore(path, kind, dump, target, run_id, history, token, size, file=file,
                                                 counted=lambda: size), cancel)
    tee = _Tee(decoded(source, path, compression))
    entry = source.stat(path)
    size = entry.size if entry is not None and entry.size is not None else 0
    return _alongside(lambda: _custom(tee.walked(), cancel),
                      lambda token: _restore(path, kind, dump, target, run_id, history, token, size,
                                             stdin=tee.consumer(), counted=lambda: tee.n), cancel, tee.close)


def _du(folder: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())


def _custom_toc(source: Source, path: str, compression: str) -> Archive:
    """The header and table of contents of a custom archive (the start of the file only)."""
    stream = decoded(source, path, compression)
    read = chunk_reader(stream)

    try:
        return read_archive(read, data=False)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _alongside(walk: Callable[[], Structure], restore_fn: Callable[[CancelToken], RestoreReport],
               cancel: CancelToken, done: Callable[[], None] = lambda: None) -> tuple[Structure, RestoreReport]:
    """Run the structural `walk` in a thread while `restore_fn` runs here; a walk that fails stops the
    restore (its token) and wins: its DumpProblem is raised.  `done` is called when `restore_fn`
    ends, however it ends (before waiting for the walk)."""
    token = _Linked(cancel)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["structure"] = walk()
        except BaseException as exc:
            box["error"] = exc
            token.cancel("the structural check failed")

    thread = threading.Thread(target=run, name="reversib-dump-structure", daemon=True)
    thread.start()
    try:
        try:
            rep = restore_fn(token)
        finally:
            done()
    except BaseException:
        if not cancel.cancelled:
            thread.join()
            if "error" in box:
                raise box["error"] from None
        raise
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["structure"], rep


def _restore(path: str, kind: str, dump: DumpConfig, target: Target, run_id: str, history: History,
             cancel: CancelToken, size: int, *, counted: Callable[[], int], stdin: Iterable[bytes] | None = None,
             file: str | None = None) -> RestoreReport:
    """Restore into a new scratch database (created by the same psql session that checks the role, with
    the per-run role that owns it, restores into it and counts its rows), check the expectations, drop
    both whatever happens.  The dump comes from `stdin` chunks or from a
    local `file` (or directory) that pg_restore reads itself."""
    cfg = dump.restore
    assert cfg is not None
    name = scratch_name(run_id)
    # Not stopped by a failing structural walk (only by the run's cancel): psql killed in the middle of
    # CREATE DATABASE could leave the creation to commit after our DROP.  A failed walk stops pg_restore.
    server = pg_preflight(target, cancel.parent if isinstance(cancel, _Linked) else cancel, create=name)
    restorer = server.restorer  # the per-run role (or, without CREATEROLE, the target's)
    assert restorer is not None
    out = RestoreReport()
    try:
        pg_remove_dead(target, history, [d for d in (*server.scratch, *server.roles) if d != name])
        _space_check(target, server, size)
        if kind == "postgres-plain":
            argv = [find_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
            assert stdin is not None
            stdin = restricted(stdin, argv[0])
        else:
            argv = [find_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "-d", name]
        if file is not None:
            argv += ["--", file]
        t0 = time.monotonic()
        res = run_tool(argv, env=restorer.pg_env(name), cancel=cancel, timeout=cfg.max_restore_seconds,
                       stdin=stdin, keep_stdout=False)
        out.seconds = time.monotonic() - t0
        out.bytes = counted()
        if res.timed_out:
            out.findings.append(restore_timed_out(path, cfg.max_restore_seconds, out.seconds))
            return out
        if res.returncode != 0:
            msg = res.error_lines()
            if "unsupported version" in msg:
                raise unverifiable(f"{argv[0]} is too old for this dump: {msg}")
            out.findings.append(Finding(FindingKind.RESTORE_FAILED, path, expected="a restore without error",
                                        actual=msg[:1000]))
            return out
        checked = _expectations(dump, cfg, restorer, name, path, cancel, out.findings)
        out.findings.append(restored(path, out.seconds, out.bytes, checked, kind))
        return out
    finally:
        pg_drop(target, name)


# psql releases that know `\restrict` (the August 2025 security releases, CVE-2025-8714, and later).
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}


def psql_restricts(psql_path: str) -> tuple[bool, str]:
    r"""Whether this psql knows `\restrict`, and its version text."""
    import subprocess

    try:
        text = subprocess.run([psql_path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"{psql_path} --version failed: {exc}"
    m = re.search(r"(\d+)(?:\.(\d+))?", text)
    if m is None:
        return False, text
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    return (major >= 18 or (major in _RESTRICT_SINCE and minor >= _RESTRICT_SINCE[major])), text


def restricted(lines: Iterable[bytes], psql_path: str) -> Iterator[bytes]:
    r"""The plain dump fed to psql after `\restrict KEY` (a key drawn for this restore, never in the dump):
    psql then refuses every meta-command (`\!`, `\o |cmd`, `\copy ... program`...) but `\unrestrict KEY`.
    A backstop behind the scanner: a line the scanner misreads still cannot run anything on this host.
    The dump's own `\restrict`/`\unrestrict` lines were dropped by `safety.filter_lines`."""
    ok, version = psql_restricts(psql_path)
    if not ok:
        raise unverifiable(f"{version}: this psql does not know \\restrict, which reversib needs to restore a plain "
                           "dump safely; install a PostgreSQL client from August 2025 or later (13.22, 14.19, "
                           "15.14, 16.10, 17.6, 18)", "a psql that can be restricted")
    return itertools.chain([b"\\restrict " + secrets.token_hex(16).encode("ascii") + b"\n"], lines)


def _space_check(target: Target, server: PgServer, size: int) -> None:
    """Best effort: a server on this machine whose data directory the role may read must have room
    for twice the dump's decoded size."""
    if server.data_directory is None or not host_is_local(target.host):
        return
    try:
        free = shutil.disk_usage(server.data_directory).free
    except OSError:
        return
    need = 2 * size
    if free < need:
        raise unverifiable(f"not enough free space on the restore server: {free} bytes free, {need} needed",
                           "room for the restore")


def _read_only(cfg: DumpRestoreConfig) -> str:
    ms = int(cfg.statement_timeout * 1000)
    return f"-c default_transaction_read_only=on -c statement_timeout={ms}"


def _qualified(table: str) -> str:
    return ".".join(pg_ident(p) for p in table.split("."))


def _expectations(dump: DumpConfig, cfg: DumpRestoreConfig, target: Target, name: str, path: str,
                  cancel: CancelToken, findings: list[Finding]) -> Checked:
    opts = _read_only(cfg)

    def query(sql: str) -> list[str]:
        try:
            return psql(target, sql, cancel, database=name, options=opts, timeout=cfg.statement_timeout + 30)
        except PsqlError as exc:
            raise QueryError(str(exc), missing_table="does not exist" in str(exc)) from exc

    def count(table: str) -> int:
        return int(query(f"SELECT count(*) FROM {_qualified(table)};")[0])

    # the tables are counted at the same time (a sequential scan each, one connection each), at most 4 at once
    counted: dict[str, Future[int]] = {}
    tables = list(dump.row_counts)
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, len(tables))), thread_name_prefix="reversib-count")
    try:
        counted = {t: pool.submit(count, t) for t in tables}

        def count_rows(table: str) -> int:
            return counted[table].result()

        def assertion(sql: str) -> tuple[bool, str]:
            rows = query(f"START TRANSACTION READ ONLY;\n{sql.strip().rstrip(';')}\n;\nROLLBACK;\n")
            return rows == ["t"], shown_rows(rows)

        return check_expectations(dump, path, findings, count_rows=count_rows, assertion=assertion,
                                  dialect="postgres")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
