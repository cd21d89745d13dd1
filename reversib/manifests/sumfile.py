"""GNU coreutils checksum files (`sha256sum`, `b2sum`, ...) and BSD/tagged lines (`--tag`).

Lines are parsed the way `sha256sum -c` (coreutils 9) reads them: `HEX  name` (text) or
`HEX *name` (binary), `ALG (name) = HEX` (tagged), either one prefixed with `\\` when the name
holds `\\`, `\\n` or `\\r` escapes.  Untagged lines carry no algorithm: it follows from the digest
length, and where that is ambiguous (128 hex digits: sha512 or blake2b; any length for b2sum -l)
from the format named by the caller or by the manifest's file name -- never from a guess.
"""

from __future__ import annotations

import binascii
import re

from reversib.manifests.base import (
    MAX_LINE,
    DigestingReader,
    Manifest,
    ManifestEntry,
    ManifestError,
    finalize,
    strip_dot_slash,
)
from reversib.model import Finding, FindingKind
from reversib.sources.base import Source

# Hex digest length of each fixed-size algorithm (reversib's algorithm names).
HEX_LENGTHS: dict[str, int] = {
    "md5": 32,
    "sha1": 40,
    "sha224": 56,
    "sha256": 64,
    "sha384": 96,
    "sha512": 128,
    "blake2b": 128,
}

# format name -> algorithm of its untagged lines ("b2" = blake2b of any length, "bsd" = tagged only).
SUM_FORMATS: dict[str, str] = {
    "md5sum": "md5",
    "sha1sum": "sha1",
    "sha224sum": "sha224",
    "sha256sum": "sha256",
    "sha384sum": "sha384",
    "sha512sum": "sha512",
    "b2sum": "b2",
    "bsd": "bsd",
}
FORMAT_HINTS = ("auto", *SUM_FORMATS)

_TOOL_OF = {"md5": "md5sum", "sha1": "sha1sum", "sha224": "sha224sum", "sha256": "sha256sum",
            "sha384": "sha384sum", "sha512": "sha512sum"}
_BY_LENGTH = {length: alg for alg, length in HEX_LENGTHS.items() if alg not in ("sha512", "blake2b")}
_TAGS = {"MD5": "md5", "SHA1": "sha1", "SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384",
         "SHA512": "sha512", "BLAKE2b": "blake2b"}

_TAGGED = re.compile(rb"(?P<tag>[A-Za-z][A-Za-z0-9]*(?:-[0-9]+)?) ?\((?P<name>.*)\)[ \t]*=[ \t]*(?P<hex>.*)", re.DOTALL)
_UNTAGGED = re.compile(rb"(?P<hex>[0-9A-Fa-f]+)(?P<rest>.*)", re.DOTALL)
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# The common line, `lowercase-hex  name` or `lowercase-hex *name` with nothing to strip or unescape: parsed by
# `_fast_line` with the outcome `parse_line` would give; any other line goes to `parse_line`.
_FAST = re.compile(rb"([0-9a-f]+) [ *]([^\r]+)", re.DOTALL)
# What is left of a line whose digest is damaged: a token, the separator, a name.
_LOOSE = re.compile(rb"([^ \t]+) [ *](.+)", re.DOTALL)

# Manifest file names (lower case, without a trailing .txt) that name the format.
_NAMES = {"md5sums": "md5sum", "sha1sums": "sha1sum", "sha224sums": "sha224sum", "sha256sums": "sha256sum",
          "sha384sums": "sha384sum", "sha512sums": "sha512sum", "b2sums": "b2sum"}
_SUFFIXES = {".md5": "md5sum", ".md5sum": "md5sum", ".sha1": "sha1sum", ".sha1sum": "sha1sum",
             ".sha224": "sha224sum", ".sha224sum": "sha224sum", ".sha256": "sha256sum", ".sha256sum": "sha256sum",
             ".sha384": "sha384sum", ".sha384sum": "sha384sum", ".sha512": "sha512sum", ".sha512sum": "sha512sum",
             ".b2": "b2sum", ".b2sum": "b2sum", ".blake2b": "b2sum"}


