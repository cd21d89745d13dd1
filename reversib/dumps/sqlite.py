"""SQLite database files: copied (streamed) into a private temporary folder, never opened in place;
the copy is opened read-only for `PRAGMA integrity_check`, the table list, row counts and assertions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from reversib.config import DumpConfig
from reversib.dumps.base import DumpProblem, Structure, private_dir
from reversib.dumps.detect import decoded
from reversib.dumps.postgres import parse_count
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
            for table, want in dump.row_counts.items():
                at_least, n = parse_count(want)
                expected = f"table {table}: {'>= ' if at_least else ''}{n} rows"
                if table not in st.tables:
                    findings.append(Finding(FindingKind.TABLE_MISSING, path, expected=expected, actual="no such table"))
                    continue
                got = conn.execute(f'SELECT count(*) FROM "{table.replace(chr(34), chr(34) * 2)}"').fetchone()[0]
                if got < n or (not at_least and got != n):
                    findings.append(Finding(FindingKind.ROW_COUNT_MISMATCH, path, expected=expected,
                                            actual=f"{got} rows"))
            for i, sql in enumerate(dump.assertions):
                label = f"assertion {i + 1}: {' '.join(sql.split())[:200]} returns true"
                try:
                    rows = conn.execute(sql).fetchall()
                except sqlite3.Error as exc:
                    findings.append(Finding(FindingKind.ASSERTION_FAILED, path, expected=label, actual=f"error: {exc}"))
                    continue
                if len(rows) != 1 or len(rows[0]) != 1 or rows[0][0] not in (1, True):
                    findings.append(Finding(FindingKind.ASSERTION_FAILED, path, expected=label,
                                            actual=f"returned {rows[:3]!r}"))
        finally:
            conn.close()
    return st, findings


def _open(copy: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA trusted_schema = OFF")
    return conn
