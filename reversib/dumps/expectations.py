"""Row counts and SQL assertions on a restored (or opened) database: one implementation for every engine.

Each engine supplies two small query functions; the findings, their wording and the summary are the
same for PostgreSQL, MySQL/MariaDB and SQLite.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reversib.dumps import safety
from reversib.model import Finding, FindingKind, canonical_json

ROW_RE = re.compile(r"^\s*(>=)?\s*(\d+)\s*$")


# Client errors that say nothing of the restored data: the server could not be reached or refused us, or
# the query ran out of time (psql, mysql/mariadb).  A row count or an assertion they stop is not a finding
# against the dump: `dump_unverifiable` (could not verify).
_UNREACHABLE = re.compile(
    r"could not connect|connection to server|server closed the connection|no pg_hba\.conf entry|"
    r"password authentication failed|canceling statement due to (?:statement timeout|user request)|"
    r"\bERROR (?:1044|1045|2002|2003|2005|2006|2013)\b|Access denied|Lost connection|max_(?:statement|execution)_time|"
    r"timed out|timeout expired", re.I)


class QueryError(Exception):
    """A query on the restored database failed; `missing_table` when the table does not exist,
    `unreachable` when the failure says nothing of the data (connection, access, timeout)."""

    def __init__(self, message: str, *, missing_table: bool = False):
        super().__init__(message)
        self.missing_table = missing_table
        self.unreachable = not missing_table and bool(_UNREACHABLE.search(message))


def parse_count(want: int | str) -> tuple[bool, int]:
    """`123` -> exactly 123 rows; `">= 100"` -> at least 100 (validated by the config already)."""
    if isinstance(want, int):
        return False, want
    m = ROW_RE.match(want)
    assert m
    return bool(m.group(1)), int(m.group(2))


@dataclass(frozen=True)
class Checked:
    """What `check_expectations` did: a summary suffix for the `restored` finding, and the rows counted
    (None when no row count was asked for)."""

    summary: str
    rows: int | None


def check_expectations(dump: Any, path: str, findings: list[Finding], *, count_rows: Callable[[str], int],
                       assertion: Callable[[str], tuple[bool, str]], dialect: str | None) -> Checked:
    """Check `dump.row_counts` and `dump.assertions`; append findings; return what was checked.

    `count_rows(table)` returns the table's row count; `assertion(sql)` returns (held, what it returned).
    Both raise QueryError.  With a `dialect`, an assertion the safety scanner refuses is never run."""
    rows_total = 0
    for table, want in dump.row_counts.items():
        at_least, n = parse_count(want)
        expected = f"table {table}: {'>= ' if at_least else ''}{n} rows"
        try:
            got = count_rows(table)
        except QueryError as exc:
            kind = (FindingKind.DUMP_UNVERIFIABLE if exc.unreachable else
                    FindingKind.TABLE_MISSING if exc.missing_table else FindingKind.ROW_COUNT_MISMATCH)
            findings.append(Finding(kind, path, expected=expected, actual=str(exc)[:500]))
            continue
        rows_total += got
        if got < n or (not at_least and got != n):
            findings.append(Finding(FindingKind.ROW_COUNT_MISMATCH, path, expected=expected, actual=f"{got} rows"))
    for i, sql in enumerate(dump.assertions):
        label = f"assertion {i + 1}: {' '.join(sql.split())[:200]}"
        if dialect is not None:
            refusal = safety.scan([sql.encode()], dialect).refusal
            if refusal is not None:
                findings.append(Finding(FindingKind.ASSERTION_FAILED, path, expected=label,
                                        actual=f"not run: {refusal.reason}"))
                continue
        try:
            held, shown = assertion(sql)
        except QueryError as exc:
            kind = FindingKind.DUMP_UNVERIFIABLE if exc.unreachable else FindingKind.ASSERTION_FAILED
            findings.append(Finding(kind, path, expected=f"{label} returns true", actual=f"error: {str(exc)[:500]}"))
            continue
        if not held:
            findings.append(Finding(FindingKind.ASSERTION_FAILED, path, expected=f"{label} returns true",
                                    actual=f"returned {shown}"))
    parts = []
    if dump.row_counts:
        parts.append(f"{len(dump.row_counts)} row counts, {rows_total} rows")
    if dump.assertions:
        parts.append(f"{len(dump.assertions)} assertions")
    return Checked(("; " + ", ".join(parts)) if parts else "", rows_total if dump.row_counts else None)


def shown_rows(rows: list[str]) -> str:
    return ", ".join(rows[:3]) or "no row"


def restore_timed_out(path: str, limit: float, seconds: float) -> Finding:
    return Finding(FindingKind.RESTORE_FAILED, path,
                   expected=f"a restore within {limit:g}s (restore.max_restore_seconds)",
                   actual=f"stopped after {seconds:.1f}s")


RESTORE_DETAIL_VERSION = 1


def restored(path: str, seconds: float, nbytes: int, checked: Checked, fmt: str) -> Finding:
    """The info finding that records a restore (and that `restore.every` looks up later).

    Its `detail` is machine-readable (stored in the history's findings table, read by the evidence
    indicators for the restore-duration trend): canonical JSON
    `{"format": ..., "restore_bytes": int, "restore_seconds": float, "rows": int|null, "v": 1}`."""
    detail = canonical_json({"v": RESTORE_DETAIL_VERSION, "restore_seconds": seconds, "restore_bytes": nbytes,
                             "format": fmt, "rows": checked.rows})
    return Finding(FindingKind.RESTORED, path, expected=None,
                   actual=f"restored in {seconds:.2f}s ({nbytes} bytes){checked.summary}", detail=detail)


def restore_detail(detail: str | None) -> dict[str, Any] | None:
    """The parsed `detail` of a `restored` finding (see `restored`), or None when it has none (a
    finding recorded before reversib wrote it) or is not of a known version."""
    if not detail:
        return None
    try:
        data = json.loads(detail)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != RESTORE_DETAIL_VERSION:
        return None
    seconds = data.get("restore_seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return None
    return data
