"""What the runner calls for a check with an `archive:` block (docs/archives.md).

One read of the archive file gives both verdicts:
* the inner one -- every member against the manifest found inside the archive (tier `downloaded`);
* the outer one -- the archive file's own digest against the export's manifest, when the check names one
  (`manifest.path` / `manifest.location`), computed from the same bytes as they went to decryption.

Findings about members are named `ARCHIVE!/MEMBER` (as a jar URL does); findings about the archive
itself (`decrypt_failed`, `ciphertext_corrupt`, `archive_limit`, a corrupt stream) carry its path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

from reversib import digests
from reversib.archives.options import ArchiveConfig
from reversib.archives.scan import algorithms_named
from reversib.archives.source import ArchiveSource
from reversib.globs import GlobSet
from reversib.manifests import ManifestNotFound, find_manifest, load_manifest
from reversib.manifests.base import Manifest, ManifestError
from reversib.model import Finding, FindingKind
from reversib.sources.base import Capabilities, Entry, EntryType, Source, StoredDigests
from reversib.verify import VerifyOptions, VerifyReport, verify

SEP = "!/"
_STOPS = frozenset({FindingKind.ARCHIVE_CORRUPT, FindingKind.ARCHIVE_LIMIT, FindingKind.DECRYPT_FAILED,
                    FindingKind.CIPHERTEXT_CORRUPT})


def locate(export: Source, pattern: str, tz: dt.tzinfo, now: float) -> str | None:
    """The archive file `archive.path` designates in `export`, or None when it is not there: a template
    (`acme-%Y-%m-%d.tar.gz`) gives the newest date present up to today, a glob the last match in name order
    (the newest dated name), a plain name itself."""
    if "%" in pattern:
        found = newest_dated(export, pattern, tz, now)
        return found[0] if found is not None else None
    if not any(c in pattern for c in "*?["):
        e = export.stat(pattern)
        return pattern if e is not None and e.type is EntryType.FILE else None
    glob = GlobSet([pattern])
    last = None
    for e in export.iter_entries():  # canonical order: the last match is the newest dated name
        if e.type is EntryType.FILE and e.problem is None and glob.match(e.path):
            last = e.path
    return last


def newest_dated(export: Source, template: str, tz: dt.tzinfo, now: float) -> tuple[str, dt.date] | None:
    """The file named by `template` with the newest date not after today (in `tz`), and that date."""
    today = dt.datetime.fromtimestamp(now, tz).date()
    e = export.stat(today.strftime(template))  # the common case: today's is there
    if e is not None and e.type is EntryType.FILE:
        return today.strftime(template), today
    depth = template.count("/")
    best: tuple[dt.date, str] | None = None
    for e in export.iter_entries():
        if e.type is not EntryType.FILE or e.path.count("/") != depth:
            continue
        try:
            day = dt.datetime.strptime(e.path, template).date()
        except ValueError:
            continue
        if day <= today and (best is None or day > best[0]):
            best = (day, e.path)
    return (best[1], best[0]) if best is not None else None


def overdue(template: str, found: dt.date | None, tz: ZoneInfo, now: float, deadline: dt.time) -> Finding | None:
    """`missing` for the dated archive due by `expect.deadline` when the newest present is older."""
    from reversib.generation import due_date

    due = due_date(now, tz, deadline)
    if found is not None and found >= due:
        return None
    return Finding(FindingKind.MISSING, due.strftime(template),
                   expected=f"the archive of {due.isoformat()} delivered by {deadline.strftime('%H:%M')} {tz.key}",
                   actual=f"newest is of {found.isoformat()}" if found is not None else "no dated archive at all")


def preflight(cfg: ArchiveConfig, export: Source, tz: dt.tzinfo, now: float | None = None) -> str | None:
    """`check-config --connect`: the archive is there and its key usable (nothing is decrypted), else why not."""
    import shutil

    from reversib.archives.decrypt import KeyProblem, _secret

    name = locate(export, cfg.path, tz, time.time() if now is None else now)
    if name is None:
        return f"no archive matching {cfg.path!r} in {export.describe()} (yet)"
    d = cfg.decrypt
    method: str = d.method
    if method == "auto":
        with export.open_range(name, 0, 512) as s:
            from reversib.archives.detect import encryption_of

            method = encryption_of(s.read(512))  # a whole tar header: its checksum tells a plain tar
    if method == "none":
        return None
    if shutil.which(method) is None:
        return f"{name} is encrypted with {method}, which is not installed"
    try:
        if d.gnupg_home is None and _secret(d.identity_file, d.identity_env, "private key") is None \
                and not (method == "gpg" and (d.passphrase_file or d.passphrase_env)):
            return f"{name} is encrypted ({method}): set archive.decrypt.identity_file or identity_env"
        if d.passphrase_file or d.passphrase_env:
            _secret(d.passphrase_file, d.passphrase_env, "passphrase")
    except KeyProblem as exc:
        return str(exc)
    return None


class _WithDigests(Source):
    """The export, with the archive file's digests (computed while it was read for its members) given as
    hashed by reversib, so that verifying the outer manifest does not read the archive again."""

    def __init__(self, inner: Source, computed: dict[str, dict[str, str]]):
        super().__init__(inner.url, cancel=inner.cancel, limiter=inner.limiter)
        self.inner = inner
        self.computed = computed

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def iter_entries(self) -> Iterator[Entry]:
        for e in self.inner.iter_entries():
            got = self.computed.get(e.path)
            yield dataclasses.replace(e, digests=got, hashed=True) if got and e.problem is None else e

    def stat(self, path: str) -> Entry | None:
        return self.inner.stat(path)

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        return self.inner._open_raw(path, offset)

    def child_dirs(self) -> list[str]:
        return self.inner.child_dirs()

    def sub(self, name: str) -> Source:
        return self.inner.sub(name)

    def relative(self, location: str) -> str | None:
        return self.inner.relative(location)

    def digests_without_download(self, entry: Entry, algorithms: tuple[str, ...]) -> StoredDigests | None:
        return self.inner.digests_without_download(entry, algorithms)

    def process_root(self) -> str | None:
        return self.inner.process_root()

    def describe(self) -> str:
        return self.inner.describe()


def _needed(manifest: Manifest, policy: str) -> set[str]:
    seen: set[tuple[str, ...]] = set()
    out: set[str] = set()
    for m in manifest.entries:
        key = m.algorithms
        if key not in seen:
            seen.add(key)
            out.update(digests.choose(key, policy))
    return out


def _prefix(name: str, f: Finding, archive_level: bool = False) -> Finding:
    if f.path is None or archive_level:
        return dataclasses.replace(f, path=name if f.path is None else f"{name}{SEP}{f.path}")
    return dataclasses.replace(f, path=f"{name}{SEP}{f.path}")


def _load_inner(archive: ArchiveSource, cfg: ArchiveConfig) -> tuple[Manifest | None, str, Finding | None]:
    """The manifest inside the archive: (manifest, its path, None) or (None, path, a finding)."""
    path = cfg.manifest if cfg.manifest != "auto" else ""
    try:
        if cfg.manifest == "auto":
            found = find_manifest(archive)
            if found is None:
                raise ManifestNotFound("no manifest at the root of the archive (looked for reversib-manifest.json, "
                                       "manifest.json, SHA256SUMS, SHA512SUMS, MD5SUMS, B2SUMS, *.sha256, a BagIt "
                                       "bag...): set archive.manifest")
            path = found
        return load_manifest(archive, path, cfg.manifest_format), path or "(bag)", None
    except ManifestNotFound as exc:
        return None, path, Finding(FindingKind.MANIFEST_MISSING, path or None, expected="a manifest inside the archive",
                                   actual=str(exc))
    except ManifestError as exc:
        return None, path, Finding(FindingKind.MANIFEST_INVALID, path or None, expected="a valid manifest",
                                   actual=str(exc))


@dataclasses.dataclass
class ArchiveVerdict:
    archive: ArchiveSource
    name: str
    manifest: Manifest | None  # the inner manifest (None when it could not be read)
    report: VerifyReport  # inner and outer together; member paths as ARCHIVE!/MEMBER
    reads: int = 1  # how many times the archive was read (2 when the manifest needed another algorithm)


def verify_archive(cfg: ArchiveConfig, export: Source, name: str, outer: Manifest | None, options: VerifyOptions,
                   *, clock: Callable[[], float] = time.time, progress: Callable[[int, int], None] | None = None,
                   scratch: str | None = None) -> ArchiveVerdict:
    """Verify the archive `name` of `export`: its members against its inner manifest and, when `outer`
    lists it, its own digest -- the archive file read once (twice only when the inner manifest needs an
    algorithm not in `archive.algorithms`).  Raises SourceError when it could not be read."""
    outer_algorithms: tuple[str, ...] = ()
    if outer is not None:
        listed = next((m for m in outer.entries if m.path == name), None)
        if listed is not None and options.fixity:
            outer_algorithms = tuple(digests.choose(listed.algorithms, options.algorithms))
    on_bytes = (lambda n: progress(n, 0)) if progress is not None else None
    archive = ArchiveSource(export, name, cfg, scratch=scratch, progress=on_bytes)
    first = set(cfg.algorithms) | (algorithms_named(cfg.manifest) if cfg.manifest != "auto" else set())
    scan = archive.scan(tuple(sorted(first)), outer_algorithms)
    reads = 1
    report = VerifyReport()
    manifest: Manifest | None = None
    stopped = not scan.complete
    if scan.entries or scan.complete:
        manifest, mpath, problem = _load_inner(archive, cfg)
        if problem is not None and not (stopped and problem.kind is FindingKind.MANIFEST_MISSING):
            report.findings.append(_prefix(name, problem))
        if manifest is not None:
            needed = _needed(manifest, options.algorithms)
            if options.fixity and not needed <= set(scan.algorithms):
                scan = archive.scan(tuple(sorted(needed | set(scan.algorithms))))
                reads = 2
                stopped = not scan.complete
            own = frozenset({mpath, *manifest.own_paths, *options.own_paths})
            inner = verify(archive, manifest, dataclasses.replace(options, own_paths=own), clock=clock)
            kept: list[Finding] = []
            not_reached = 0
            for f in inner.findings:
                if f.kind is FindingKind.MISSING and (stopped or f.path in scan.unreadable):
                    not_reached += f.path not in scan.unreadable
                    continue  # the archive could not be read that far: its stop finding says why
                kept.append(f)
            inner.findings = [_prefix(name, f) for f in kept]
            for m in manifest.entries:
                m.path = f"{name}{SEP}{m.path}"
            _merge(report, inner)
            if not_reached:
                for i, f in enumerate(scan.findings):
                    if f.kind in _STOPS:
                        note = f"{not_reached} manifest entries not reached"
                        scan.findings[i] = dataclasses.replace(f, detail=f"{f.detail}; {note}" if f.detail else note)
                        break
    # A hostile name both listed by the inner manifest and present as a member is one unsafe_path, not two.
    unsafe = {f.path for f in report.findings if f.kind is FindingKind.UNSAFE_PATH}
    report.findings.extend(_prefix(name, f) if f.path is not None else dataclasses.replace(f, path=name)
                           for f in scan.findings
                           if not (f.kind is FindingKind.UNSAFE_PATH and f.path is not None
                                   and f"{name}{SEP}{f.path}" in unsafe))
    members_newest = report.newest_mtime  # the newest member's mtime: what expect.max_age judges
    if outer is not None:
        computed = {name: archive.outer_digests} if archive.outer_digests else {}
        outer_report = verify(_WithDigests(export, computed), outer, options, clock=clock)
        _merge(report, outer_report)
    else:
        entry = export.stat(name)
        report.files_listed += 1
        report.bytes_listed += (entry.size or 0) if entry is not None else 0
        if entry is not None and entry.mtime is not None:
            report.newest_mtime = max(report.newest_mtime or entry.mtime, entry.mtime)
    if members_newest is not None:
        # A fresh archive of stale files is stale: the archive file's own mtime counts only when no member has one.
        report.newest_mtime = members_newest
    return ArchiveVerdict(archive, name, manifest, report, reads)


def _merge(into: VerifyReport, other: VerifyReport) -> None:
    into.findings.extend(other.findings)
    into.verified.extend(other.verified)
    for tier, n in other.tiers.items():
        into.tiers[tier] = into.tiers.get(tier, 0) + n
    for attr in ("bytes_verified", "files_verified", "files_listed", "bytes_listed", "scope_files", "scope_bytes"):
        setattr(into, attr, getattr(into, attr) + getattr(other, attr))
    if other.newest_mtime is not None:
        into.newest_mtime = max(into.newest_mtime or other.newest_mtime, other.newest_mtime)


def describe_layers(archive: ArchiveSource) -> dict[str, Any]:
    """What the archive turned out to be, for logs and the run's JSON."""
    r = archive.result
    return {"encryption": archive.encryption, "compression": archive.compression,
            "container": r.container if r is not None else None, "members": r.members if r is not None else 0,
            "expanded_bytes": r.expanded_bytes if r is not None else 0, "archive_bytes": archive.compressed_bytes,
            "root": archive.root or None}