class _BadLine(Exception):
    def __init__(self, reason: str, path: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = path


def digest_hex_length(algorithm: str) -> int | None:
    """Hex digits of a digest of `algorithm` (`blake2b-<bits>` included), or None when unknown."""
    if algorithm in HEX_LENGTHS:
        return HEX_LENGTHS[algorithm]
    m = re.fullmatch(r"blake2b-([0-9]+)", algorithm)
    if m and not m.group(1).startswith("0"):
        bits = int(m.group(1))
        if 8 <= bits < 512 and bits % 8 == 0:
            return bits // 4
    return None


def blake2b_name(bits: int) -> str:
    """reversib's name for a BLAKE2b digest of `bits` bits."""
    return "blake2b" if bits == 512 else f"blake2b-{bits}"


def format_from_name(path: str) -> str | None:
    """The sum format a manifest's file name announces (SHA512SUMS, x.sha512, B2SUMS, x.b2...), or None."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".txt"):
        name = name[:-4]
    if name in _NAMES:
        return _NAMES[name]
    dot = name.rfind(".")
    if dot > 0:
        return _SUFFIXES.get(name[dot:])
    return None


def unescape_name(raw: bytes) -> bytes:
    """Undo coreutils' name escaping: only `\\\\`, `\\n` and `\\r` are escapes."""
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c != 0x5C:
            out.append(c)
            i += 1
            continue
        if i + 1 == len(raw):
            raise _BadLine("file name ends with an unescaped backslash")
        nxt = raw[i + 1: i + 2]
        if nxt == b"\\":
            out.append(0x5C)
        elif nxt == b"n":
            out.append(0x0A)
        elif nxt == b"r":
            out.append(0x0D)
        else:
            raise _BadLine(f"invalid escape \\{nxt.decode('latin-1')!r} in file name (only \\\\, \\n, \\r)")
        i += 2
    return bytes(out)


def escape_name(name: str) -> tuple[bool, str]:
    """Escape a name the way coreutils 9 writes it: (needs the leading backslash, escaped name)."""
    if not any(c in name for c in "\\\n\r"):
        return False, name
    return True, name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _decode(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadLine("file name is not valid UTF-8", raw.decode("utf-8", "replace")) from None
    return strip_dot_slash(name)


def _tagged_algorithm(tag: str, hexlen: int) -> str:
    if tag in _TAGS:
        alg = _TAGS[tag]
    elif tag.startswith("BLAKE2b-"):
        bits = int(tag[len("BLAKE2b-"):])
        if bits % 8 or not 8 <= bits <= 512:
            raise _BadLine(f"invalid BLAKE2b length {bits} (a multiple of 8 up to 512)")
        alg = blake2b_name(bits)
    else:
        raise _BadLine(f"unsupported algorithm tag {tag!r}")
    expected = digest_hex_length(alg)
    if expected != hexlen:
        raise _BadLine(f"{tag} digest must have {expected} hex digits, not {hexlen}")
    return alg


def _untagged_algorithm(hexlen: int, context: str | None, lineno: int, location: str) -> str:
    if context == "bsd":
        raise _BadLine("untagged line in a BSD-style (tagged) manifest")
    if context == "b2":
        if hexlen % 2 or hexlen > 128:
            raise _BadLine(f"{hexlen} hex digits is not a BLAKE2b digest length")
        return blake2b_name(hexlen * 4)
    if context is not None:
        if hexlen != HEX_LENGTHS[context]:
            raise _BadLine(f"{context} digest must have {HEX_LENGTHS[context]} hex digits, not {hexlen}")
        return context
    if hexlen == 128:
        raise ManifestError(
            f"{location} line {lineno}: a 128-hex-digit digest may be sha512 or blake2b; name the format "
            "(sha512sum or b2sum) or the file (SHA512SUMS, *.sha512, B2SUMS, *.b2): reversib will not guess")
    if hexlen not in _BY_LENGTH:
        raise _BadLine(f"{hexlen} hex digits match no known digest algorithm")
    return _BY_LENGTH[hexlen]


def parse_line(line: bytes, context: str | None, lineno: int = 0,
               location: str = "") -> tuple[ManifestEntry, str] | None:
    """One checksum line -> (entry, line kind: "bsd" or the tool name), None for blank/comment lines.

    Raises `_BadLine` for a malformed line and `ManifestError` for an ambiguous digest."""
    if line.endswith(b"\r"):
        line = line[:-1]
    s = line.lstrip(b" \t")
    if not s or s.startswith(b"#"):
        return None
    escaped = s.startswith(b"\\")
    if escaped:
        s = s[1:]
    tagged = _TAGGED.fullmatch(s)
    if tagged and not _HEX.fullmatch(tagged.group("tag")):
        hexd = tagged.group("hex")
        raw_name = tagged.group("name")
        name = _decode(unescape_name(raw_name) if escaped else raw_name)
        try:
            if not _HEX.fullmatch(hexd):
                raise _BadLine("digest is not hexadecimal")
            alg = _tagged_algorithm(tagged.group("tag").decode("ascii"), len(hexd))
        except _BadLine as exc:
            raise _BadLine(exc.reason, name) from None
        return ManifestEntry(name, None, {alg: hexd.decode("ascii").lower()}, line=lineno), "bsd"
    untagged = _UNTAGGED.fullmatch(s)
    if not untagged:
        loose = _LOOSE.fullmatch(s)  # a damaged digest before a well-formed name: the entry's path is known
        if loose and 8 <= len(loose.group(1)) <= 128:
            try:
                name = _decode(unescape_name(loose.group(2)) if escaped else loose.group(2))
            except _BadLine:
                raise _BadLine("not a checksum line") from None
            raise _BadLine("digest is not hexadecimal", name)
        raise _BadLine("not a checksum line")
    hexd, rest = untagged.group("hex"), untagged.group("rest")
    if not rest[:1] or rest[:1] not in b" \t":
        raise _BadLine("not a checksum line (digest not followed by a space)")
    # GNU: one space, then an optional mode character (' ' text, '*' binary); `sha256sum -c` accepts
    # "HEX name" with a single space too
    raw_name = rest[2:] if rest[1:2] in (b" ", b"*") else rest[1:]
    if not raw_name:
        raise _BadLine("missing file name")
    name = _decode(unescape_name(raw_name) if escaped else raw_name)
    try:
        alg = _untagged_algorithm(len(hexd), context, lineno, location)
    except _BadLine as exc:
        raise _BadLine(exc.reason, name) from None
    kind = "b2sum" if alg.startswith("blake2b") else _TOOL_OF[alg]
    return ManifestEntry(name, None, {alg: hexd.decode("ascii").lower()}, line=lineno), kind


def _fast_lengths(context: str | None) -> dict[int, tuple[tuple[str, ...], str]]:
    """Digest length -> ((algorithm,), line kind) for the untagged lines of `context` that `parse_line`
    accepts without an error; other lengths take the slow path (which reports them)."""
    if context is None:
        return {n: ((alg,), _TOOL_OF[alg]) for n, alg in _BY_LENGTH.items()}
    if context == "b2":
        return {n: ((blake2b_name(n * 4),), "b2sum") for n in range(2, 129, 2)}
    if context == "bsd":
        return {}
    return {HEX_LENGTHS[context]: ((context,), "b2sum" if context.startswith("blake2b") else _TOOL_OF[context])}


def parse_sumfile(source: Source, path: str, *, format_hint: str = "auto") -> Manifest:
    """Parse a GNU/BSD checksum file read through `source`.

    Malformed lines become `manifest_invalid` findings; raises ManifestError when the file lists
    nothing, no line of it parses, or a digest is ambiguous.  I/O errors (OSError) propagate."""
    if format_hint not in FORMAT_HINTS:
        raise ValueError(f"unknown checksum format {format_hint!r} (one of {', '.join(FORMAT_HINTS)})")
    named = format_hint if format_hint != "auto" else format_from_name(path)
    context = SUM_FORMATS[named] if named else None
    raw: list[ManifestEntry] = []
    findings: list[Finding] = []
    kinds: set[str] = set()
    bad_paths: set[str] = set()  # malformed lines whose path is readable: never `unexpected`
    unattributed = 0  # malformed lines without even a path
    fast = _FAST.fullmatch
    lengths = _fast_lengths(context)
    entry = ManifestEntry.single
    unhex = binascii.unhexlify
    with source.open_range(path) as stream:
        reader = DigestingReader(stream)
        for lineno, line in reader.lines():
            if line is not None and len(line) <= MAX_LINE and (match := fast(line)) is not None:
                hexd, raw_name = match.groups()
                known = lengths.get(len(hexd))
                if known is not None and not raw_name.startswith(b"./"):
                    try:
                        name = raw_name.decode("utf-8")
                    except UnicodeDecodeError:
                        pass  # parse_line reports it
                    else:
                        raw.append(entry(name, known[0], unhex(hexd), lineno))
                        kinds.add(known[1])
                        continue
            try:
                if line is None or len(line) > MAX_LINE:
                    raise _BadLine(f"line longer than {MAX_LINE} bytes")
                parsed = parse_line(line, context, lineno, path)
            except _BadLine as exc:
                if exc.path is not None:
                    bad_paths.add(strip_dot_slash(exc.path))
                else:
                    unattributed += 1
                findings.append(Finding(FindingKind.MANIFEST_INVALID, exc.path or strip_dot_slash(path),
                                        expected="a checksum line", actual=exc.reason, detail=f"line {lineno}"))
                continue
            if parsed is not None:
                raw.append(parsed[0])
                kinds.add(parsed[1])
    if not raw:
        if findings:
            first = findings[0]
            raise ManifestError(f"not a checksum file: no line of {path} could be parsed "
                                f"({len(findings)} malformed; {first.detail}: {first.actual})")
        raise ManifestError(f"manifest is empty: {path} lists no file")
    if format_hint != "auto":
        fmt = format_hint
    elif len(kinds) == 1:
        fmt = kinds.pop()
    else:
        fmt = named or "mixed"
    return finalize(fmt, path, raw, findings, own_paths={strip_dot_slash(path)}, digest=reader.sha256.hexdigest(),
                    rejected=bad_paths, unattributed=unattributed)
