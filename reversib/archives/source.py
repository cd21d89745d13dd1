"""An archive file on any source, used as a source in its own right (docs/archives.md).

`ArchiveSource.scan()` reads the archive once -- through decryption and decompression -- and hashes
every member; the listing then carries those digests (`Entry.hashed`), so the
verifier compares them with the manifest without reading anything again, at tier `downloaded`.
Opening a member afterwards (a manifest, a database dump for the dump checks) serves small
members from memory and re-reads the archive as a stream for the others; nothing is ever extracted.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from reversib.archives import detect
from reversib.archives.decrypt import Decryption, KeyProblem
from reversib.archives.options import ArchiveConfig
from reversib.archives.pipeline import LayerError, Pipeline
from reversib.archives.scan import RangeFile, ScanResult, clean_name, new_reader, scan_tar, scan_zip, zip_name
from reversib.manifests import SUFFIXES, WELL_KNOWN
from reversib.model import Finding, FindingKind
from reversib.sources.base import Capabilities, Entry, EntryType, Source, SourceError

HEAD = 512
_COMPRESSION = {"gz": "gz", "zst": "zst", "xz": "xz", "bz2": "bz2"}
_MANIFEST_NAMES = frozenset({*WELL_KNOWN, "bagit.txt", "bag-info.txt"})


def is_manifest_candidate(path: str, wanted: str) -> bool:
    """Members kept in memory while the archive is read: the configured manifest, or (auto) well-known
    manifest names at the root or one folder down, and BagIt tag files."""
    if wanted != "auto":
        return path == wanted or path.endswith("/" + wanted) or posixpath.dirname(wanted) == posixpath.dirname(path)
    if path.count("/") > 1:
        return False
    name = posixpath.basename(path)
    return name in _MANIFEST_NAMES or name.lower().endswith(SUFFIXES) \
        or (name.startswith(("manifest-", "tagmanifest-")) and name.endswith(".txt"))


class ArchiveSource(Source):
    scheme = "archive"

    def __init__(self, outer: Source, path: str, config: ArchiveConfig, *, scratch: str | None = None,
                 progress: Callable[[int], None] | None = None):
        super().__init__(f"{outer.url.rstrip('/')}/{path}", cancel=outer.cancel, limiter=outer.limiter)
        self.outer = outer
        self.path = path
        self.config = config
        self.scratch = scratch
        self.progress = progress
        self.result: ScanResult | None = None
        self.outer_digests: dict[str, str] = {}
        self.compressed_bytes = 0
        self.root = ""  # folder inside the archive taken as its root (a single top-level folder)
        self.encryption = "none"
        self.compression = "none"

    # -- the one read -------------------------------------------------------------------
    def scan(self, algorithms: tuple[str, ...], outer_algorithms: tuple[str, ...] = ()) -> ScanResult:
        """Read the archive once; raise SourceError when it could not be read (network, key problem)."""
        try:
            result = self._scan(tuple(sorted(set(algorithms))), outer_algorithms)
        except KeyProblem as exc:
            raise SourceError(f"{self.describe()}: {exc}") from exc
        except LayerError as exc:
            self.cancel.check()  # a read stopped by cancellation is an interruption, not a source error
            raise SourceError(f"{self.describe()}: {exc}") from exc
        self.result = result
        self._choose_root(result)
        return result

    def _sniff(self) -> tuple[str, str, str]:
        """(encryption, container, compression), "auto" where only the plaintext can tell."""
        cfg = self.config
        if cfg.format != "auto" and cfg.decrypt.method != "auto":
            container, compression = detect.split_format(cfg.format)
            return cfg.decrypt.method, container, _COMPRESSION.get(compression, "none")
        with self.outer.open_range(self.path, 0, HEAD) as s:
            head = s.read(HEAD)
        enc = cfg.decrypt.method if cfg.decrypt.method != "auto" else detect.encryption_of(head)
        if cfg.format != "auto":
            container, compression = detect.split_format(cfg.format)
            return enc, container, _COMPRESSION.get(compression, "none")
        if enc != "none":
            return enc, "auto", "auto"
        if detect.is_zip(head):
            return enc, "zip", "none"
        return enc, "tar", detect.compression_of(head)

    def _scan(self, algorithms: tuple[str, ...], outer_algorithms: tuple[str, ...]) -> ScanResult:
        enc, container, compression = self._sniff()
        self.encryption = enc
        if container == "zip":
            if enc != "none":
                raise KeyProblem("a zip inside age/gpg encryption can only be read by writing its plaintext to "
                                 "disk, which reversib refuses: ask the provider for an encrypted tar")
            return self._scan_zip(algorithms, outer_algorithms)
        decryption = Decryption(enc, self.config.decrypt, scratch=self.scratch) if enc != "none" else None
        if decryption is not None and not self.config.decrypt.has_key and not (
                enc == "gpg" and (self.config.decrypt.passphrase_file or self.config.decrypt.passphrase_env)):
            raise KeyProblem(f"the archive is encrypted ({enc}): set archive.decrypt.identity_file or identity_env")
        pipeline = Pipeline(self.outer, self.path, outer_algorithms=outer_algorithms, decryption=decryption,
                            compression=compression if compression != "auto" else "auto")
        reader = new_reader(algorithms, self.config.limits, lambda: pipeline.compressed_bytes,
                            lambda p, size: is_manifest_candidate(p, self.config.manifest), self,
                            self.progress)
        with pipeline:
            assert pipeline.stream is not None
            self.compression = pipeline.compression
            result = scan_tar(pipeline.stream, reader)
            pipeline.abandon()
        self.compressed_bytes = pipeline.compressed_bytes
        self.outer_digests = pipeline.outer_digests
        source_errors = [e for e in pipeline.errors if e.layer == "source"]
        self.cancel.check()
        if source_errors:
            raise SourceError(f"{self.describe()}: {source_errors[0]}")
        if pipeline.plaintext_zip:
            raise KeyProblem("a zip inside age/gpg encryption can only be read by writing its plaintext to disk, "
                             "which reversib refuses: ask the provider for an encrypted tar")
        if decryption is not None:
            verdict = decryption.verdict()
            if verdict.kind is not None:
                # What the layers above saw is a consequence: the ciphertext is the cause.  OpenPGP hands out
                # plaintext before its MDC is checked at the end, so every member read (a digest_mismatch, a
                # corrupt stream, a limit) may come from the corrupt ciphertext: none is judged.
                result.findings = []
                result.entries.clear()
                result.captured.clear()
                result.data_of.clear()
                result.unreadable.clear()
                result.findings.append(Finding(FindingKind(verdict.kind), None,
                                               expected=f"an archive that opens with the configured {enc} key"
                                               if verdict.kind == "decrypt_failed" else "intact ciphertext",
                                               actual=verdict.message))
                result.complete = False
        return result

    def _scan_zip(self, algorithms: tuple[str, ...], outer_algorithms: tuple[str, ...]) -> ScanResult:
        entry = self.outer.stat(self.path)
        if entry is None or entry.size is None:
            raise SourceError(f"{self.describe()}: the archive file is not there")
        raw = RangeFile(self.outer, self.path, entry.size, outer_algorithms)
        reader = new_reader(algorithms, self.config.limits, lambda: raw.bytes_read,
                            lambda p, size: is_manifest_candidate(p, self.config.manifest), self, self.progress)
        try:
            result = scan_zip(raw, reader)
            self.outer_digests = raw.finish_digests() if outer_algorithms else {}
        except OSError as exc:
            raise SourceError(f"{self.describe()}: reading the zip file: {exc.strerror or exc}") from exc
        finally:
            self.compressed_bytes = raw.bytes_read
            raw.close()
        return result

    def _choose_root(self, result: ScanResult) -> None:
        """An archive made of one top-level folder (`tar czf x.tgz export/`) is read from inside it."""
        wanted = self.config.manifest
        if not result.entries:
            return
        tops = {p.split("/", 1)[0] for p in result.entries}
        nested = all("/" in p for p in result.entries)
        if len(tops) != 1 or not nested:
            return
        top = next(iter(tops))
        if wanted != "auto" and (wanted in result.entries or (not wanted.startswith(top + "/") and
                                 f"{top}/{wanted}" not in result.entries)):
            return
        self.root = top
        cut = len(top) + 1
        result.entries = {p[cut:]: Entry(p[cut:], e.size, e.mtime, e.type, e.digests, e.problem, e.hashed)
                          for p, e in result.entries.items()}
        result.captured = {p[cut:]: b for p, b in result.captured.items() if p.startswith(top + "/")}
        result.data_of = {p[cut:]: t for p, t in result.data_of.items() if p.startswith(top + "/")}
        result.unreadable = {p[cut:] if p.startswith(top + "/") else p for p in result.unreadable}
        result.findings = [f if not (f.path or "").startswith(top + "/") else
                           Finding(f.kind, f.path[cut:] if f.path else None, f.expected, f.actual, f.severity,
                                   f.detail) for f in result.findings]

    def member_name(self, path: str) -> str:
        """The name inside the archive of a path of this source (links give their target's)."""
        assert self.result is not None
        target = self.result.data_of.get(path, path)
        return f"{self.root}/{target}" if self.root else target

    # -- the source interface ---------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def _ensure(self) -> ScanResult:
        if self.result is None:
            return self.scan(tuple(self.config.algorithms))
        return self.result

    def iter_entries(self) -> Iterator[Entry]:
        result = self._ensure()
        for path in sorted(result.entries):
            yield result.entries[path]

    def stat(self, path: str) -> Entry | None:
        return self._ensure().entries.get(path)

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        result = self._ensure()
        if path in result.captured:
            return io.BytesIO(result.captured[path][offset:])
        entry = result.entries.get(path)
        if entry is None or entry.type is not EntryType.FILE or entry.problem:
            raise FileNotFoundError(f"{path}: no such member in {self.describe()}")
        return _MemberStream(self, self.member_name(path), offset)  # type: ignore[return-value]

    def child_dirs(self) -> list[str]:
        return []

    def sub(self, name: str) -> Source:
        raise SourceError(f"{self.describe()}: an archive has no generations (generation applies to the export "
                          "holding the archive)")

    def relative(self, location: str) -> str | None:
        path, why = clean_name(location)
        return path if why is None else None

    def describe(self) -> str:
        return f"{self.outer.describe().rstrip('/')}/{self.path}"

    def close(self) -> None:
        self.outer.close()


class _MemberStream(io.RawIOBase):
    """One member's data, read by streaming the archive again up to it (a dump for the dump checks)."""

    def __init__(self, archive: ArchiveSource, name: str, offset: int):
        super().__init__()
        self._pipeline: Pipeline | None = None
        self._tar: Any = None
        self._zip: Any = None
        self._raw: Any = None
        self._data: Any = None
        self._open(archive, name)
        if offset:
            left = offset
            while left and (n := len(self.read(min(left, 1 << 20)))):
                left -= n

    def _open(self, archive: ArchiveSource, name: str) -> None:
        import tarfile
        import zipfile

        result = archive.result
        assert result is not None
        if result.container == "zip":
            entry = archive.outer.stat(archive.path)
            assert entry is not None and entry.size is not None
            self._raw = RangeFile(archive.outer, archive.path, entry.size)
            self._zip = zipfile.ZipFile(io.BufferedReader(self._raw, 1 << 20))  # type: ignore[arg-type]
            offset = result.copy_of.get(name)  # the copy verified, when the name appears twice
            info = next((i for i in self._zip.infolist() if clean_name(zip_name(i))[0] == name
                         and (offset is None or i.header_offset == offset)), None)
            if info is None:
                self.close()
                raise FileNotFoundError(f"{name}: not found when reading the archive again")
            self._data = self._zip.open(info)
            return
        enc = archive.encryption
        decryption = Decryption(enc, archive.config.decrypt, scratch=archive.scratch) if enc != "none" else None
        self._pipeline = Pipeline(archive.outer, archive.path, decryption=decryption,
                                  compression=archive.compression)
        self._pipeline.__enter__()
        try:
            self._tar = tarfile.open(fileobj=self._pipeline.stream, mode="r|", bufsize=1 << 20)  # noqa: SIM115
            wanted = result.copy_of.get(name, 1)  # the copy verified (the last), when the name appears twice
            copy = 0
            for ti in self._tar:
                self._tar.members.clear()
                if clean_name(ti.name)[0] == name and ti.isreg():
                    copy += 1
                    if copy == wanted:
                        self._data = self._tar.extractfile(ti)
                        return
        except BaseException:
            self.close()  # the decryption process and its GnuPG home go too
            raise
        self.close()
        raise FileNotFoundError(f"{name}: not found when reading the archive again")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        assert self._data is not None
        return int(self._data.readinto(buf) or 0)

    def close(self) -> None:
        if self.closed:
            return
        for obj in (self._data, self._zip, self._raw):
            if obj is not None:
                obj.close()
        if self._pipeline is not None:
            self._pipeline.abandon()
            if self._pipeline.decryption is not None:
                self._pipeline.decryption.kill()
            self._pipeline.finish()
        super().close()
