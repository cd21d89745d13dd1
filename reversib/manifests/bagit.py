"""BagIt bags (RFC 8493; versions 0.97 and 1.0), read through a Source rooted at the export.

A bag is `bagit.txt` (version and tag-file encoding), one or more payload manifests
`manifest-<alg>.txt` listing every file under `data/`, optional tag manifests
`tagmanifest-<alg>.txt` listing tag files, `bag-info.txt` (labels, Payload-Oxum) and `fetch.txt`.
Payload entries listed by several manifests are merged into one entry with several digests.
Files are found by name (`stat`), never by listing the whole bag.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from typing import Any

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
from reversib.sources.base import EntryType, Source

# Manifest algorithm names (as in `manifest-<alg>.txt`) -> (reversib name, hex digits).
BAG_ALGORITHMS: dict[str, tuple[str, int]] = {
    "md5": ("md5", 32),
    "sha1": ("sha1", 40),
    "sha224": ("sha224", 56),
    "sha256": ("sha256", 64),
    "sha384": ("sha384", 96),
    "sha512": ("sha512", 128),
    "blake2b": ("blake2b", 128),
}
MAX_BAGIT_TXT = 64 * 1024
_LINE = re.compile(r"([0-9A-Fa-f]+)[ \t]+(.+)", re.DOTALL)
_BOM = b"\xef\xbb\xbf"


class _Bad(Exception):
    def __init__(self, reason: str, path: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = path


class _Tee:
    """A stream that feeds what is read into a shared hash (the bag's digest)."""

    def __init__(self, stream: Any, hasher: Any):
        self._stream = stream
        self._hasher = hasher

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self._hasher.update(data)
        return data


def decode_percent(path: str, version: tuple[int, int]) -> str:
    """Undo BagIt's percent-encoding of CR, LF (and, from 1.0 on, `%`) in manifest paths.

    Before 1.0 only %0A and %0D are decoded, as bagit-python (the common 0.97 writer) never
    encodes `%` itself."""
    if "%" not in path:
        return path
    codes = {"0A": "\n", "0D": "\r"}
    if version >= (1, 0):
        codes["25"] = "%"
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: codes.get(m.group(1).upper(), m.group(0)), path)


def parse_labels(lines: Iterator[tuple[int, str]]) -> tuple[list[tuple[str, str, int]], list[tuple[int, str]]]:
    """`Label: value` lines with continuation lines (starting with whitespace) -> (labels, bad lines)."""
    labels: list[tuple[str, str, int]] = []
    bad: list[tuple[int, str]] = []
    for lineno, text in lines:
        if not text.strip():
            continue
        if text[0] in " \t":
            if labels:
                name, value, start = labels[-1]
                labels[-1] = (name, f"{value} {text.strip()}".strip(), start)
            else:
                bad.append((lineno, "continuation line without a label"))
            continue
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            bad.append((lineno, "not a 'Label: value' line"))
            continue
        labels.append((name.strip(), value.strip(), lineno))
    return labels, bad


