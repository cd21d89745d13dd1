"""PostgreSQL dumps: structural level (custom archive walk + `pg_restore --list`; plain SQL scan)
and restore level (scratch database, `pg_restore --no-owner --no-privileges --exit-on-error` or
`psql -X -v ON_ERROR_STOP=1` on the filtered plain dump, then row counts and read-only assertions)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reversib.config import DumpConfig, DumpRestoreConfig
from reversib.dumps import safety
from reversib.dumps.base import DumpProblem, Structure, find_tool, run_tool, unverifiable
from reversib.dumps.detect import decoded
from reversib.dumps.expectations import (
    QueryError,
    check_expectations,
    restore_timed_out,
    restored,
    shown_rows,
)
from reversib.dumps.pgarchive import read_archive
from reversib.dumps.scratch import (
    PgServer,
    PsqlError,
    Target,
    host_is_local,
    pg_create,
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


def structural(source: Source, path: str, kind: str, compression: str, cancel: CancelToken) -> Structure:
    if kind == "postgres-custom":
        return _custom(source, path, compression, cancel)
    if kind == "postgres-plain":
        return plain_structure(source, path, compression, "postgres")
    if kind == "postgres-tar":
        return _tar(source, path, compression, cancel)
    raise unverifiable(f"the {kind} format is not supported yet (custom, tar and plain are)",
                       "a supported dump format")


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


def _custom(source: Source, path: str, compression: str, cancel: CancelToken) -> Structure:
    stream = decoded(source, path, compression)
    buf = bytearray()

    def read(n: int) -> bytes:
        while len(buf) < n:
            chunk = next(stream, b"")
            if not chunk:
                break
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

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


def plain_structure(source: Source, path: str, compression: str, dialect: str) -> Structure:
    result = safety.scan(safety.lines_of(decoded(source, path, compression)), dialect)
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


def restore(source: Source, path: str, kind: str, compression: str, dump: DumpConfig, target: Target,
            structure: Structure, run_id: str, history: History, cancel: CancelToken) -> RestoreReport:
    cfg = dump.restore
    assert cfg is not None
    server = pg_preflight(target, cancel)
    pg_remove_dead(target, history, server.scratch)
    _space_check(target, server, structure)
    name = scratch_name(run_id)
    out = RestoreReport()
    pg_create(target, name, cancel)
    try:
        if kind == "postgres-plain":
            feed = _Counted(safety.filter_lines(safety.lines_of(decoded(source, path, compression)), "postgres"))
            argv = [find_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        else:
            feed = _Counted(decoded(source, path, compression))
            argv = [find_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "-d", name]
        local = source.process_root() if kind != "postgres-plain" and compression == "none" else None
        t0 = time.monotonic()
        if local is not None:  # a local file: pg_restore reads it (read-only) without a copy through reversib
            file = os.path.join(local, path)
            res = run_tool([*argv, "--", file], env=target.pg_env(name), cancel=cancel,
                           timeout=cfg.max_restore_seconds, keep_stdout=False)
            feed.n = os.path.getsize(file)
        else:
            res = run_tool(argv, env=target.pg_env(name), cancel=cancel, timeout=cfg.max_restore_seconds,
                           stdin=feed, keep_stdout=False)
        out.seconds = time.monotonic() - t0
        out.bytes = feed.n
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
        checked = _expectations(dump, cfg, target, name, path, cancel, out.findings)
        out.findings.append(restored(path, out.seconds, out.bytes, checked))
        return out
    finally:
        pg_drop(target, name)


def _space_check(target: Target, server: PgServer, structure: Structure) -> None:
    """Best effort: a server on this machine whose data directory the role may read must have room
    for twice the dump's decoded size."""
    if server.data_directory is None or not host_is_local(target.host):
        return
    try:
        free = shutil.disk_usage(server.data_directory).free
    except OSError:
        return
    need = 2 * structure.decoded_bytes
    if free < need:
        raise unverifiable(f"not enough free space on the restore server: {free} bytes free, {need} needed",
                           "room for the restore")


def _read_only(cfg: DumpRestoreConfig) -> str:
    ms = int(cfg.statement_timeout * 1000)
    return f"-c default_transaction_read_only=on -c statement_timeout={ms}"


def _qualified(table: str) -> str:
    return ".".join(pg_ident(p) for p in table.split("."))


def _expectations(dump: DumpConfig, cfg: DumpRestoreConfig, target: Target, name: str, path: str,
                  cancel: CancelToken, findings: list[Finding]) -> str:
    opts = _read_only(cfg)

    def query(sql: str) -> list[str]:
        try:
            return psql(target, sql, cancel, database=name, options=opts, timeout=cfg.statement_timeout + 30)
        except PsqlError as exc:
            raise QueryError(str(exc), missing_table="does not exist" in str(exc)) from exc

    def count_rows(table: str) -> int:
        return int(query(f"SELECT count(*) FROM {_qualified(table)};")[0])

    def assertion(sql: str) -> tuple[bool, str]:
        rows = query(f"START TRANSACTION READ ONLY;\n{sql.strip().rstrip(';')}\n;\nROLLBACK;\n")
        return rows == ["t"], shown_rows(rows)

    return check_expectations(dump, path, findings, count_rows=count_rows, assertion=assertion, dialect="postgres")
