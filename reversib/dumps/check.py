"""The dump checks of one run, called by the runner after verification, on the selected export.

A dump whose entry failed verification (missing, wrong size or digest, unreadable, unsafe) is
already reported and is skipped; a dump not listed in the manifest is still checked.  Each
problem is one finding on the dump's path.  When the restore level runs is decided by
`restore.every` against the newest `restored` finding of this dump in the history (or by
`verify-now --restore now|never`, see `with_restore_level`).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reversib.config import CheckConfig, DumpConfig
from reversib.dumps import pgdirectory
from reversib.dumps.base import DumpProblem, missing_tables
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
                history: History | None, cancel: CancelToken, now: float,
                manifest_dumps: Mapping[str, Any] | None = None) -> None:
    """`manifest_dumps`: the manifest's `expect.dumps` (dump path -> tables, row_counts), added to the check's."""
    if not check.dumps:
        return
    reported = {f.path for f in (report.findings if report else []) if f.path and f.kind in _ALREADY_REPORTED
                and f.sev is Severity.ERROR}
    files = [e.path for e in export.iter_entries() if e.type is EntryType.FILE and e.problem is None]
    file_set = set(files)
    dir_dumps = pgdirectory.folders(files)
    for dump in check.dumps:
        rx = re.compile(translate(dump.path))
        # a directory-format dump is named by its folder or by its toc.dat; its files are not dumps
        folders = sorted(d for d in dir_dumps if d and (rx.match(d) or rx.match(f"{d}/{pgdirectory.TOC}")))
        if dump.kind not in ("auto", "postgres-directory"):
            folders = []
        inside = tuple(f"{d}/" for d in folders)
        matched = [(p, None) for p in files if rx.match(p) and not p.startswith(inside)]
        targets: list[tuple[str, str | None]] = [*((d, "postgres-directory") for d in folders), *matched]
        if not targets:
            result.findings.append(Finding(FindingKind.MISSING, dump.path, expected="a dump matching dumps[].path",
                                           actual="no file matches"))
            continue
        for path, kind in targets:
            if path in reported or (kind is not None and any(r.startswith(f"{path}/") for r in reported)):
                continue
            cancel.check()
            try:
                _one(check, with_manifest(dump, (manifest_dumps or {}).get(path)), export, path, kind, file_set,
                     result, history, cancel, now)
            except DumpProblem as problem:
                result.findings.append(problem.finding(path))


def with_manifest(dump: DumpConfig, spec: Mapping[str, Any] | None) -> DumpConfig:
    """The check's expectations of one dump plus those its manifest carries: tables are added, and a row count
    the check gives for a table wins over the manifest's."""
    if not spec:
        return dump
    tables = list(dict.fromkeys([*dump.expect_tables, *spec.get("tables", [])]))
    counts = {**spec.get("row_counts", {}), **dump.row_counts}
    return dump.model_copy(update={"expect_tables": tables, "row_counts": counts})


def _one(check: CheckConfig, dump: DumpConfig, export: Source, path: str, known_kind: str | None,
         files: set[str], result: RunResult, history: History | None, cancel: CancelToken, now: float) -> None:
    from reversib.dumps import postgres, sqlite

    compression: str = "none" if known_kind else dump.compression
    if compression == "auto":
        compression = sniff_compression(head_of(export, path))
    kind: str = known_kind or dump.kind
    if kind == "auto":
        found = sniff_format(decoded_head(export, path, compression))
        if found is None:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a PostgreSQL, MySQL or SQLite dump",
                              "an unknown format (set dumps[].kind)")
        kind = found
    if kind == "postgres-directory" and known_kind is None:
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a directory-format dump named by its folder or toc.dat",
                          "a PostgreSQL archive table of contents outside a dump folder")
    due = (dump.restore is not None and kind != "sqlite" and history is not None
           and _restore_due(history, check.check_id, path, dump.restore.every, now))
    extra: list[Finding] = []
    rep = None
    no_target: DumpProblem | None = None  # reported only when the structural level passes
    family = "postgres" if kind.startswith("postgres") else "mysql"
    if due:
        assert dump.restore is not None
        from reversib.dumps.scratch import parse_target, read_target

        try:
            target = parse_target(read_target(dump.restore))
            if target.family != family:
                raise DumpProblem(FindingKind.DUMP_UNVERIFIABLE, f"a {family} restore target",
                                  f"restore target is {target.describe()}")
        except DumpProblem as problem:
            no_target, due = problem, False
    if due:
        assert history is not None
        if family == "postgres":
            structure, rep = postgres.check_and_restore(export, path, kind, compression, dump, target,
                                                        result.run_id, history, cancel, files)
        else:
            from reversib.dumps import mysql

            structure = postgres.plain_structure(export, path, compression, "mysql", cancel)
            if not missing_tables(structure.tables, dump.expect_tables):
                rep = mysql.restore(export, path, compression, dump, target, structure, result.run_id, history,
                                    cancel)
    elif kind == "sqlite":
        structure, extra = sqlite.check(export, path, compression, dump)
    elif kind.startswith("postgres"):
        structure = postgres.structural(export, path, kind, compression, cancel, files)
    else:
        structure = postgres.plain_structure(export, path, compression, "mysql", cancel)
    for note in structure.notes:
        result.findings.append(Finding(note.kind, path, note.expected, note.actual, note.severity, note.detail))
    for t in missing_tables(structure.tables, dump.expect_tables):
        result.findings.append(Finding(FindingKind.TABLE_MISSING, path, expected=f"table {t}",
                                       actual=f"absent ({len(structure.tables)} tables in the dump)"))
    result.findings.extend(extra)
    if no_target is not None:
        raise no_target
    if rep is not None:
        result.findings.extend(rep.findings)
        result.restore_seconds = (result.restore_seconds or 0.0) + rep.seconds
        result.restore_bytes = (result.restore_bytes or 0) + rep.bytes


def with_restore_level(check: CheckConfig, level: str) -> CheckConfig:
    """`verify-now --restore`: `now` restores every dump that has a `restore:` block in this run (its
    `restore.every` ignored), `never` keeps the structural level only; `due` changes nothing."""
    if level == "due" or not check.dumps:
        return check
    if level not in ("now", "never"):
        raise ValueError(f"restore level {level!r}: due, now or never")
    dumps = [d.model_copy(update={"restore": None if level == "never" or d.restore is None
                                  else d.restore.model_copy(update={"every": None})}) for d in check.dumps]
    return check.model_copy(update={"dumps": dumps})


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
