"""Completeness and fixity: compare a source's listing with a manifest.

Completeness is a streaming merge of the source's listing (canonical order, see
sources/base.py) with the manifest's sorted entries: the listing is never held in memory.
Fixity streams each matched file once through every digest chosen.  Small files are hashed
inline (on a local disk, threads only add GIL hand-offs for tiny reads); large files -- and every
file of a latency-bound source -- go to a bounded thread pool (hashlib and reads release the GIL).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from reversib import digests
from reversib.digests import BlockHasher
from reversib.globs import GlobSet
from reversib.manifests.base import Manifest, ManifestEntry, normalized_name
from reversib.model import Finding, FindingKind, Severity, Tier
from reversib.sources.base import Cancelled, Entry, EntryType, GuardedStream, Source, StoredDigests

INLINE_MAX = 4 << 20  # files up to this size are hashed inline on a non-latency-bound source
BATCH_READ_BYTES = 4 << 20  # listed bytes of one batch of small files (Capabilities.batch_files)
# Keys added to a verified entry's digests next to a source's composite values (stream.extra_digests):
PARTS_AT = "parts-verified-at"  # when the full download that derived them took place (UTC, ISO 8601)
COMPARED = "compared"  # on an entry verified by its composite values: which comparison was made


@dataclass(frozen=True)
class VerifyOptions:
    fixity: bool = True
    algorithms: str = "all"  # all | strongest
    parallelism: int = 2
    require_tier: Tier | None = None
    accept: frozenset[Tier] = frozenset()  # tiers accepted instead of a download, when offered
    ignore: tuple[str, ...] = ()
    allow_unexpected: bool = False
    own_paths: frozenset[str] = frozenset()  # manifest file, completion marker...
    # path -> digests recorded at the entry's last verification, for entries with composite values (PARTS_AT)
    previous: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Rolling coverage (reversib.coverage): the paths whose content this run verifies; None: all of them.
    sample: Container[str] | None = None
    block_size: int | None = None  # record block digests of each full download (challenge reads)
    max_connections: int | None = None  # reads in flight at most (source.max_connections)


class Verified:
    """One manifest entry whose content was checked (at some tier).

    Kept compact -- a run may verify millions of entries: computed digests equal to the manifest's
    are not stored twice (`digests` then reads them from the manifest entry)."""

    __slots__ = ("_digests", "blocks", "entry", "size", "tier", "verified_at")

    def __init__(self, entry: ManifestEntry, size: int | None, digests: dict[str, str] | None, tier: Tier,
                 verified_at: float, blocks: BlockHasher | None = None):
        self.entry = entry
        self.size = size
        self._digests = digests  # None: equal to the manifest's
        self.tier = tier
        self.verified_at = verified_at
        self.blocks = blocks  # block digests of a full download that matched (challenge reads)

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def digests(self) -> dict[str, str]:
        return self.entry.digests if self._digests is None else self._digests

    def __repr__(self) -> str:
        return f"Verified({self.path!r}, {self.size!r}, {self.digests!r}, {self.tier.value})"


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
    helper_files: int = 0  # files hashed by the helper process (see _Dispatcher)
    helper_bytes: int = 0  # and their bytes (read outside the run's RateLimiter)
    not_sampled_files: int = 0  # listed with the right size, content not verified in this run (coverage)
    not_sampled_bytes: int = 0


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
        self._choice: dict[tuple[str, ...], tuple[str, ...]] = {}
        offered = source.capabilities.digests_without_download
        self._cheap_algorithms = frozenset(offered) if options.accept & {Tier.STORED_CHECKSUM, Tier.REMOTE_DIGEST} \
            else frozenset()

    # -- completeness -----------------------------------------------------------------
    def run(self) -> VerifyReport:
        r = self.report
        r.findings.extend(self.manifest.findings)
        missing: list[ManifestEntry] = []
        unexpected: list[Entry] = []
        entries = self.manifest.entries
        n = len(entries)
        i = 0
        scope = self.manifest.unexpected_scope
        untrusted = self.manifest.untrusted
        prev: str | None = None
        with _Dispatcher(self) as dispatch:
            for e in self.source.iter_entries():
                path = e.path
                if prev is not None and path <= prev:
                    raise RuntimeError(f"source {self.source.describe()} listed {path!r} after {prev!r}: "
                                       "not in canonical order (a bug in the source backend)")
                prev = path
                own = path in self.own  # verified if listed, never unexpected, not payload
                if not own:
                    self._count_listed(e, scope)
                while i < n and entries[i].path < path:
                    missing.append(entries[i])
                    i += 1
                if i < n and entries[i].path == path:
                    m = entries[i]
                    i += 1
                    algorithms = self._plan(m, e)
                    if algorithms:
                        dispatch.submit(m, e, algorithms)
                elif own or path in untrusted:
                    continue
                elif e.problem is not None and e.type is EntryType.SYMLINK:
                    r.findings.append(Finding(FindingKind.UNSAFE_PATH, path, expected="a regular file",
                                              actual=e.problem))
                elif (scope is None or path.startswith(scope)) and not self.ignore.match(path):
                    unexpected.append(e)
            missing.extend(entries[i:])
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
        # folders the listing could not enter: what the manifest lists below them is unknown, not absent
        blocked = [(e.path + "/", e.problem) for e in unexpected
                   if e.problem is not None and e.problem.startswith("directory cannot be listed")]
        for m in missing:
            below = next(((folder, why) for folder, why in blocked if m.path.startswith(folder)), None)
            if below is not None:
                findings.append(Finding(FindingKind.UNREADABLE, m.path, expected=_expected_text(m),
                                        actual=f"in {below[0]}, which cannot be listed ({below[1]})"))
                continue
            candidates = by_norm.get(normalized_name(m.path))
            if candidates:
                e = candidates.pop(0)
                paired.add(e.path)
                findings.append(Finding(FindingKind.NAME_NORMALIZATION, m.path, expected=ascii(m.path),
                                        actual=ascii(e.path),
                                        detail="names differ only by Unicode normalization or case"))
            elif (there := self._not_a_file(m.path)) is not None:
                findings.append(Finding(FindingKind.UNREADABLE, m.path, expected=_expected_text(m), actual=there))
            else:
                findings.append(Finding(FindingKind.MISSING, m.path, expected=_expected_text(m), actual="absent"))
        severity = Severity.WARNING if self.options.allow_unexpected else Severity.ERROR
        unread = self.manifest.unattributed
        if unread:  # an unlisted file may be on a manifest line that could not be read: no proof of a failure
            severity = Severity.WARNING
        for e in unexpected:
            if e.path in paired:
                continue
            if e.problem is not None:
                findings.append(Finding(FindingKind.UNREADABLE, e.path, expected="not listed", actual=e.problem,
                                        severity=severity))
                continue
            findings.append(Finding(FindingKind.UNEXPECTED, e.path, expected="not listed",
                                    actual=f"size {e.size}" if e.size is not None else "present", severity=severity,
                                    detail=f"{unread} manifest entr{'y' if unread == 1 else 'ies'} could not be "
                                           "read: it may be listed there" if unread else None))

    def _not_a_file(self, path: str) -> str | None:
        """Why a listed path that the listing did not yield is there all the same (a folder...), or None.
        Asked of sources without a round trip per path only (a local export)."""
        if self.source.capabilities.latency_bound:
            return None
        try:
            entry = self.source.stat(path)
        except OSError:
            return None
        if entry is None or entry.problem is None:
            return None
        return "a directory, not a file" if entry.problem == "a directory" else entry.problem

    # -- fixity -------------------------------------------------------------------------
    def _plan(self, m: ManifestEntry, e: Entry) -> tuple[str, ...]:
        """For one matched pair: record what needs no read, or return the algorithms to compute."""
        r = self.report
        if e.problem is not None:
            kind = FindingKind.UNSAFE_PATH if e.type is EntryType.SYMLINK else FindingKind.UNREADABLE
            r.findings.append(Finding(kind, m.path, expected=_expected_text(m), actual=e.problem))
            return ()
        if m.size is not None and e.size is not None and m.size != e.size:
            r.findings.append(Finding(FindingKind.SIZE_MISMATCH, m.path, expected=str(m.size), actual=str(e.size)))
            return ()
        key = m.algorithms
        algorithms = self._choice.get(key)
        if algorithms is None:
            algorithms = self._choice[key] = tuple(digests.choose(key, self.options.algorithms))
        shard = self.options.sample
        if shard is not None and getattr(shard, "exclusive", False) and m.path not in shard:
            return ()  # another shard's entry (docs/scale.md): its record, size-only or hashed, is that shard's
        if not self.options.fixity or not algorithms:
            self._collect(_Outcome(Verified(m, e.size, {}, Tier.SIZE_ONLY, self.clock()), None, 0))
            return ()
        if e.hashed and all(a in e.digests for a in algorithms):
            # digests reversib computed from every byte while listing (an archive's members): a download
            self._collect(self._judge(m, e, {a: e.digests[a] for a in algorithms}, e.size or 0, None))
            return ()
        if self.options.sample is not None and m.path not in self.options.sample:
            r.not_sampled_files += 1  # docs/coverage.md: neither verified nor a finding
            r.not_sampled_bytes += e.size or m.size or 0
            return ()
        return algorithms

    def _buffer(self) -> bytearray:
        buf: bytearray | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(digests.CHUNK)
        return buf

    def _download(self, m: ManifestEntry, e: Entry, algorithms: tuple[str, ...]) -> _Outcome:
        if self._cheap_algorithms:
            cheap = tuple(a for a in algorithms if a in self._cheap_algorithms)
            if cheap or m.path in self.options.previous:
                outcome = self._without_download(m, e, cheap)
                if outcome is not None:
                    return outcome
        try:
            stream = self.source.open_range(m.path)
        except OSError as exc:
            return self._judge(m, e, None, 0, exc.strerror or str(exc))
        return self._hash_opened(m, e, algorithms, stream)

    def _download_batch(self, batch: list[tuple[ManifestEntry, Entry, tuple[str, ...]]]) -> list[_Outcome]:
        """Small files of a source declaring `batch_files`, opened together (`Source.open_many`), each then
        judged exactly as `_download` judges one."""
        out: list[_Outcome] = []
        opened = self.source.open_many([m.path for m, _, _ in batch])
        for (m, e, algorithms), (_, got) in zip(batch, opened, strict=True):
            if isinstance(got, OSError):
                out.append(self._judge(m, e, None, 0, got.strerror or str(got)))
            else:
                out.append(self._hash_opened(m, e, algorithms, got))
        return out

    def _hash_opened(self, m: ManifestEntry, e: Entry, algorithms: tuple[str, ...], stream: GuardedStream) -> _Outcome:
        blocks = BlockHasher(self.options.block_size) if self.options.block_size else None
        try:
            with stream:
                got, nbytes = digests.hash_stream(stream, list(algorithms), self._buffer(), blocks)
                extra = getattr(stream, "extra_digests", None)
        except Cancelled:
            raise
        except OSError as exc:
            return self._judge(m, e, None, 0, exc.strerror or str(exc))
        outcome = self._judge(m, e, got, nbytes, None)
        v = outcome.verified
        if blocks is not None and v is not None and outcome.finding is None:
            v.blocks = blocks
        if extra and v is not None and outcome.finding is None:  # composite values, for later runs
            stamp = dt.datetime.fromtimestamp(v.verified_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            outcome = outcome._replace(verified=Verified(m, v.size, {**v.digests, **extra, PARTS_AT: stamp},
                                                         v.tier, v.verified_at, v.blocks))
        if (outcome.finding is not None and outcome.finding.kind is FindingKind.DIGEST_MISMATCH
                and self.source.capabilities.recheck_mismatch):
            return self._recheck(m, algorithms, got, outcome)
        return outcome

    def _recheck(self, m: ManifestEntry, algorithms: tuple[str, ...], first: dict[str, str],
                 outcome: _Outcome) -> _Outcome:
        """Download a mismatching entry once more (sources declaring `recheck_mismatch`): a match means the
        first transfer was corrupted (a warning); the same digest again confirms the stored data is wrong."""
        finding = outcome.finding
        assert finding is not None
        try:
            with self.source.open_range(m.path) as stream:
                again, nbytes = digests.hash_stream(stream, list(algorithms), self._buffer())
        except Cancelled:
            raise
        except OSError as exc:
            return outcome._replace(finding=dataclasses.replace(
                finding, detail=f"a second download failed: {exc.strerror or exc}"))
        if nbytes == outcome.nbytes and all(m.digests.get(a) == h for a, h in again.items()):
            before = outcome.verified
            verified = Verified(m, before.size, None, before.tier, before.verified_at) if before is not None else None
            return _Outcome(verified, dataclasses.replace(finding, severity=Severity.WARNING,
                                                          detail="transient: second download matched"), nbytes)
        detail = "confirmed by a second download" if again == first else \
            f"a second download gave yet another digest ({_short(again)})"
        return outcome._replace(finding=dataclasses.replace(finding, detail=detail))

    def _without_download(self, m: ManifestEntry, e: Entry, algorithms: tuple[str, ...]) -> _Outcome | None:
        """Compare with digests the source gives without a download; None to fall back to a download."""
        try:
            answer = self.source.digests_without_download(e, algorithms)
        except Cancelled:
            raise
        except OSError:
            return None
        if answer is None or Tier(answer.tier) not in self.options.accept:
            return None
        got = {a: h for a, h in answer.digests.items() if a in m.digests}
        if not got:
            return self._composite(m, e, answer) if answer.composite else None
        verified = Verified(m, e.size, got, Tier(answer.tier), self.clock())
        bad = [a for a, h in got.items() if m.digests[a] != h]
        if bad:
            return _Outcome(verified, Finding(FindingKind.DIGEST_MISMATCH, m.path,
                                              expected=_short({a: m.digests[a] for a in bad}),
                                              actual=_short({a: got[a] for a in bad}),
                                              detail=f"{answer.tier}: {answer.detail or 'no download'}"), 0)
        return _Outcome(verified, None, 0)

    def _composite(self, m: ManifestEntry, e: Entry, answer: StoredDigests) -> _Outcome | None:
        """Composite values (e.g. an S3 multipart ETag) equal to those derived from the part digests of the
        entry's last full download, which matched this manifest: verified without a download.  Any value
        not recorded or different, or a recorded download that does not match the manifest: None."""
        before = self.options.previous.get(m.path)
        if not before or PARTS_AT not in before or any(before.get(k) != v for k, v in answer.composite.items()):
            return None
        recorded = {a: before[a] for a in m.digests if a in before}
        if not recorded or any(m.digests[a] != h for a, h in recorded.items()):
            return None
        how = f"{answer.detail or 'composite values'} compared with the part digests of the full download of " \
              f"{before[PARTS_AT]}"
        return _Outcome(Verified(m, e.size, {**before, COMPARED: how}, Tier(answer.tier), self.clock()), None, 0)

    def _judge(self, m: ManifestEntry, e: Entry, got: dict[str, str] | None, nbytes: int,
               error: str | None) -> _Outcome:
        """Turn what a read produced into a verified entry and/or a finding."""
        if got is None:
            return _Outcome(None, Finding(FindingKind.UNREADABLE, m.path, expected=_expected_text(m),
                                          actual=f"read failed: {error}"), 0)
        size = e.size if e.size is not None else m.size
        if size is not None and nbytes != size:
            return _Outcome(None, Finding(FindingKind.UNREADABLE, m.path, expected=f"{size} bytes",
                                          actual=f"{nbytes} bytes read (file changed or was cut while reading)"),
                            nbytes)
        if m.matches_exactly(got):  # the common case, in one comparison: digests read from the manifest
            return _Outcome(Verified(m, size if size is not None else nbytes, None, Tier.DOWNLOADED, self.clock()),
                            None, nbytes)
        bad = m.mismatches(got)
        kept = None if not bad and len(got) == len(m.algorithms) else got  # equal: read from the manifest
        verified = Verified(m, size if size is not None else nbytes, kept, Tier.DOWNLOADED, self.clock())
        if bad:
            expected = m.digests
            return _Outcome(verified, Finding(FindingKind.DIGEST_MISMATCH, m.path,
                                              expected=_short({a: expected[a] for a in bad}),
                                              actual=_short({a: got[a] for a in bad})), nbytes)
        return _Outcome(verified, None, nbytes)

    def _collect(self, outcome: _Outcome) -> None:
        r = self.report
        if outcome.finding is not None:
            r.findings.append(outcome.finding)
        v = outcome.verified
        if v is not None:
            r.verified.append(v)
            tier = v.tier.value
            r.tiers[tier] = r.tiers.get(tier, 0) + 1
            r.files_verified += 1
            r.bytes_verified += outcome.nbytes
            req = self.options.require_tier
            if req is not None and v.tier.rank < req.rank:
                r.findings.append(Finding(FindingKind.TIER_INSUFFICIENT, v.path, expected=req.value,
                                          actual=v.tier.value))
        if self.progress is not None:
            self.progress(outcome.nbytes, 1)


class _Dispatcher:
    """Where each read runs, so that both cores work and memory stays bounded.

    * large files, and every file of a latency-bound source: a thread pool (reads and hashlib
      release the GIL on large buffers; network waits overlap); small files of a source declaring
      `Capabilities.batch_files` go to it in batches (`Source.open_many`: one task, a few round trips);
    * small local files: inline in this thread, and -- once there are enough of them to pay for
      it -- in batches to one helper process (`reversib.hashworker`), so two cores hash at once.
    Results are always collected in this thread; at most a few tasks and batches are in flight.
    """

    BATCH_FILES = 256
    BATCH_BYTES = 16 << 20
    MIN_FILES_FOR_PROCESS = 2000

    def __init__(self, v: Verifier):
        self.v = v
        caps = v.source.capabilities
        self.latency_bound = caps.latency_bound
        self.workers = max(1, caps.parallelism if caps.latency_bound and caps.parallelism else v.options.parallelism)
        if v.options.max_connections:
            self.workers = min(self.workers, v.options.max_connections)
        self.threads: ThreadPoolExecutor | None = None
        self.pending: deque[Future[_Outcome] | Future[list[_Outcome]]] = deque()
        # small files of a source that reads them better together (open_many), and their listed bytes
        self.batch_files = caps.batch_files if caps.batch_files > 1 and not v._cheap_algorithms else 0
        self.batch_file_max = caps.batch_file_max
        self.small: list[tuple[ManifestEntry, Entry, tuple[str, ...]]] = []
        self.small_bytes = 0
        self.root = v.source.process_root() if self.workers > 1 and not self.latency_bound else None
        self.use_process = self.root is not None and len(v.manifest.entries) >= self.MIN_FILES_FOR_PROCESS \
            and not v.options.block_size  # the helper computes no block digests
        self.processes: Any = None
        self.batches: deque[tuple[Future[list[Any]], dict[str, tuple[ManifestEntry, Entry]]]] = deque()
        self.batch: list[tuple[str, tuple[str, ...]]] = []
        self.batch_pairs: dict[str, tuple[ManifestEntry, Entry]] = {}
        self.batch_bytes = 0
        self._submitted = 0

    def __enter__(self) -> _Dispatcher:
        return self

    def submit(self, m: ManifestEntry, e: Entry, algorithms: tuple[str, ...]) -> None:
        v = self.v
        size = e.size or 0
        if self.batch_files and e.size is not None and size <= self.batch_file_max:
            self.small.append((m, e, algorithms))
            self.small_bytes += size
            if len(self.small) >= self.batch_files or self.small_bytes >= BATCH_READ_BYTES:
                self._send_small()
        elif self.latency_bound or size > INLINE_MAX or v._cheap_algorithms:
            self._run(self._pool().submit(v._download, m, e, algorithms))
        elif self.use_process and len(self.batches) < 2:
            self.batch.append((m.path, algorithms))
            self.batch_pairs[m.path] = (m, e)
            self.batch_bytes += size
            if len(self.batch) >= self.BATCH_FILES or self.batch_bytes >= self.BATCH_BYTES:
                self._send_batch()
        else:
            v._collect(v._download(m, e, algorithms))
        self._submitted += 1
        if self.pending or (self.batches and self._submitted % 32 == 0):
            self._drain(block=False)

    def _pool(self) -> ThreadPoolExecutor:
        if self.threads is None:
            self.threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="reversib-verify")
        return self.threads

    def _run(self, future: Future[_Outcome] | Future[list[_Outcome]]) -> None:
        """Queue a task's future; at most two per worker wait (memory stays bounded)."""
        self.pending.append(future)
        while len(self.pending) >= self.workers * 2:
            self._take(self.pending.popleft().result())

    def _take(self, result: _Outcome | list[_Outcome]) -> None:
        for outcome in result if isinstance(result, list) else (result,):
            self.v._collect(outcome)

    def _send_small(self) -> None:
        if self.small:
            batch, self.small, self.small_bytes = self.small, [], 0
            self._run(self._pool().submit(self.v._download_batch, batch))

    def _send_batch(self) -> None:
        if not self.batch:
            return
        if self.processes is None:
            from reversib.hashworker import HelperProcess

            self.processes = HelperProcess()
        assert self.root is not None
        future = self.processes.submit(self.root, self.batch)
        self.v.report.helper_files += len(self.batch)
        self.batches.append((future, self.batch_pairs))
        self.batch, self.batch_pairs, self.batch_bytes = [], {}, 0

    def _drain(self, block: bool) -> None:
        v = self.v
        while self.pending and (block or self.pending[0].done()):
            self._take(self.pending.popleft().result())
        while self.batches and (block or self.batches[0][0].done()):
            future, pairs = self.batches.popleft()
            for path, got, nbytes, error in future.result():
                m, e = pairs[path]
                v.report.helper_bytes += nbytes
                v._collect(v._judge(m, e, got, nbytes, error))
            v.source.cancel.check()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                # Files still waiting for a batch are hashed here rather than in a new batch.
                for path, algorithms in self.batch:
                    m, e = self.batch_pairs[path]
                    self.v._collect(self.v._download(m, e, algorithms))
                self.batch = []
                self._send_small()
                self._drain(block=True)
            else:
                self.v.source.cancel.cancel("verification aborted")
        finally:
            for f in self.pending:
                f.cancel()
            if self.threads is not None:
                self.threads.shutdown(wait=True, cancel_futures=True)
            if self.processes is not None:
                self.processes.close(kill=exc_type is not None)


def _expected_text(m: ManifestEntry) -> str:
    parts = []
    if m.size is not None:
        parts.append(f"size {m.size}")
    if m.digests:
        parts.append(_short(m.digests))
    return ", ".join(parts) or "present"


class _State(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def digests(self) -> Mapping[str, str]: ...


def previous_composites(states: Iterable[_State]) -> dict[str, Mapping[str, str]]:
    """`VerifyOptions.previous` from a check's entry states (History.entry_states): only the entries whose
    last full download recorded composite values, so memory follows the multipart objects alone."""
    return {s.path: s.digests for s in states if PARTS_AT in s.digests}


def verify(source: Source, manifest: Manifest, options: VerifyOptions | None = None, *,
           clock: Callable[[], float] = time.time, progress: Progress | None = None) -> VerifyReport:
    return Verifier(source, manifest, options or VerifyOptions(), clock=clock, progress=progress).run()

