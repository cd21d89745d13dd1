"""Read every member of an archive once: names checked, data hashed, limits enforced, nothing extracted.

A tar is read as a stream (tarfile over a forward-only reader, one pass, bounded memory); a zip through range reads
of its file (zipfile over `RangeFile`).  Hostile members are findings, never files: an absolute name
or one with `..` (`unsafe_path`), a device or fifo (`unsafe_path`), a symlink or hard link leaving the
archive (an entry the verifier reports as `unsafe_path`), a name twice (`duplicate_entry`), and a
decompression bomb (`archive_limit`).  A member or stream that cannot be read to its end is
`archive_corrupt`.
"""

from __future__ import annotations

import io
import itertools
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from reversib import digests
from reversib.archives.options import ArchiveLimits
from reversib.archives.pipeline import CHUNK, LayerError
from reversib.model import Finding, FindingKind
from reversib.sources.base import Entry, EntryType, Source

RATIO_FLOOR = 64 << 20  # the expansion ratio is judged once this much has expanded
CAPTURE_MAX = 64 << 20  # members kept in memory (manifest candidates): at most this much in all
HEADER_MAX = 4 << 20  # the header blocks of one tar member (long name, PAX records, sparse map): at most this much
GLOBAL_PAX_MAX = 64 << 10  # the global PAX records (`g` headers) of a whole tar: kept by tarfile until its end
NAME_MAX = 64 << 10  # a member name or link target longer than this is refused (unsafe_path)
SHOWN_MAX = 256  # characters of a refused member name kept in its finding


def shown(name: str) -> str:
    """A member name as a finding may store it: a hostile name of megabytes is cut."""
    return name if len(name) <= SHOWN_MAX else f"{name[:SHOWN_MAX]}... ({len(name)} characters)"


@dataclass
class ScanResult:
    entries: dict[str, Entry] = field(default_factory=dict)  # member path -> entry (digests filled)
    findings: list[Finding] = field(default_factory=list)  # paths are member names; None: the archive itself
    complete: bool = False  # the archive was read to its end (every member reached)
    unreadable: set[str] = field(default_factory=set)  # members named by an archive_corrupt finding
    algorithms: tuple[str, ...] = ()
    captured: dict[str, bytes] = field(default_factory=dict)
    data_of: dict[str, str] = field(default_factory=dict)  # member path -> member whose data it has (links)
    # member path (before any root is cut) -> which copy was hashed, for a name appearing more than once: the
    # n-th regular member of that name in a tar, the local header offset in a zip.  Reading the member again
    # (a dump for the dump checks) takes that copy: the one verified.
    copy_of: dict[str, int] = field(default_factory=dict)
    members: int = 0
    expanded_bytes: int = 0
    container: str = "tar"


class _Stop(Exception):
    """Reading stops: the finding says why."""

    def __init__(self, finding: Finding):
        super().__init__(finding.actual)
        self.finding = finding


_NAMED = {"sha512sums": "sha512", "sha384sums": "sha384", "sha256sums": "sha256", "sha224sums": "sha224",
          "sha1sums": "sha1", "md5sums": "md5", "b2sums": "blake2b", ".sha512": "sha512", ".sha256": "sha256",
          ".sha1": "sha1", ".md5": "md5", ".b2": "blake2b"}


def algorithms_named(path: str) -> set[str]:
    """The digest algorithm a manifest's name announces (SHA512SUMS, x.sha512, BagIt manifest-sha512.txt)."""
    name = posixpath.basename(path).lower()
    if name.startswith("manifest-") and name.endswith(".txt"):
        alg = name[len("manifest-"):-len(".txt")]
        return {alg} if digests.is_known(alg) else set()
    for key, alg in _NAMED.items():
        if name == key or (key.startswith(".") and name.endswith(key)):
            return {alg}
    return set()


