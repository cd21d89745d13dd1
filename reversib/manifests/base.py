"""What every manifest parser returns, and the rules they share (path safety, ordering).

A parser reads through a `Source` (so a manifest on S3 or SFTP works like one on disk) and
returns a `Manifest`: the entries it could parse, sorted in canonical order and de-duplicated,
plus findings for what it could not accept (a malformed line, a hostile path, a duplicate).
Parsers never raise on bad content: bad content is a finding.  They raise `ManifestError` only
when the manifest as a whole cannot be read or understood (unreadable, empty, not this format).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reversib.model import Finding, FindingKind

MAX_LINE = 64 * 1024  # bytes; a longer manifest line is reported, never held in memory whole


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # control characters but tab and newline
# A path that is certainly safe (`path_problem`'s fast path): relative, components of one or more characters,
# none of them `.` or `..`, no control character at all, nothing that may read as a drive (`X:`).
_SAFE = re.compile(r"(?!.:)(?:(?!\.\.?/)[^/\x00-\x1f\x7f-\x9f]+/)*(?!\.\.?\Z)[^/\x00-\x1f\x7f-\x9f]+")


class ManifestError(Exception):
    """The manifest as a whole cannot be read or parsed: the run cannot conclude (outcome error)."""


_ALGS: dict[tuple[str, ...], tuple[str, ...]] = {}  # interned algorithm tuples, shared by all entries


def _to_raw(hexdigest: str) -> bytes | str:
    """Lowercase hex -> its bytes (half the memory); anything else is kept as given."""
    try:
        raw = bytes.fromhex(hexdigest)
    except ValueError:
        return hexdigest
    return raw if raw.hex() == hexdigest else hexdigest


def _to_hex(raw: bytes | str) -> str:
    return raw.hex() if isinstance(raw, bytes) else raw


class ManifestEntry:
    """One manifest entry.  Stored compactly (a manifest may list millions of files): the
    algorithm names are one shared tuple and a digest is kept as raw bytes, not a dict of hex
    strings, so an entry costs about a third of a dataclass holding a dict.  `digests` reads as a
    dict of lowercase hex."""

    __slots__ = ("_algs", "_hex", "line", "mtime", "path", "size")

    def __init__(self, path: str, size: int | None = None, digests: dict[str, str] | None = None,
                 mtime: float | None = None, line: int | None = None):
        self.path = path
        self.size = size
        self.mtime = mtime
        self.line = line
        self.digests = digests or {}

    @classmethod
    def single(cls, path: str, algorithms: tuple[str, ...], raw: bytes, line: int | None = None) -> ManifestEntry:
        """An entry with one digest given as raw bytes (`algorithms`: a one-name tuple), without the
        dict round trip of `__init__`: the parsers' fast path for the common line."""
        entry = cls.__new__(cls)
        entry.path = path
        entry.size = None
        entry.mtime = None
        entry.line = line
        entry._algs = _ALGS.setdefault(algorithms, algorithms)
        entry._hex = raw
        return entry

    @property
    def digests(self) -> dict[str, str]:
        raw = self._hex
        if not isinstance(raw, tuple):
            return {self._algs[0]: _to_hex(raw)}
        return {a: _to_hex(h) for a, h in zip(self._algs, raw, strict=True)}

    @digests.setter
    def digests(self, value: dict[str, str]) -> None:
        key = tuple(value)
        self._algs = _ALGS.setdefault(key, key)
        values = tuple(_to_raw(h) for h in value.values())
        self._hex: bytes | str | tuple[bytes | str, ...] = values[0] if len(values) == 1 else values

    def mismatches(self, got: dict[str, str]) -> list[str]:
        """Algorithms of `got` whose digest differs from this entry's (fast path: one digest)."""
        raw = self._hex
        if not isinstance(raw, tuple):
            alg = self._algs[0]
            return [a for a, h in got.items() if a != alg or _to_raw(h) != raw]
        expected = self.digests
        return [a for a, h in got.items() if expected.get(a) != h]

    def matches_exactly(self, got: dict[str, str]) -> bool:
        """True when `got` holds exactly this entry's algorithms, each with this entry's digest."""
        raw = self._hex
        if isinstance(raw, bytes) and len(got) == 1:
            return got.get(self._algs[0]) == raw.hex()
        return len(got) == len(self._algs) and not self.mismatches(got)

    def add_digest(self, algorithm: str, hexdigest: str) -> None:
        self.digests = {**self.digests, algorithm: hexdigest}

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self._algs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ManifestEntry):
            return NotImplemented
        return (self.path, self.size, self.digests, self.mtime, self.line) == \
            (other.path, other.size, other.digests, other.mtime, other.line)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"ManifestEntry(path={self.path!r}, size={self.size!r}, digests={self.digests!r}, "
                f"mtime={self.mtime!r}, line={self.line!r})")


