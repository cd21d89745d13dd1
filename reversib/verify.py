"""Completeness and fixity: compare a source's listing with a manifest.

Completeness is a streaming merge of the source's listing (canonical order, see
sources/base.py) with the manifest's sorted entries: the listing is never held in memory.
Fixity streams each matched file once through every digest chosen.  Small files are hashed
inline (on a local disk, threads only add GIL hand-offs for tiny reads); large files -- and every
file of a latency-bound source -- go to a bounded thread pool (hashlib and reads release the GIL).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

from reversib import digests
from reversib.globs import GlobSet
from reversib.manifests.base import Manifest, ManifestEntry, normalized_name
from reversib.model import Finding, FindingKind, Severity, Tier
from reversib.sources.base import Cancelled, Entry, EntryType, Source

INLINE_MAX = 4 << 20  # files up to this size are hashed inline on a non-latency-bound source


@dataclass(frozen=True)
class VerifyOptions:
    fixity: bool = True
    algorithms: str = "all"  # all | strongest
    parallelism: int = 2
    require_tier: Tier | None = None
    ignore: tuple[str, ...] = ()
    allow_unexpected: bool = False
    own_paths: frozenset[str] = frozenset()  # manifest file, completion marker...


class Verified(NamedTuple):
    """One manifest entry whose content was checked (at some tier)."""

    path: str
    size: int | None
    digests: dict[str, str]
    tier: Tier
    verified_at: float


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    verified: list[Verified] = field(default_factory=list)
    tiers: dict[str, int] = field(default_factory=dict)
    bytes_verified: int = 0
    files_verified: int = 0
    files_listed: int = 0
    bytes_listed: int = 0
    scope_files: int = 0  # listed files below manifest.unexpected_scope (BagIt payload)
    scope_bytes: int = 0
    newest_mtime: float | None = None


Progress = Callable[[int, int], None]  # (bytes, files) done since the last call


class _Outcome(NamedTuple):
    verified: Verified | None
    finding: Finding | None
    nbytes: int


def _short(alg_hex: dict[str, str]) -> str:
    return " ".join(f"{a}:{h}" for a, h in sorted(alg_hex.items()))


class Verifier:
    def __init__(self, source: Source, manifest: Manifest, options: VerifyOptions, *,
                 clock: Callable[[], float] = time.time, progress: Progress | None = None):
        self.source = source
        self.manifest = manifest
        self.options = options
        self.clock = clock
        self.progress = progress
        self.ignore = GlobSet(options.ignore)
        self.own = set(manifest.own_paths) | set(options.own_paths)
        self.report = VerifyReport()
        self._local = threading.local()

    # -- completeness -----------------------------------------------------------------
    def run(self) -> VerifyReport:
        r = self.report
        r.findings.extend(self.manifest.findings)
        missing: list[ManifestEntry] = []
        unexpected: list[Entry] = []
        entries = self.manifest.entries
        i = 0
        latency_bound = self.source.capabilities.latency_bound
        workers = max(1, self.options.parallelism)
        pending: deque[Future[_Outcome]] = deque()
        scope = self.manifest.unexpected_scope
        prev: str | None = None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reversib-verify") as pool:
            try:
                for e in self.source.iter_entries():
                    if prev is not None and e.path <= prev:
                        raise RuntimeError(f"source {self.source.describe()} listed {e.path!r} after {prev!r}: "
                                           "not in canonical order (a bug in the source backend)")
                    prev = e.path
                    own = e.path in self.own  # verified if listed, never unexpected, not payload
                    if not own:
                        self._count_listed(e, scope)
                    while i < len(entries) and entries[i].path < e.path:
                        missing.append(entries[i])
                        i += 1
                    if i < len(entries) and entries[i].path == e.path:
                        m = entries[i]
                        i += 1
                        task = self._task(m, e)
                        if task is None:
                            continue
                        size = e.size or 0
                        if latency_bound or size > INLINE_MAX:
                            pending.append(pool.submit(task))
                            while len(pending) >= workers * 2:
                                self._collect(pending.popleft().result())
                            while pending and pending[0].done():
                                self._collect(pending.popleft().result())
                        else:
                            self._collect(task())
                    elif own or e.path in self.manifest.untrusted:
                        continue
                    elif e.problem is not None and e.type is EntryType.SYMLINK:
                        r.findings.append(Finding(FindingKind.UNSAFE_PATH, e.path, expected="a regular file",
                                                  actual=e.problem))
                    elif (scope is None or e.path.startswith(scope)) and not self.ignore.match(e.path):
                        unexpected.append(e)
                missing.extend(entries[i:])
                while pending:
                    self._collect(pending.popleft().result())
            except BaseException:
                for f in pending:
                    f.cancel()
                self.source.cancel.cancel("verification aborted")
                raise
        self._completeness_findings(missing, unexpected)
        r.findings.sort(key=Finding.sort_key)
        return r

    def _count_listed(self, e: Entry, scope: str | None) -> None:
        r = self.report
        if e.type is not EntryType.FILE:
            return
        r.files_listed += 1
        r.bytes_listed += e.size or 0
        if scope is not None and e.path.startswith(scope):
            r.scope_files += 1
            r.scope_bytes += e.size or 0
        if e.mtime is not None and (r.newest_mtime is None or e.mtime > r.newest_mtime):
            r.newest_mtime = e.mtime

    def _completeness_findings(self, missing: list[ManifestEntry], unexpected: list[Entry]) -> None:
        findings = self.report.findings
        by_norm: dict[str, list[Entry]] = {}
        for e in unexpected:
            by_norm.setdefault(normalized_name(e.path), []).append(e)
        paired: set[str] = set()
        for m in missing:
            candidates = by_norm.get(normalized_name(m.path))
            if candidates:
                e = candidates.pop(0)
                paired.add(e.path)
                findings.append(Finding(FindingKind.NAME_NORMALIZATION, m.path, expected=ascii(m.path),
                                        actual=ascii(e.path),
                                        detail="names differ only by Unicode normalization or case"))
            else:
                findings.append(Finding(FindingKind.MISSING, m.path, expected=_expected_text(m), actual="absent"))
        severity = Severity.WARNING if self.options.allow_unexpected else Severity.ERROR
        for e in unexpected:
            if e.path in paired:
                continue
            if e.problem is not None:
                findings.append(Finding(FindingKind.UNREADABLE, e.path, expected="not listed", actual=e.problem,
                                        severity=severity))
                continue
            findings.append(Finding(FindingKind.UNEXPECTED, e.path, expected="not listed",
                                    actual=f"size {e.size}" if e.size is not None else "present", severity=severity))

    # -- fixity -------------------------------------------------------------------------
    def _task(self, m: ManifestEntry, e: Entry) -> Callable[[], _Outcome] | None:
        """Decide, for one matched pair, what to do; returns the work to run (or records the
        result directly when no read is needed)."""
        r = self.report
        if e.problem is not None:
            kind = FindingKind.UNSAFE_PATH if e.type is EntryType.SYMLINK else FindingKind.UNREADABLE
            r.findings.append(Finding(kind, m.path, expected=_expected_text(m), actual=e.problem))
            return None
        if m.size is not None and e.size is not None and m.size != e.size:
            r.findings.append(Finding(FindingKind.SIZE_MISMATCH, m.path, expected=str(m.size), actual=str(e.size)))
            return None
        algorithms = digests.choose(m.digests, self.options.algorithms)
        if not self.options.fixity or not algorithms:
            self._collect(_Outcome(Verified(m.path, e.size, {}, Tier.SIZE_ONLY, self.clock()), None, 0))
            return None
        return lambda: self._download(m, e, algorithms)

    def _buffer(self) -> bytearray:
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(digests.CHUNK)
        return buf

    def _download(self, m: ManifestEntry, e: Entry, algorithms: list[str]) -> _Outcome:
        try:
            with self.source.open_range(m.path) as stream:
                got, nbytes = digests.hash_stream(stream, algorithms, self._buffer())
        except Cancelled:
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            return _Outcome(None, Finding(FindingKind.UNREADABLE, m.path, expected=_expected_text(m),
                                          actual=f"read failed: {reason}"), 0)
        size = e.size if e.size is not None else m.size
        if size is not None and nbytes != size:
            return _Outcome(None, Finding(FindingKind.UNREADABLE, m.path, expected=f"{size} bytes",
                                          actual=f"{nbytes} bytes read (file changed or was cut while reading)"),
                            nbytes)
        verified = Verified(m.path, nbytes, got, Tier.DOWNLOADED, self.clock())
        bad = {a: h for a, h in got.items() if m.digests.get(a) != h}
        if bad:
            return _Outcome(verified, Finding(FindingKind.DIGEST_MISMATCH, m.path,
                                              expected=_short({a: m.digests[a] for a in bad}),
                                              actual=_short(bad)), nbytes)
        return _Outcome(verified, None, nbytes)

    def _collect(self, outcome: _Outcome) -> None:
        r = self.report
        if outcome.finding is not None:
            r.findings.append(outcome.finding)
        v = outcome.verified
        if v is not None:
            r.verified.append(v)
            r.tiers[v.tier.value] = r.tiers.get(v.tier.value, 0) + 1
            r.files_verified += 1
            r.bytes_verified += outcome.nbytes
            req = self.options.require_tier
            if req is not None and v.tier.rank < req.rank:
                r.findings.append(Finding(FindingKind.TIER_INSUFFICIENT, v.path, expected=req.value,
                                          actual=v.tier.value))
        if self.progress is not None:
            self.progress(outcome.nbytes, 1)


def _expected_text(m: ManifestEntry) -> str:
    parts = []
    if m.size is not None:
        parts.append(f"size {m.size}")
    if m.digests:
        parts.append(_short(m.digests))
    return ", ".join(parts) or "present"


def verify(source: Source, manifest: Manifest, options: VerifyOptions | None = None, *,
           clock: Callable[[], float] = time.time, progress: Progress | None = None) -> VerifyReport:
    return Verifier(source, manifest, options or VerifyOptions(), clock=clock, progress=progress).run()