def clean_name(raw: str) -> tuple[str | None, str | None]:
    """(path, None) for a safe member name ("" for the root itself), or (None, why it is unsafe)."""
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":" and raw[0].isalpha()):
        return None, "absolute member name"
    parts = [p for p in raw.replace("\\", "/").split("/") if p not in ("", ".")] if "\\" in raw else \
        [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "member name with '..' (leaves the archive)"
    return "/".join(parts), None


class _Reader:
    """What both containers share: limits, hashing, capture, findings."""

    def __init__(self, algorithms: tuple[str, ...], limits: ArchiveLimits, compressed: Callable[[], int],
                 capture: Callable[[str, int], bool], source: Source, progress: Callable[[int], None] | None):
        self.algorithms = algorithms
        self.limits = limits
        self.compressed = compressed
        self.capture = capture
        self.source = source
        self.progress = progress
        self.result = ScanResult(algorithms=algorithms)
        self._seen: dict[str, int] = {}
        self._buf = bytearray(CHUNK)
        self._links: list[tuple[str, str]] = []  # (symlink path, normalized target)
        self.hashed_payload = False  # a member that is no manifest candidate was hashed
        self.stream_counted = False  # tar: every byte of the stream (headers too) is counted by `consumed`
        self.captured_bytes = 0  # manifest candidates kept in memory, all together at most CAPTURE_MAX

    def finding(self, kind: FindingKind, path: str | None, expected: str, actual: str) -> None:
        self.result.findings.append(Finding(kind, path, expected=expected, actual=actual))

    def count_member(self) -> None:
        self.result.members += 1
        if self.result.members > self.limits.max_members:
            raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, None, expected=f"at most {self.limits.max_members} members "
                                "(archive.limits.max_members)", actual="more members"))

    def name(self, raw: str) -> str | None:
        if len(raw) > NAME_MAX:
            self.finding(FindingKind.UNSAFE_PATH, shown(raw), expected="a member path inside the archive",
                         actual=f"a member name of {len(raw)} characters (more than {NAME_MAX})")
            return None
        path, why = clean_name(raw)
        if why is not None:
            self.finding(FindingKind.UNSAFE_PATH, shown(raw), expected="a member path inside the archive", actual=why)
            return None
        return path or None

    def consumed(self, n: int) -> None:
        """`n` more bytes of the decompressed stream were read (member data, headers, padding): they count
        toward max_total_size and max_ratio, so that a bomb made of headers or empty members is stopped too."""
        self.result.expanded_bytes += n
        self.check_total(0)
        self.check_ratio()

    def note_name(self, path: str) -> None:
        n = self._seen.get(path, 0) + 1
        self._seen[path] = n
        if n == 2:
            self.finding(FindingKind.DUPLICATE_ENTRY, path, expected="one member of this name",
                         actual="the name appears more than once in the archive (extraction keeps the last)")

    def check_total(self, size: int) -> None:
        total = self.result.expanded_bytes + size
        if total > self.limits.max_total_size:
            raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, None,
                                expected=f"members expanding to at most {self.limits.max_total_size} bytes "
                                         "(archive.limits.max_total_size)",
                                actual=f"more than {self.limits.max_total_size} bytes"))

    def check_ratio(self) -> None:
        expanded = self.result.expanded_bytes
        if expanded < RATIO_FLOOR:
            return
        packed = max(1, self.compressed())
        if expanded / packed > self.limits.max_ratio:
            raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, None,
                                expected=f"at most {self.limits.max_ratio:g} bytes expanded per archive byte "
                                         "(archive.limits.max_ratio)",
                                actual=f"{expanded} bytes from {packed} (a decompression bomb?)"))

    def hash_member(self, path: str, stream: IO[bytes], size: int, mtime: float | None) -> None:
        """Read one member's data to its end through every digest; record its entry."""
        self.check_total(size)
        keep = size <= CAPTURE_MAX - self.captured_bytes and self.capture(path, size)
        if keep and not self.hashed_payload:
            # A manifest before any other member (`tar --sort=name` puts SHA256SUMS first): the digests its
            # name announces are computed from here on, so that the archive is read once.
            extra = algorithms_named(path)
            if extra - set(self.algorithms):
                self.algorithms = tuple(sorted(extra | set(self.algorithms)))
                self.result.algorithms = self.algorithms
        elif not keep:
            self.hashed_payload = True
        kept: list[bytes] = []
        hashers = [digests.new(a) for a in self.algorithms]
        view = memoryview(self._buf)
        n_read = 0
        while True:
            self.source.cancel.check()
            n = stream.readinto(view)  # type: ignore[attr-defined]
            if not n:
                break
            chunk = view[:n]
            for h in hashers:
                h.update(chunk)
            if keep:
                kept.append(bytes(chunk))
            n_read += n
            if self.progress is not None:
                self.progress(n)
            if n_read > size:
                break
            if not self.stream_counted:
                self.result.expanded_bytes += n
                self.check_total(0)
                self.check_ratio()
        if n_read != size:
            raise _Stop(Finding(FindingKind.ARCHIVE_CORRUPT, path, expected=f"{size} bytes",
                                actual=f"{n_read} bytes could be read"))
        self.result.entries[path] = Entry(path, size, mtime, EntryType.FILE,
                                          digests={a: h.hexdigest() for a, h in zip(self.algorithms, hashers,
                                                                                   strict=True)}, hashed=True)
        self.result.data_of.pop(path, None)
        if keep:
            self.result.captured[path] = b"".join(kept)
            self.captured_bytes += size

    def link(self, path: str, target_raw: str, *, hard: bool) -> None:
        """A symlink (relative to its folder) or hard link (relative to the root) inside the archive."""
        if target_raw.startswith("/"):
            self.unsafe_link(path, target_raw, hard)
            return
        base = "" if hard else posixpath.dirname(path)
        target = posixpath.normpath(posixpath.join(base, target_raw)) if target_raw else "."
        if target == ".." or target.startswith("../"):
            self.unsafe_link(path, target_raw, hard)
            return
        target = "" if target == "." else target
        if hard:
            src = self.result.entries.get(target)
            if src is None or src.type is not EntryType.FILE:
                self.result.entries[path] = Entry(path, None, None, EntryType.OTHER,
                                                  problem=f"hard link to {target_raw!r}, which is no earlier "
                                                          "member of the archive")
                return
            self.result.entries[path] = Entry(path, src.size, src.mtime, EntryType.FILE, dict(src.digests),
                                              hashed=True)
            self.result.data_of[path] = self.result.data_of.get(target, target)
            if target in self.result.captured:
                self.result.captured[path] = self.result.captured[target]
            return
        self._links.append((path, target))
        self.result.entries[path] = Entry(path, None, None, EntryType.SYMLINK, problem="unresolved")

    def unsafe_link(self, path: str, target_raw: str, hard: bool) -> None:
        kind = "hard link" if hard else "symlink"
        self.result.entries[path] = Entry(path, None, None, EntryType.SYMLINK,
                                          problem=f"{kind} to {shown(target_raw)!r} leaves the archive")

    def resolve_links(self) -> None:
        entries = self.result.entries
        dirs = {posixpath.dirname(p) for p in entries}
        for path, target in self._links:
            seen = {path}
            t = target
            while True:
                e = entries.get(t)
                if e is None or e.type is not EntryType.SYMLINK or t in seen:
                    break
                nxt = next((tt for pp, tt in self._links if pp == t), None)
                if nxt is None:
                    break
                seen.add(t)
                t = nxt
            e = entries.get(t)
            if e is not None and e.type is EntryType.FILE:
                entries[path] = Entry(path, e.size, e.mtime, EntryType.FILE, dict(e.digests), hashed=True)
                self.result.data_of[path] = self.result.data_of.get(t, t)
                if t in self.result.captured:
                    self.result.captured[path] = self.result.captured[t]
            elif t in dirs or t == "":
                entries[path] = Entry(path, None, None, EntryType.SYMLINK, problem=f"symlink to the folder {target!r}")
            else:
                entries[path] = Entry(path, None, None, EntryType.SYMLINK,
                                      problem=f"dangling symlink to {target!r} (no such member)")


