"""The dump checks of one run, called by the runner after verification, on the selected export.

A dump whose entry failed verification (missing, wrong size or digest, unreadable, unsafe) is
already reported and is skipped; a dump not listed in the manifest is still checked.  Each
problem is one finding on the dump's path.  When the restore level runs is decided by
`restore.every` against the newest `restored` finding of this dump in the history.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING

from reversib.config import CheckConfig, DumpConfig
from reversib.dumps.base import DumpProblem
from reversib.dumps.detect import decoded_head, head_of, sniff_compression, sniff_format
from reversib.globs import translate
from reversib.model import Finding, FindingKind, RunResult, Severity
from reversib.sources.base import CancelToken, EntryType, Source

if TYPE_CHECKING:
    from reversib.history import History
    from reversib.verify import VerifyReport

log = logging.getLogger("reversib.dumps")

_ALREADY_REPORTED = frozenset({FindingKind.MISSING, FindingKind.SIZE_MISMATCH, FindingKind.DIGEST_MISMATCH,
                               FindingKind.UNREADABLE, FindingKind.UNSAFE_PATH, FindingKind.NAME_NORMALIZATION,
                               FindingKind.TIER_INSUFFICIENT})


def check_dumps(check: CheckConfig, export: Source, report: VerifyReport | None, result: RunResult,
                history: History | None, cancel: CancelToken, now: float) -> None:
    if not check.dumps:
        return
    reported = {f.path for f in (report.findings if report else []) if f.path and f.kind in _ALREADY_REPORTED
                and f.sev is Severity.ERROR}
    files = [e.path for e in export.iter_entries() if e.type is EntryType.FILE and e.problem is None]
    for dump in check.dumps:
        rx = re.compile(translate(dump.path))
        matched = [p for p in files if rx.match(p)]
        if not matched:
            result.findings.append(Finding(FindingKind.MISSING, dump.path, expected="a dump matching dumps[].path",
                                           actual="no file matches"))
            continue
        for path in matched:
            if path in reported:
                continue
            cancel.check()
            try:
                _one(check, dump, export, path, result, history, cancel, now)
            except DumpProblem as problem:
                result.findings.append(problem.finding(path))


def _one(check: CheckConfig, dump: DumpConfig, export: Source, path: str, result: RunResult,
         history: History | None, cancel: CancelToken, now: float) -> None:
    from reversib.dumps import postgres, sqlite

    compression: str = dump.compression
    if compression == "auto":
        compression = sniff_compression(head_of(export, path))
    kind: str = dump.kind
    if kind == "auto":
        found = sniff_format(decoded_head(export, path, compression))
        if found is None:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a PostgreSQL, MySQL or SQLite dump",
                              "an unknown format (set dumps[].kind)")
        kind = found
    extra: list[Finding] = []
    if kind == "sqlite":
        structure, extra = sqlite.check(export, path, compression, dump)
    elif kind.startswith("postgres"):
        structure = postgres.structural(export, path, kind, compression, cancel)
    else:
        structure = postgres.plain_structure(export, path, compression, "mysql")
    for note in structure.notes:
        result.findings.append(Finding(note.kind, path, note.expected, note.actual, note.severity, note.detail))
    missing = [t for t in dump.expect_tables if not _has_table(structure.tables, t)]
    for t in missing:
        result.findings.append(Finding(FindingKind.TABLE_MISSING, path, expected=f"table {t}",
                                       actual=f"absent ({len(structure.tables)} tables in the dump)"))
    result.findings.extend(extra)
    if dump.restore is None or kind == "sqlite" or missing:
        return
    if history is None or not _restore_due(history, check.check_id, path, dump.restore.every, now):
        return
    from reversib.dumps.scratch import parse_target, read_target

    target = parse_target(read_target(dump.restore))
    family = "postgres" if kind.startswith("postgres") else "mysql"
    if target.family != family:
        raise DumpProblem(FindingKind.DUMP_UNVERIFIABLE, f"a {family} restore target",
                          f"restore target is {target.describe()}")
    if family == "mysql":
        from reversib.dumps import mysql

        rep = mysql.restore(export, path, compression, dump, target, structure, result.run_id, history, cancel)
    else:
        rep = postgres.restore(export, path, kind, compression, dump, target, structure, result.run_id, history,
                               cancel)
    result.findings.extend(rep.findings)
    result.restore_seconds = (result.restore_seconds or 0.0) + rep.seconds
    result.restore_bytes = (result.restore_bytes or 0) + rep.bytes


def _has_table(tables: set[str], wanted: str) -> bool:
    if wanted in tables:
        return True
    if "." not in wanted:
        return any(t.rsplit(".", 1)[-1] == wanted for t in tables)
    return False


def _restore_due(history: History, check_id: str, path: str, every: float | None, now: float) -> bool:
    if every is None:
        return True
    import sqlalchemy as sa

    from reversib.history import findings_t, runs_t

    stmt = (sa.select(sa.func.max(runs_t.c.started_at))
            .select_from(runs_t.join(findings_t, findings_t.c.run_id == runs_t.c.id))
            .where(runs_t.c.check_id == check_id, findings_t.c.kind == FindingKind.RESTORED.value,
                   findings_t.c.path == path))
    with history.engine.connect() as conn:
        last = conn.execute(stmt).scalar()
        dialect = conn.dialect
    if last is None:
        return True
    from reversib.history import _as_utc

    when = _as_utc(last, dialect)
    due = when.timestamp() + every <= now
    if not due:
        log.info("restore of %s skipped: last restored %s (restore.every %gs)", path,
                 when.astimezone(dt.timezone.utc).isoformat(), every)
    return due