class _BagReader:
    def __init__(self, source: Source, path: str):
        root = strip_dot_slash(path.strip("/")).rstrip("/")
        root = "" if root == "." else root
        self.source = source
        self.prefix = root + "/" if root else ""
        self.findings: list[Finding] = []
        self.hasher = hashlib.sha256()
        self.version: tuple[int, int] = (1, 0)
        self.encoding = "utf-8"
        self.own: set[str] = set()
        self.expect: dict[str, Any] = {}

    # -- reading ---------------------------------------------------------------------------
    def invalid(self, name: str, lineno: int | None, reason: str, path: str | None = None,
                expected: str | None = None) -> None:
        where = f"{name} line {lineno}" if lineno is not None else name
        self.findings.append(Finding(FindingKind.MANIFEST_INVALID, path, expected=expected, actual=reason,
                                     detail=where))

    def lines(self, name: str) -> Iterator[tuple[int, str]]:
        """Decoded lines of a tag file (None-lines and undecodable lines reported, skipped)."""
        with self.source.open_range(self.prefix + name) as stream:
            reader = DigestingReader(_Tee(stream, self.hasher))
            for lineno, raw in reader.lines():
                if raw is None or len(raw) > MAX_LINE:
                    self.invalid(name, lineno, f"line longer than {MAX_LINE} bytes")
                    continue
                if lineno == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM):]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                try:
                    yield lineno, raw.decode(self.encoding)
                except UnicodeDecodeError:
                    self.invalid(name, lineno, f"not valid {self.encoding}",
                                 path=raw.decode(self.encoding, "replace"))

    def present(self, name: str) -> bool:
        entry = self.source.stat(self.prefix + name)
        if entry is None:
            return False
        if entry.problem or entry.type is not EntryType.FILE:
            self.invalid(name, None, entry.problem or "not a regular file", path=self.prefix + name)
            return False
        self.own.add(self.prefix + name)
        return True

    # -- bagit.txt -------------------------------------------------------------------------
    def read_declaration(self) -> bytes:
        where = f"{self.prefix}bagit.txt"
        if not self.present("bagit.txt"):
            raise ManifestError(f"not a BagIt bag: {where} is missing or not a regular file")
        with self.source.open_range(where, 0, MAX_BAGIT_TXT + 1) as stream:
            data = stream.read()
        if len(data) > MAX_BAGIT_TXT:
            raise ManifestError(f"{where} is larger than {MAX_BAGIT_TXT} bytes: not a bag declaration")
        try:
            text = data.removeprefix(_BOM).decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{where} is not valid UTF-8") from None
        labels, bad = parse_labels(enumerate(text.splitlines(), 1))
        if bad:
            raise ManifestError(f"{where} line {bad[0][0]}: {bad[0][1]}")
        tags = {name: value for name, value, _ in labels}
        version = tags.get("BagIt-Version")
        m = re.fullmatch(r"([0-9]+)\.([0-9]+)", version or "")
        if not m:
            raise ManifestError(f"{where}: BagIt-Version missing or malformed ({version!r})")
        self.version = (int(m.group(1)), int(m.group(2)))
        if not (0, 93) <= self.version < (2, 0):
            raise ManifestError(f"{where}: unsupported BagIt-Version {version}")
        encoding = tags.get("Tag-File-Character-Encoding")
        if not encoding:
            raise ManifestError(f"{where}: Tag-File-Character-Encoding missing")
        try:
            codecs.lookup(encoding)
            ascii_compatible = "a:\n".encode(encoding) == b"a:\n"
        except (LookupError, UnicodeError):
            ascii_compatible = False
        if not ascii_compatible:
            raise ManifestError(f"{where}: unsupported Tag-File-Character-Encoding {encoding!r}")
        self.encoding = encoding
        return data

    # -- bag-info.txt, fetch.txt -----------------------------------------------------------
    def read_info(self) -> None:
        labels, bad = parse_labels(self.lines("bag-info.txt"))
        for lineno, reason in bad:
            self.invalid("bag-info.txt", lineno, reason)
        info: dict[str, list[str]] = {}
        for name, value, _ in labels:
            info.setdefault(name, []).append(value)
        self.expect["bag_info"] = info
        oxums = info.get("Payload-Oxum", [])
        if len(set(oxums)) > 1:
            self.invalid("bag-info.txt", None, f"Payload-Oxum given {len(oxums)} times with different values")
        elif oxums:
            m = re.fullmatch(r"([0-9]+)\.([0-9]+)", oxums[0])
            if m:
                self.expect["payload_oxum"] = (int(m.group(1)), int(m.group(2)))
            else:
                self.invalid("bag-info.txt", None, f"malformed Payload-Oxum {oxums[0]!r}", expected="bytes.files")

    def read_fetch(self) -> None:
        for lineno, text in self.lines("fetch.txt"):
            if not text.strip():
                continue
            parts = text.split(None, 2)
            if len(parts) != 3 or not (parts[1] == "-" or parts[1].isdigit()):
                self.invalid("fetch.txt", lineno, "not a 'url length path' line")
                continue
            url, length, rel = parts
            rel = strip_dot_slash(decode_percent(rel, self.version))
            self.findings.append(Finding(FindingKind.FETCH_REFERENCE, self.prefix + rel, expected=url,
                                         actual=f"length {length}", detail=f"fetch.txt line {lineno}"))

    # -- manifests -------------------------------------------------------------------------
    def read_manifest(self, name: str, algorithm: str, payload: bool, bit: int,
                      merged: dict[str, list[Any]], extra: list[ManifestEntry]) -> None:
        """Merge one (tag)manifest into `merged`: path -> [entry, bit mask of the manifests listing it]
        (a mask, not a set of names: a bag may list millions of files)."""
        alg, hexlen = BAG_ALGORITHMS[algorithm]
        seen: set[str] = set()
        for lineno, text in self.lines(name):
            if not text.strip() or text.startswith("#"):
                continue
            m = _LINE.fullmatch(text)
            if not m:
                self.invalid(name, lineno, "not a 'digest path' line")
                continue
            hexd, rel = m.group(1), m.group(2)
            rel = strip_dot_slash(decode_percent(rel.removeprefix("*"), self.version))
            if len(hexd) != hexlen:
                self.invalid(name, lineno, f"{alg} digest must have {hexlen} hex digits, not {len(hexd)}",
                             path=self.prefix + rel)
                continue
            if payload != rel.startswith("data/"):
                reason = "payload manifest lists a path outside data/" if payload else \
                    "tag manifest lists a payload path"
                self.invalid(name, lineno, reason, path=self.prefix + rel)
                continue
            path = self.prefix + rel
            # = ManifestEntry(path, None, {alg: hexd.lower()}, line=lineno), without the dict round trip
            entry = ManifestEntry.single(path, (alg,), bytes.fromhex(hexd), lineno)
            if path in seen:
                extra.append(entry)  # listed twice in one manifest: finalize reports the duplicate
                continue
            seen.add(path)
            known = merged.get(path)
            if known is not None:
                known[0].add_digest(alg, hexd.lower())
                known[1] |= bit
            else:
                merged[path] = [entry, bit]