def scan_tar(stream: IO[bytes], reader: _Reader) -> ScanResult:
    """One pass over a (decrypted, decompressed) tar stream."""
    r = reader.result
    r.container = "tar"
    reader.stream_counted = True
    forward = _Forward(stream, reader.consumed)
    try:
        # "r:" over a forward-only stream rather than tarfile's "r|": member data is read straight from the
        # stream (tarfile's _Stream copies every byte two or three times)
        tar = tarfile.open(fileobj=forward, mode="r:")  # type: ignore[call-overload]  # noqa: SIM115
    except LayerError as exc:
        _layer(reader, exc)
        return r
    except _Stop as stop:
        r.findings.append(stop.finding)
        return r
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        reader.finding(FindingKind.ARCHIVE_CORRUPT, None, expected="a tar archive", actual=f"not a tar stream: {exc}")
        return r
    current: str | None = None
    try:
        while True:
            current = None
            forward.header_left = HEADER_MAX
            ti = tar.next()
            forward.header_left = None
            tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header otherwise
            if tar.pax_headers and sum(len(k) + len(v) for k, v in tar.pax_headers.items()) > GLOBAL_PAX_MAX:
                # global PAX records pile up in tarfile for the rest of the archive, copied into every member
                raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, None,
                                    expected=f"global PAX records of at most {GLOBAL_PAX_MAX} bytes in all",
                                    actual="more than that (a header bomb?)"))
            if ti is None:
                r.complete = True
                break
            reader.count_member()
            path = reader.name(ti.name)
            if path is None:
                continue
            if ti.isdir():
                continue
            reader.note_name(path)
            if len(ti.linkname) > NAME_MAX:
                r.entries.pop(path, None)
                reader.finding(FindingKind.UNSAFE_PATH, path, expected="a link target inside the archive",
                               actual=f"a link target of {len(ti.linkname)} characters (more than {NAME_MAX})")
                continue
            if ti.isreg():
                current = path
                r.copy_of[path] = r.copy_of.get(path, 0) + 1
                if ti.sparse is None:
                    data: IO[bytes] = _Member(tar.fileobj, ti.offset_data, ti.size)  # type: ignore[assignment]
                else:
                    data = tar.extractfile(ti)  # type: ignore[assignment]
                reader.hash_member(path, data, ti.size, float(ti.mtime))
            elif ti.issym():
                reader.link(path, ti.linkname, hard=False)
            elif ti.islnk():
                reader.link(path, ti.linkname, hard=True)
            else:
                what = "character device" if ti.ischr() else "block device" if ti.isblk() else \
                    "fifo" if ti.isfifo() else f"member of tar type {ti.type!r}"
                r.entries.pop(path, None)
                reader.finding(FindingKind.UNSAFE_PATH, path, expected="a regular file, folder or link",
                               actual=what)
    except _Stop as stop:
        r.findings.append(stop.finding)
        if stop.finding.kind is FindingKind.ARCHIVE_CORRUPT and stop.finding.path:
            r.unreadable.add(stop.finding.path)
    except LayerError as exc:
        _layer(reader, exc, current)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        where = f"member {current}" if current else "a member header"
        reader.finding(FindingKind.ARCHIVE_CORRUPT, current, expected="a tar archive readable to its end",
                       actual=f"{where}: {exc}")
        if current:
            r.unreadable.add(current)
    reader.resolve_links()
    return r


