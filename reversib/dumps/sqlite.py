"""SQLite database files: copied (streamed) into a private temporary folder, never opened in place;
the copy is opened read-only for `PRAGMA integrity_check`, the table list, row counts and assertions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from reversib.config import DumpConfig
from reversib.dumps.base import DumpProblem, Structure, private_dir
from reversib.dumps.detect import decoded
from reversib.dumps.expectations import QueryError, check_expectations
from reversib.model import Finding, FindingKind
from reversib.sources.base import Source


def check(source: Source, path: str, compression: str, dump: DumpConfig) -> tuple[Structure, list[Finding]]:
    findings: list[Finding] = []
    with private_dir() as d:
        copy = d / "copy.sqlite"
        size = 0
        with open(copy, "wb") as f:
            for chunk in decoded(source, path, compression):
                f.write(chunk)
                size += len(chunk)
        copy.chmod(0o400)
        st = Structure("sqlite", decoded_bytes=size)
        conn = _open(copy)
        try:
            try:
                problems = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
                st.tables = {r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
            except sqlite3.DatabaseError as exc:
                raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a SQLite database", f"sqlite: {exc}") from exc
            if problems != ["ok"]:
                raise DumpProblem(FindingKind.DUMP_UNREADABLE, "PRAGMA integrity_check: ok",
                                  "; ".join(problems)[:1000])
            def count_rows(table: str) -> int:
                if table not in st.tables:
                    raise QueryError("no such table", missing_table=True)
                quoted = '"' + table.replace('"', '""') + '"'
                return int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])

            def assertion(sql: str) -> tuple[bool, str]:
                try:
                    rows = conn.execute(sql).fetchall()
                except sqlite3.Error as exc:
                    raise QueryError(str(exc)) from exc
                return len(rows) == 1 and len(rows[0]) == 1 and rows[0][0] in (1, True), repr(rows[:3])

            # The copy is opened read-only: assertions cannot write, no scanner needed.
            check_expectations(dump, path, findings, count_rows=count_rows, assertion=assertion, dialect=None)
        finally:
            conn.close()
    return st, findings


def _open(copy: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA trusted_schema = OFF")
    return conn
