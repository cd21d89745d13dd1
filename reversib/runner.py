"""Run one check: the single function that the CLI (`verify-now`) and the daemon both call.

The run is recorded as `running` in the history before any work starts, and finished after,
whatever happens: a crash leaves a `running` row that `History.reap_dead_runs` later marks
`interrupted`; a cancellation is recorded `interrupted`; reversib's own bug is recorded as outcome
`error` with its message (never as a pass) and logged with its traceback.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from reversib.config import CheckConfig
from reversib.manifests import ManifestNotFound, find_manifest, load_manifest
from reversib.manifests.base import Manifest, ManifestError, path_problem
from reversib.model import Finding, FindingKind, Outcome, RunResult, RunState, Severity, Trigger, decide_outcome
from reversib.sources import open_source, scheme_of
from reversib.sources.base import Cancelled, CancelToken, RateLimiter, Source, SourceError
from reversib.verify import VerifyOptions, VerifyReport, previous_composites, verify

if TYPE_CHECKING:
    from reversib.history import EntryRecord, History

log = logging.getLogger("reversib.runner")


class ProgressHook(Protocol):
    def start(self, check: str, total_bytes: int | None, total_files: int) -> None: ...
    def advance(self, nbytes: int, nfiles: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Deferred(Exception):
    reason: str


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_check(check: CheckConfig, history: History, *, trigger: Trigger = Trigger.CLI,
              scheduled_for: float | None = None, clock: Callable[[], float] = time.time,
              cancel: CancelToken | None = None, progress: ProgressHook | None = None,
              rng: random.Random | None = None) -> RunResult:
    """Run `check` once, record it in `history`, return the result.  `rng` draws the random part of rolling
    coverage and the challenge reads (default: the system's unpredictable source)."""
    cancel = cancel or CancelToken()
    manifest_place = check.manifest.path or check.manifest.location
    run_id = history.start_run(check_id=check.check_id, check_name=check.name, trigger=trigger.value,
                               scheduled_for=scheduled_for, labels=check.labels, source=check.source.url,
                               manifest=manifest_place)
    started = clock()
    result = RunResult(check_id=check.check_id, check_name=check.name, run_id=run_id, outcome=Outcome.ERROR,
                       started_at=started, source=check.source.url, manifest=manifest_place,
                       labels=dict(check.labels))
    report, deferred, interrupt = attempt(check, result, clock, cancel, progress, history, rng=rng)
    result.findings.sort(key=Finding.sort_key)
    if result.state is RunState.INTERRUPTED:
        result.outcome = Outcome.ERROR
    else:
        result.outcome = decide_outcome(result.findings, error=result.error, deferred=deferred)
    result.finished_at = clock()
    result.duration_seconds = max(0.0, result.finished_at - started)
    from reversib.history import HistoryError, NotRecorded  # loaded already: `history` is one of its objects

    try:
        history.finish_run(result, entry_records(report))
    except NotRecorded:
        raise
    except HistoryError as exc:
        raise NotRecorded(f"the verdict could not be recorded: {exc}", result) from exc
    log.info("run finished", extra={"event": "run", "check": check.check_id, "run_id": run_id,
                                    "outcome": result.outcome.value, "counts": result.counts,
                                    "duration_seconds": round(result.duration_seconds, 3)})
    if isinstance(interrupt, KeyboardInterrupt):
        raise interrupt
    return result


def attempt(check: CheckConfig, result: RunResult, clock: Callable[[], float], cancel: CancelToken,
            progress: ProgressHook | None, history: History | None, *, rng: random.Random | None = None,
            shard: tuple[int, int] | None = None) -> tuple[VerifyReport | None, bool, BaseException | None]:
    """Do the work of a run (or of one shard of it, docs/scale.md) into `result`: (the verification report,
    whether the run is deferred, the interruption to re-raise).  Every failure ends as data in `result`."""
    report: VerifyReport | None = None
    deferred = False
    interrupt: BaseException | None = None
    try:
        report = _execute(check, result, clock, cancel, progress, history, rng=rng, shard=shard)
    except _Deferred as exc:
        deferred = True
        result.error = None
        result.findings.append(Finding(FindingKind.INCOMPLETE_DELIVERY, None, expected="a complete delivery",
                                       actual=exc.reason, severity=Severity.INFO))
    except SourceError as exc:
        result.error = str(exc)
        result.findings.append(Finding(FindingKind.SOURCE_ERROR, None, expected="a reachable source",
                                       actual=str(exc)))
    except (Cancelled, KeyboardInterrupt) as exc:
        result.state = RunState.INTERRUPTED
        result.error = f"interrupted: {str(exc) or 'Ctrl-C'}"
        interrupt = exc
    except Exception as exc:  # reversib's own failure: recorded, never a pass
        log.exception("internal error while running check %s", check.check_id)
        result.error = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        if progress is not None:
            progress.close()
    return report, deferred, interrupt


def entry_records(report: VerifyReport | None) -> Iterator[EntryRecord]:
    """Entry states for the history, made one at a time (never a second copy of a large export)."""
    if report is None:
        return
    from reversib.challenge import encode
    from reversib.history import EntryRecord

    for v in report.verified:
        yield EntryRecord(v.path, v.size, v.digests, v.tier.value, v.verified_at,
                          None if v.blocks is None else encode(v))


def _execute(check: CheckConfig, result: RunResult, clock: Callable[[], float], cancel: CancelToken,
             progress: ProgressHook | None, history: History | None = None, *,
             rng: random.Random | None = None, shard: tuple[int, int] | None = None) -> VerifyReport | None:
    now = clock()
    limiter = RateLimiter(check.source.rate_limit)
    root = open_source(check.source.url, check.source, cancel=cancel, limiter=limiter)
    export: Source = root
    report: VerifyReport | None = None
    try:
        past_deadline = False
        if check.generation is not None:
            from reversib.generation import select

            choice = select(root.child_dirs(), check.generation, check.expect, check.tz, now)
            result.findings.extend(choice.findings)
            if choice.name is None:
                return None
            export = root.sub(choice.name)
            result.generation = choice.name
            past_deadline = choice.past_deadline
        deferrable = check.expect.deadline is not None and not past_deadline
        own: set[str] = set()
        marker = check.completion.marker
        if marker:
            own.add(marker)
            if export.stat(marker) is None:
                if deferrable or check.expect.deadline is None:
                    raise _Deferred(f"completion marker {marker!r} not there yet")
                result.findings.append(Finding(FindingKind.INCOMPLETE_DELIVERY, marker, expected="completion marker",
                                               actual="absent after the deadline"))
        if check.completion.stable_for is not None:
            changed = _changes_within(export, check.completion.stable_for, cancel)
            if changed is not None:
                if deferrable or check.expect.deadline is None:
                    raise _Deferred(changed)
                result.findings.append(Finding(FindingKind.INCOMPLETE_DELIVERY, None,
                                               expected="an export that no longer changes",
                                               actual=f"{changed}, after the deadline"))
        if check.archive is not None:  # the export is an archive file: docs/archives.md
            return _execute_archive(check, export, result, history, cancel, progress, clock, now, deferrable, own)
        manifest = _load_manifest(check, export, result, deferrable)
        if manifest is None:
            return None
        result.manifest_digest = manifest.digest
        result.manifest_entries = len(manifest.entries)
        if check.manifest.signature is not None or check.manifest.append_only:  # docs/evidence.md
            from reversib.evidence.signatures import check_manifest

            own |= check_manifest(check, export, manifest, result, history)
        if progress is not None:
            sizes = [e.size for e in manifest.entries]
            total = sum(s for s in sizes if s is not None) if all(s is not None for s in sizes) else None
            progress.start(check.name, total, len(manifest.entries))
        fx = check.fixity
        options = VerifyOptions(fixity=fx.enabled, algorithms=fx.algorithms, parallelism=fx.parallelism,
                                require_tier=fx.require_tier, accept=frozenset(fx.accept),
                                ignore=tuple(check.ignore),
                                allow_unexpected=check.allow_unexpected, own_paths=frozenset(own),
                                previous=previous_composites(history.entry_states(check.check_id))
                                if history is not None and fx.accept else {})
        plan = None
        if check.coverage is not None or check.challenge is not None or check.source.max_connections or shard:
            rng = rng or random.SystemRandom()
            plan, options = _scale_options(check, export, manifest, options, history, now, rng, shard)
        report = verify(export, manifest, options, clock=clock,
                        progress=progress.advance if progress is not None else None)
        if check.challenge is not None and history is not None:  # docs/coverage.md
            from reversib.challenge import challenge

            challenge(export, manifest, report, check.challenge,
                      lambda paths: history.block_digests(check.check_id, paths), rng or random.SystemRandom())
        if plan is not None:
            from reversib.coverage import measure

            result.coverage = measure(plan, report.verified, clock(), not_sampled_files=report.not_sampled_files,
                                      not_sampled_bytes=report.not_sampled_bytes)
            report.verified = list(plan.records(report.verified))  # a download's state is kept (coverage clock)
        result.findings.extend(report.findings)
        for name in ("tiers", "bytes_verified", "files_verified", "files_listed", "bytes_listed", "newest_mtime"):
            setattr(result, name, getattr(report, name))
        result.findings.extend(_expectations(check, manifest, report, now))
        if check.dumps and (shard is None or shard[0] == 0):  # dumps (docs/dumps.md): shard 0 of a sharded run
            from reversib.dumps import check_dumps

            check_dumps(check, export, report, result, history, cancel, now, manifest.expect.get("dumps"))
        return report
    finally:
        result.bytes_downloaded = limiter.consumed + (report.helper_bytes if report is not None else 0)
        export.close()
        root.close()


def _scale_options(check: CheckConfig, export: Source, manifest: Manifest, options: VerifyOptions,
                   history: History | None, now: float, rng: random.Random,
                   shard: tuple[int, int] | None) -> tuple[Any, VerifyOptions]:
    """Rolling coverage, challenge recording, the connection cap of a check (docs/coverage.md), and the
    partition of one shard (docs/scale.md)."""
    plan = None
    if check.coverage is not None:
        from reversib.coverage import plan as coverage_plan

        states = history.entry_states(check.check_id) if history is not None else iter(())

        def listed_sizes(wanted: set[str]) -> dict[str, int]:  # one listing, when most sizes are unknown
            return {e.path: e.size for e in export.iter_entries() if e.size is not None and e.path in wanted}

        plan = coverage_plan(manifest.entries, states, check.coverage, now, rng, listed_sizes)
    sample: Any = plan
    if shard is not None:
        from reversib.shards import Partition

        sample = Partition(*shard, manifest.entries)  # balanced by bytes, the same in every shard
    return plan, dataclasses.replace(
        options, sample=sample, block_size=check.challenge.block_size if check.challenge is not None else None,
        max_connections=check.source.max_connections)


def _listing_state(export: Source) -> tuple[str, int, int]:
    """A digest of every listed name, type, size and mtime (the listing is never held in memory)."""
    h = hashlib.sha256()
    files = nbytes = 0
    for e in export.iter_entries():
        h.update(f"{e.path}\0{e.type.value}\0{e.size}\0{e.mtime}\n".encode("utf-8", "surrogateescape"))
        files += 1
        nbytes += e.size or 0
    return h.hexdigest(), files, nbytes


def _changes_within(export: Source, seconds: float, cancel: CancelToken) -> str | None:
    """`completion.stable_for`: list twice, `seconds` apart; a description of the change, or None."""
    before = _listing_state(export)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        cancel.check()
        time.sleep(min(0.25, left))
    after = _listing_state(export)
    if after == before:
        return None
    return (f"the export changed within completion.stable_for ({seconds:g}s): {before[1]} entries of "
            f"{before[2]} bytes, then {after[1]} entries of {after[2]} bytes")


def _execute_archive(check: CheckConfig, export: Source, result: RunResult, history: History | None,
                     cancel: CancelToken, progress: ProgressHook | None, clock: Callable[[], float], now: float,
                     deferrable: bool, own: set[str]) -> VerifyReport | None:
    """A check whose export is one archive file: its members against the manifest inside it, and the file
    itself against the export's manifest when the check names one -- in one read (docs/archives.md)."""
    from reversib.archives.check import describe_layers, locate, newest_dated, overdue, verify_archive

    arc = check.archive
    assert arc is not None
    name = locate(export, arc.path, check.tz, now)
    deadline = check.expect.deadline_time
    if "%" in arc.path and deadline is not None:  # a dated archive due by the deadline (like a generation)
        found = newest_dated(export, arc.path, check.tz, now) if name is not None else None
        late = overdue(arc.path, found[1] if found is not None else None, check.tz, now, deadline)
        if late is not None:
            result.findings.append(late)
            if name is None:
                return None
    if name is None:
        if deferrable:
            raise _Deferred(f"archive {arc.path!r} not there yet")
        result.findings.append(Finding(FindingKind.MISSING, arc.path, expected="the archive file",
                                       actual=f"no file matching {arc.path!r} in {export.describe()}"))
        return None
    outer: Manifest | None = None
    if check.manifest.path is not None or check.manifest.location is not None:
        outer = _load_manifest(check, export, result, deferrable)
        if outer is None:
            return None
    fx = check.fixity
    options = VerifyOptions(fixity=fx.enabled, algorithms=fx.algorithms, parallelism=fx.parallelism,
                            require_tier=fx.require_tier, accept=frozenset(fx.accept), ignore=tuple(check.ignore),
                            allow_unexpected=check.allow_unexpected, own_paths=frozenset(own))
    if progress is not None:
        entry = export.stat(name)
        progress.start(check.name, None, 0 if entry is None else 1)
    verdict = verify_archive(arc, export, name, outer, options, clock=clock,
                             progress=progress.advance if progress is not None else None)
    report = verdict.report
    log.info("archive read", extra={"event": "archive", "check": check.check_id, "archive": name,
                                    "reads": verdict.reads, **describe_layers(verdict.archive)})
    result.findings.extend(report.findings)
    inner = verdict.manifest
    if inner is not None:
        result.manifest = f"{name}!/{inner.location}" if inner.location else f"{name}!/"
        result.manifest_digest = inner.digest
        result.manifest_entries = len(inner.entries) + (len(outer.entries) if outer is not None else 0)
    elif outer is not None:
        result.manifest_digest = outer.digest
        result.manifest_entries = len(outer.entries)
    for attr in ("tiers", "bytes_verified", "files_verified", "files_listed", "bytes_listed", "newest_mtime"):
        setattr(result, attr, getattr(report, attr))
    if inner is not None or outer is not None:
        result.findings.extend(_expectations(check, inner or outer, report, now))  # type: ignore[arg-type]
    if check.dumps and inner is not None:  # dumps inside the archive, streamed from it (docs/dumps.md)
        from reversib.dumps import check_dumps

        first = len(result.findings)
        check_dumps(check, verdict.archive, report, result, history, cancel, now, inner.expect.get("dumps"))
        result.findings[first:] = [dataclasses.replace(f, path=f"{name}!/{f.path}") if f.path else f
                                   for f in result.findings[first:]]
    return report


def _load_manifest(check: CheckConfig, export: Source, result: RunResult, deferrable: bool) -> Manifest | None:
    m = check.manifest
    place: str
    try:
        if m.path is not None:
            src, path, place = export, m.path.removeprefix("./"), m.path
        elif m.location is not None:
            inside = export.relative(m.location)
            if inside is not None:
                src, path, place = export, inside, m.location
            else:
                src, path = external_manifest(m.location, export, check.source)
                place = m.location
        else:
            found = find_manifest(export)
            if found is None:
                raise ManifestNotFound(f"no manifest found at the root of {export.describe()} "
                                       "(looked for bagit.txt, reversib-manifest.json, manifest.json, SHA256SUMS, "
                                       "SHA512SUMS, MD5SUMS, B2SUMS, *.sha256 ...): set manifest.path "
                                       "(verify-now --source: --manifest)")
            src, path, place = export, found, found or "(bag)"
        result.manifest = place
        if path and (problem := path_problem(path)):  # `--manifest s3://bucket/export/../x`: never opened
            raise ManifestError(f"{place}: refused: {problem}")
        try:
            manifest = load_manifest(src, path, m.format)
            if src is not export:  # its own files are not the export's: an export file of the same name is
                manifest.own_paths = set()  # the export's, and `unexpected` when not listed
            return manifest
        finally:
            if src is not export:
                src.close()  # an external manifest's source (an SFTP connection...)
    except ManifestNotFound as exc:
        if deferrable:
            raise _Deferred(f"manifest not there yet: {exc}") from exc
        result.findings.append(Finding(FindingKind.MANIFEST_MISSING, result.manifest, expected="a manifest",
                                       actual=str(exc)))
    except ManifestError as exc:
        result.findings.append(Finding(FindingKind.MANIFEST_INVALID, result.manifest, expected="a valid manifest",
                                       actual=str(exc)))
    return None


def external_manifest(location: str, export: Source, options: Any = None) -> tuple[Source, str]:
    """A manifest outside the export: a source rooted at its folder, and its name.  `options` is the
    check's `source` block (its sftp/s3 options apply to a remote manifest too)."""
    if scheme_of(location) == "file":

        from reversib.sources.local import LocalSource, path_from_url

        p = path_from_url(location)
        if p.is_dir():
            return LocalSource(p, cancel=export.cancel), ""
        return LocalSource(p.parent, cancel=export.cancel), p.name
    parent, _, name = location.rstrip("/").rpartition("/")
    return open_source(parent, options, cancel=export.cancel), name


_PAYLOAD_KINDS = frozenset({FindingKind.MISSING, FindingKind.UNEXPECTED, FindingKind.SIZE_MISMATCH,
                            FindingKind.DIGEST_MISMATCH, FindingKind.UNREADABLE, FindingKind.UNSAFE_PATH,
                            FindingKind.NAME_NORMALIZATION})


def _expectations(check: CheckConfig, manifest: Manifest, report: VerifyReport, now: float) -> list[Finding]:
    out: list[Finding] = []
    e = check.expect
    min_files = max(x for x in (e.min_files, manifest.expect.get("min_files"), 0) if x is not None)
    min_bytes = max(x for x in (e.min_bytes, manifest.expect.get("min_bytes"), 0) if x is not None)
    if min_files and report.files_listed < min_files:
        out.append(Finding(FindingKind.TOO_SMALL, None, expected=f">= {min_files} files",
                           actual=f"{report.files_listed} files"))
    if min_bytes and report.bytes_listed < min_bytes:
        out.append(Finding(FindingKind.TOO_SMALL, None, expected=f">= {min_bytes} bytes",
                           actual=f"{report.bytes_listed} bytes"))
    oxum = manifest.expect.get("payload_oxum")
    scope = manifest.unexpected_scope or ""
    explained = any(f.kind in _PAYLOAD_KINDS and (f.path or "").startswith(scope) for f in report.findings)
    if oxum is not None and not explained:  # one fault, one finding: a payload finding already says it
        obytes, ofiles = oxum
        if (obytes, ofiles) != (report.scope_bytes, report.scope_files):
            out.append(Finding(FindingKind.OXUM_MISMATCH, None, expected=f"{obytes}.{ofiles}",
                               actual=f"{report.scope_bytes}.{report.scope_files}"))
    if e.max_age is not None:
        limit = now - e.max_age
        if report.newest_mtime is None:
            out.append(Finding(FindingKind.STALE, None, expected=f"a file newer than {_iso(limit)}",
                               actual="no files"))
        elif report.newest_mtime < limit:
            out.append(Finding(FindingKind.STALE, None, expected=f"newest file after {_iso(limit)}",
                               actual=f"newest file {_iso(report.newest_mtime)}"))
    return out