class _Forward:
    """A forward-only file for tarfile's seekable mode: `seek` may only skip ahead (by reading), which is all
    tarfile does when every member's data is read in order.  Every byte read is reported to `consumed`;
    while a member's header is read (`header_left` set), a read beyond HEADER_MAX is refused before it is made
    (a GNU long name or PAX header of hundreds of megabytes)."""

    def __init__(self, raw: IO[bytes], consumed: Callable[[int], None] | None = None):
        self.raw = raw
        self.pos = 0
        self.consumed = consumed
        self.header_left: int | None = HEADER_MAX  # tarfile.open reads the first header

    def _count(self, n: int) -> None:
        self.pos += n
        if self.consumed is not None and n:
            self.consumed(n)

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self.pos
        elif whence != 0:
            raise io.UnsupportedOperation("an archive stream cannot seek from its end")
        if pos < self.pos:
            raise io.UnsupportedOperation(f"an archive stream cannot seek back (from {self.pos} to {pos})")
        while self.pos < pos:
            got = len(self.raw.read(min(pos - self.pos, CHUNK)))
            if not got:
                break  # tarfile's next read reports the end of data
            self._count(got)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if self.header_left is not None:
            if n < 0 or n > self.header_left:
                raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, None,
                                    expected=f"member headers (long name, PAX records, sparse map) of at most "
                                             f"{HEADER_MAX} bytes",
                                    actual="a member header of more than that (a header bomb?)"
                                    if n < 0 else f"a member header of {HEADER_MAX - self.header_left + n} bytes "
                                                  "or more (a header bomb?)"))
            self.header_left -= n
        data = self.raw.read(n)
        self._count(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = int(self.raw.readinto(buf) or 0)  # type: ignore[attr-defined]
        self._count(n)
        return n


class _Member:
    """The data of one (non-sparse) member, read straight from the archive stream."""

    def __init__(self, f: _Forward, offset: int, size: int):
        f.seek(offset)
        self.f = f
        self.left = size

    def readinto(self, buf: Any) -> int:
        if self.left <= 0:
            return 0
        view = memoryview(buf)
        n = self.f.readinto(view[: self.left] if len(view) > self.left else view)
        if not n:
            raise tarfile.ReadError("unexpected end of data")
        self.left -= n
        return n


def _layer(reader: _Reader, exc: LayerError, current: str | None = None) -> None:
    if exc.layer == "source":
        raise exc
    where = f" (in member {current})" if current else ""
    reader.finding(FindingKind.ARCHIVE_CORRUPT, current, expected="an archive readable to its end",
                   actual=f"{exc}{where}")
    if current:
        reader.result.unreadable.add(current)


class RangeFile(io.RawIOBase):
    """A seekable view of one source file through range reads, for zipfile.  Reads continue one open
    stream while they are sequential.  When `algorithms` are given, the file's own digests are computed
    along the way (gaps and the tail are read once more at the end: `finish_digests`)."""

    def __init__(self, source: Source, path: str, size: int, algorithms: tuple[str, ...] = ()):
        super().__init__()
        self.source = source
        self.path = path
        self.size = size
        self.pos = 0
        self._stream: Any = None
        self._stream_pos = -1
        self._hashers = [digests.new(a) for a in algorithms]
        self._algorithms = algorithms
        self._cursor = 0  # every byte before it went through the hashers
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf: Any) -> int:
        if self.pos >= self.size:
            return 0
        if self._stream is None or self._stream_pos != self.pos:
            self._close_stream()
            self._stream = self.source.open_range(self.path, self.pos)
            self._stream_pos = self.pos
        n = int(self._stream.readinto(buf) or 0)
        if n:
            self._hash(self.pos, memoryview(buf)[:n])
        self.pos += n
        self._stream_pos += n
        self.bytes_read += n
        return n

    def _hash(self, at: int, data: memoryview) -> None:
        if not self._hashers or at + len(data) <= self._cursor:
            return
        if at > self._cursor:
            if at - self._cursor > (1 << 20):
                return  # a jump (the central directory): the gap is read at the end
            self._fill(at)
        skip = self._cursor - at
        for h in self._hashers:
            h.update(data[skip:])
        self._cursor = at + len(data)

    def _fill(self, upto: int) -> None:
        if upto <= self._cursor:
            return
        with self.source.open_range(self.path, self._cursor, upto - self._cursor) as s:
            while self._cursor < upto and (chunk := s.read(min(CHUNK, upto - self._cursor))):
                for h in self._hashers:
                    h.update(chunk)
                self._cursor += len(chunk)
                self.bytes_read += len(chunk)

    def finish_digests(self) -> dict[str, str]:
        if not self._hashers:
            return {}
        self._fill(self.size)
        if self._cursor != self.size:
            raise OSError(f"{self.path}: the file ended at {self._cursor} bytes, {self.size} expected")
        return {a: h.hexdigest() for a, h in zip(self._algorithms, self._hashers, strict=True)}

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._close_stream()
        super().close()