@dataclass
class Manifest:
    format: str
    location: str
    entries: list[ManifestEntry]
    findings: list[Finding] = field(default_factory=list)
    # Paths (relative to the export root) that belong to the manifest itself: never `unexpected`.
    own_paths: set[str] = field(default_factory=set)
    # Paths the manifest mentions without a usable entry (duplicated, malformed): never `unexpected`.
    untrusted: set[str] = field(default_factory=set)
    # Entries that could not be read at all, not even their path: an unlisted file may be one of them, so
    # it is not proof of a failure (`unexpected` becomes a warning; the run is `error` by manifest_invalid).
    unattributed: int = 0
    # When set, only paths below this prefix can be `unexpected` (BagIt: "data/").
    unexpected_scope: str | None = None
    # sha256 of the manifest's bytes (for a bag: of its tag files, in name order).
    digest: str = ""
    # Dataset-level expectations carried by the manifest: min_files, min_bytes,
    # payload_oxum (bytes, files), and anything later issues add.
    expect: dict[str, Any] = field(default_factory=dict)


def path_problem(path: str) -> str | None:
    """Why a manifest path must never be opened, or None when it is safe.

    Safe paths are relative, `/`-separated, without empty, `.` or `..` components, NUL or
    control characters (tab and newline are allowed: coreutils escapes them unambiguously, and
    reversib escapes every name it prints).  (A leading `./` is stripped by the parsers before this check.)
    """
    if _SAFE.fullmatch(path):
        return None
    if path == "":
        return "empty path"
    if "\x00" in path:
        return "NUL character in path"
    if _CONTROL.search(path):
        return "control character in path"
    if path.startswith("/"):
        return "absolute path"
    if len(path) >= 2 and path[1] == ":" and path[0].isalpha():
        return "absolute (drive) path"
    parts = path.split("/")
    if ".." in parts:
        return "'..' component escapes the export root"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def strip_dot_slash(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path


def normalized_name(path: str) -> str:
    """The key under which two names are "the same" for `name_normalization` findings."""
    return unicodedata.normalize("NFC", path).casefold()


def finalize(manifest_format: str, location: str, raw: list[ManifestEntry], findings: list[Finding],
             rejected: Iterable[str] = (), **kwargs: Any) -> Manifest:
    """Check paths, sort in canonical order, report duplicates; return the Manifest.

    Entries with unsafe paths are dropped (reported as `unsafe_path`); every occurrence of a
    duplicated path is dropped and reported once as `duplicate_entry` (a manifest that says two
    things about one file cannot vouch for it)."""
    safe: list[ManifestEntry] = []
    for entry in raw:
        problem = path_problem(entry.path)
        if problem:
            findings.append(Finding(FindingKind.UNSAFE_PATH, entry.path, expected="a safe relative path",
                                    actual=problem, detail=_line(entry)))
        else:
            safe.append(entry)
    safe.sort(key=lambda e: e.path)
    unique: list[ManifestEntry] = []
    untrusted: set[str] = set(rejected)  # entries the parser refused, their path readable
    i = 0
    while i < len(safe):
        j = i + 1
        while j < len(safe) and safe[j].path == safe[i].path:
            j += 1
        if j - i == 1:
            unique.append(safe[i])
        else:
            group = safe[i:j]
            digests = {tuple(sorted(e.digests.items())) for e in group}
            lines = ", ".join(str(e.line) for e in group if e.line is not None)
            untrusted.add(safe[i].path)
            findings.append(Finding(
                FindingKind.DUPLICATE_ENTRY, safe[i].path, expected="listed once",
                actual=f"listed {len(group)} times" + (" with different digests" if len(digests) > 1 else ""),
                detail=f"lines {lines}" if lines else None))
        i = j
    for entry in unique:
        entry.line = None  # only needed for the findings above; millions of ints otherwise
    return Manifest(format=manifest_format, location=location, entries=unique, findings=findings,
                    untrusted=untrusted, **kwargs)


def _line(entry: ManifestEntry) -> str | None:
    return f"line {entry.line}" if entry.line is not None else None


class DigestingReader:
    """Reads a manifest stream line by line with bounded memory, hashing its bytes as it goes."""

    def __init__(self, stream: Any, chunk: int = 1 << 16):
        self._stream = stream
        self._chunk = chunk
        self._buf = b""
        self._eof = False
        self.sha256 = hashlib.sha256()
        self.total = 0

    def _fill(self) -> bool:
        data = self._stream.read(self._chunk)
        if not data:
            self._eof = True
            return False
        self.sha256.update(data)
        self.total += len(data)
        self._buf += data
        return True

    def lines(self) -> Any:
        """Yield (line_number, bytes_or_None): None for a line longer than MAX_LINE (skipped).

        Lines are cut from the buffer by offset (no per-line copy of the rest of the buffer)."""
        number = 0
        pos = 0
        while True:
            nl = self._buf.find(b"\n", pos)
            if nl >= 0:
                number += 1
                yield number, self._buf[pos:nl]
                pos = nl + 1
                continue
            self._buf = self._buf[pos:]
            pos = 0
            if self._eof:
                if self._buf:
                    number += 1
                    yield number, self._buf
                    self._buf = b""
                return
            if len(self._buf) > MAX_LINE:
                # Discard until the end of this line; report it once.
                number += 1
                self._buf = b""
                while True:
                    if not self._fill():
                        break
                    nl = self._buf.find(b"\n")
                    if nl >= 0:
                        self._buf = self._buf[nl + 1:]
                        break
                    self._buf = b""
                yield number, None
                continue
            self._fill()