def parse_bag(source: Source, path: str = "") -> Manifest:
    """Parse the bag whose root is `path` inside `source` ("" for the source root).

    Entry paths are relative to the source root (prefixed with `path`).  Raises ManifestError when
    bagit.txt is missing or garbled or no payload manifest exists; I/O errors (OSError) propagate."""
    bag = _BagReader(source, path)
    declaration = bag.read_declaration()
    payload_names = [f"manifest-{a}.txt" for a in BAG_ALGORITHMS if bag.present(f"manifest-{a}.txt")]
    tag_names = [f"tagmanifest-{a}.txt" for a in BAG_ALGORITHMS if bag.present(f"tagmanifest-{a}.txt")]
    if not payload_names:
        raise ManifestError(f"bag {bag.prefix or './'} has no payload manifest "
                            f"(manifest-<alg>.txt for {', '.join(BAG_ALGORITHMS)})")
    others = [n for n in ("bag-info.txt", "fetch.txt") if bag.present(n)]
    payload: dict[str, list[Any]] = {}
    tags: dict[str, list[Any]] = {}
    extra: list[ManifestEntry] = []
    bits = {name: 1 << i for i, name in enumerate(payload_names)}
    for name in sorted(["bagit.txt", *payload_names, *tag_names, *others]):
        if name == "bagit.txt":
            bag.hasher.update(declaration)
        elif name == "bag-info.txt":
            bag.read_info()
        elif name == "fetch.txt":
            bag.read_fetch()
        elif name.startswith("manifest-"):
            bag.read_manifest(name, name[len("manifest-"):-4], True, bits[name], payload, extra)
        else:
            bag.read_manifest(name, name[len("tagmanifest-"):-4], False, 0, tags, extra)
    every = (1 << len(payload_names)) - 1
    incomplete = sorted((p, v[1]) for p, v in payload.items() if v[1] != every)
    for entry_path, mask in incomplete:
        listed = [n for n in payload_names if mask & bits[n]]
        missing = ", ".join(n for n in payload_names if not mask & bits[n])
        bag.findings.append(Finding(
            FindingKind.MANIFEST_INVALID, entry_path, expected="listed in every payload manifest",
            actual=f"not listed in {missing}", detail=", ".join(listed)))
    # RFC 8493 2.2.3: every file fetch.txt names must be listed in every payload manifest
    fetched = [f for f in bag.findings if f.kind is FindingKind.FETCH_REFERENCE and f.path not in payload]
    for f in fetched:
        bag.findings.append(Finding(FindingKind.MANIFEST_INVALID, f.path, expected="listed in the payload "
                                    "manifests (as every file fetch.txt names)", actual="in fetch.txt only",
                                    detail=f.detail))
    raw = [v[0] for v in payload.values()]
    payload.clear()
    raw += [v[0] for v in tags.values()]
    raw += extra
    return finalize("bagit", bag.prefix + "bagit.txt", raw, bag.findings, own_paths=bag.own,
                    unexpected_scope=bag.prefix + "data/", digest=bag.hasher.hexdigest(), expect=bag.expect)
