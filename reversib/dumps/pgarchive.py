"""A streaming reader of pg_dump's custom-format (`-Fc`) archive: header, table of contents, and the
chain of data blocks, walked to the end without decompressing them.

This is the structural level of a custom dump: the whole file is read once, every data block the
table of contents announces must be there, and the file must end exactly after the last block (a
truncated dump ends inside a block).  A flipped byte inside compressed data is not seen here: the
restore level finds it.  The format is that of pg_backup_archiver.c / pg_backup_custom.c, archive
versions 1.12 to 1.16 (PostgreSQL 11 to 17).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from reversib.dumps.base import DumpProblem
from reversib.model import FindingKind

BLK_DATA = 1
BLK_BLOBS = 3


class _Eof(Exception):
    pass


@dataclass
class TocEntry:
    dump_id: int
    had_dumper: bool
    tag: str
    desc: str
    namespace: str | None
    filename: str | None = None  # tar format: the member holding this entry's data


@dataclass
class Archive:
    version: tuple[int, int, int]
    compression: str = "none"  # of the data: none, gzip, lz4 or zstd (the suffix of a directory dump's files)
    toc: list[TocEntry] = field(default_factory=list)
    toc_bytes: bytes = b""  # header + table of contents, as read (enough for `pg_restore --list`)
    blocks: dict[int, int] = field(default_factory=dict)  # dump id -> payload bytes
    chunks: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) of data chunks
    size: int = 0

    @property
    def tables(self) -> set[str]:
        return {f"{e.namespace}.{e.tag}" if e.namespace else e.tag for e in self.toc if e.desc == "TABLE"}

    @property
    def data_entries(self) -> list[TocEntry]:
        return [e for e in self.toc if e.had_dumper and e.desc in ("TABLE DATA", "BLOBS", "BLOB", "LARGE OBJECTS")]


class _Reader:
    def __init__(self, read: Callable[[int], bytes]):
        self._read = read
        self.pos = 0
        self.int_size = 4
        self.off_size = 8
        self.keep: bytearray | None = bytearray()

    def bytes(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            b = self._read(min(n - len(out), 1 << 20))
            if not b:
                raise _Eof
            out += b
        self.pos += n
        if self.keep is not None:
            self.keep += out
        return bytes(out)

    def skip(self, n: int) -> None:
        while n > 0:
            b = self._read(min(n, 1 << 20))
            if not b:
                raise _Eof
            n -= len(b)
            self.pos += len(b)

    def byte(self) -> int:
        return self.bytes(1)[0]

    def int(self) -> int:
        sign = self.byte()
        raw = self.bytes(self.int_size)
        value = int.from_bytes(raw, "little")
        return -value if sign else value

    def str(self) -> str | None:
        n = self.int()
        if n < 0:
            return None
        if n > 1 << 30:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a pg_dump custom archive",
                              f"implausible string length {n} at byte {self.pos}")
        return self.bytes(n).decode("utf-8", "replace")


COMPRESSION_ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}


def chunk_reader(chunks: Iterator[bytes]) -> Callable[[int], bytes]:
    """`read(n)` over a stream of chunks, as `read_archive` wants it: n bytes, fewer only at the end."""
    buf = bytearray()

    def read(n: int) -> bytes:
        while len(buf) < n:
            chunk = next(chunks, b"")
            if not chunk:
                break
            buf.extend(chunk)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    return read


def read_archive(read: Callable[[int], bytes], fmt_wanted: int = 1, *, data: bool = True) -> Archive:
    """Walk a custom archive (`fmt_wanted` 1), or the `toc.dat` of a tar or directory archive (3),
    from `read(n)` (a stream's read); raise DumpProblem on a bad or cut archive.  With `data` False, a
    custom archive is read up to the end of its table of contents only."""
    r = _Reader(read)
    where = "the header"
    try:
        if r.bytes(5) != b"PGDMP":
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a pg_dump custom archive (PGDMP)", "another format")
        vmaj, vmin = r.byte(), r.byte()
        vrev = r.byte() if vmaj > 1 or vmin > 0 else 0
        version = (vmaj, vmin, vrev)
        if version < (1, 12, 0) or version >= (1, 17, 0):
            raise DumpProblem(FindingKind.DUMP_UNVERIFIABLE, "an archive of version 1.12 to 1.16",
                              f"archive version {vmaj}.{vmin}.{vrev} (a pg_dump older than 11 or newer than 17)")
        r.int_size, r.off_size = r.byte(), r.byte()
        if not 1 <= r.int_size <= 8 or not 1 <= r.off_size <= 16:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a pg_dump custom archive",
                              f"integer size {r.int_size}, offset size {r.off_size}")
        fmt = r.byte()
        if fmt != fmt_wanted:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, f"archive format {fmt_wanted}", f"archive format {fmt}")
        if version >= (1, 15, 0):
            algorithm = r.byte()
            compression = COMPRESSION_ALGORITHMS.get(algorithm)
            if compression is None:
                raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a known compression algorithm",
                                  f"compression algorithm {algorithm}")
        else:
            compression = "none" if r.int() == 0 else "gzip"  # the zlib level (-1: the default)
        for _ in range(7):
            r.int()  # creation time
        r.str()  # database name
        r.str()  # server version
        r.str()  # pg_dump version
        arch = Archive(version, compression)
        count = r.int()
        if count < 0 or count > 10_000_000:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a table of contents", f"{count} entries")
        where = "the table of contents"
        for _ in range(count):
            dump_id = r.int()
            had_dumper = r.int() != 0
            r.str()  # table oid
            r.str()  # oid
            tag = r.str() or ""
            desc = r.str() or ""
            r.int()  # section
            r.str()  # definition
            r.str()  # drop statement
            r.str()  # copy statement
            namespace = r.str()
            r.str()  # tablespace
            if version >= (1, 14, 0):
                r.str()  # table access method
            if version >= (1, 16, 0):
                r.int()  # relkind
            r.str()  # owner
            r.str()  # "with oids"
            while r.str() is not None:  # dependencies
                pass
            filename = None
            if fmt == 1:
                r.byte()  # data offset state
                r.bytes(r.off_size)  # data offset
            else:
                filename = r.str()
            arch.toc.append(TocEntry(dump_id, had_dumper, tag, desc, namespace, filename))
        assert r.keep is not None
        arch.toc_bytes = bytes(r.keep)
        r.keep = None
        if fmt != 1 or not data:
            return arch
        where = "the data blocks"
        wanted = {e.dump_id: e for e in arch.data_entries}
        while True:
            head = r._read(1)
            if not head:
                break
            r.pos += 1
            kind = head[0]
            dump_id = r.int()
            if kind not in (BLK_DATA, BLK_BLOBS):
                raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a data block",
                                  f"block type {kind} at byte {r.pos - 1 - r.int_size - 1}")
            entry = wanted.get(dump_id)
            where = f"the data of {entry.desc} {entry.tag}" if entry else f"data block {dump_id}"
            total = 0
            while True:
                if kind == BLK_BLOBS and r.int() == 0:
                    break
                while (n := r.int()) != 0:
                    if n < 0:
                        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a data chunk", f"length {n} at byte {r.pos}")
                    arch.chunks.append((r.pos, n))
                    r.skip(n)
                    total += n
                if kind == BLK_DATA:
                    break
            arch.blocks[dump_id] = total
            where = "the data blocks"
        arch.size = r.pos
    except _Eof:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, "a complete pg_dump custom archive",
                          f"the file ends inside {where}, at byte {r.pos}") from None
    absent = [e for e in arch.data_entries if e.dump_id not in arch.blocks]
    if absent:
        names = ", ".join(f"{e.namespace}.{e.tag}" for e in absent[:5])
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, f"{len(arch.data_entries)} data blocks",
                          f"{len(absent)} missing at the end of the file ({names})")
    return arch