def scan_zip(raw: RangeFile, reader: _Reader) -> ScanResult:
    r = reader.result
    r.container = "zip"
    try:
        zf = zipfile.ZipFile(io.BufferedReader(raw, CHUNK))  # type: ignore[arg-type]
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        reader.finding(FindingKind.ARCHIVE_CORRUPT, None, expected="a zip archive with its central directory",
                       actual=f"{exc} (truncated or not a zip)")
        return r
    with zf:
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        try:
            if len(infos) > reader.limits.max_members:
                reader.result.members = len(infos) - 1
                reader.count_member()
            reader.check_total(sum(i.file_size for i in infos))
            _zip_overlaps(infos)
            declared = sum(i.file_size for i in infos)
            if declared >= RATIO_FLOOR and declared / max(1, raw.size) > reader.limits.max_ratio:
                raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, None,
                                    expected=f"at most {reader.limits.max_ratio:g} bytes expanded per archive byte "
                                             "(archive.limits.max_ratio)",
                                    actual=f"members declare {declared} bytes in a {raw.size}-byte file"))
            for info in infos:
                reader.result.members += 1
                _zip_member(zf, info, reader)
            r.complete = True
        except _Stop as stop:
            r.findings.append(stop.finding)
    reader.resolve_links()
    return r


def _zip_overlaps(infos: list[zipfile.ZipInfo]) -> None:
    for a, b in itertools.pairwise(infos):
        end = a.header_offset + 30 + len(a.orig_filename.encode("utf-8", "surrogateescape")) + a.compress_size
        if end > b.header_offset:
            raise _Stop(Finding(FindingKind.ARCHIVE_LIMIT, a.orig_filename,
                                expected="members that do not overlap",
                                actual=f"its data overlaps the member {b.orig_filename!r} (an overlapping zip bomb)"))


def zip_name(info: zipfile.ZipInfo) -> str:
    """A member's name.  Without the UTF-8 flag zipfile decodes as cp437; Info-ZIP on Unix writes the
    file system's bytes (UTF-8 nowadays) without setting it: a name that is valid UTF-8 is read as such."""
    name = info.orig_filename
    if not info.flag_bits & 0x800:
        try:
            return name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return name
    return name


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, reader: _Reader) -> None:
    r = reader.result
    path = reader.name(zip_name(info))
    if path is None or info.is_dir():
        return
    reader.note_name(path)
    mode = info.external_attr >> 16
    mtime = _zip_mtime(info)
    if info.flag_bits & 0x1:
        r.entries[path] = Entry(path, info.file_size, mtime, EntryType.FILE,
                                problem="encrypted with a zip password (not the customer's key): cannot be read")
        return
    kind = stat.S_IFMT(mode) if info.create_system == 3 else 0
    if kind == stat.S_IFLNK:
        with zf.open(info) as f:
            target = f.read(4096).decode("utf-8", "surrogateescape")
        reader.link(path, target, hard=False)
        return
    if kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
        reader.finding(FindingKind.UNSAFE_PATH, path, expected="a regular file, folder or link",
                       actual="device, fifo or socket")
        return
    try:
        r.copy_of[path] = info.header_offset
        with zf.open(info) as f:
            reader.hash_member(path, f, info.file_size, mtime)
    except _Stop as stop:
        if stop.finding.kind is not FindingKind.ARCHIVE_CORRUPT:
            raise
        r.findings.append(stop.finding)
        r.unreadable.add(path)
    except NotImplementedError as exc:
        r.entries[path] = Entry(path, info.file_size, mtime, EntryType.FILE,
                                problem=f"compressed with a method reversib cannot read: {exc}")
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        reader.finding(FindingKind.ARCHIVE_CORRUPT, path, expected="a member readable to its end", actual=str(exc))
        r.unreadable.add(path)


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    import datetime as dt

    try:
        return dt.datetime(*info.date_time, tzinfo=dt.timezone.utc).timestamp()
    except ValueError:
        return None


def new_reader(algorithms: tuple[str, ...], limits: ArchiveLimits, compressed: Callable[[], int],
               capture: Callable[[str, int], bool], source: Source,
               progress: Callable[[int], None] | None = None) -> _Reader:
    return _Reader(algorithms, limits, compressed, capture, source, progress)
