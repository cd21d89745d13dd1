"""PostgreSQL directory-format dumps (`pg_dump -Fd`): a folder holding `toc.dat` and one file per
data section (`<dump id>.dat`, compressed: `.dat.gz`, `.dat.lz4` or `.dat.zst`), plus `blobs.toc` /
`blobs_<id>.toc` listing the large-object files.

Structural level: `toc.dat` is parsed to its end (a cut one is `dump_truncated`) and read by
`pg_restore --list`; every data file the table of contents names must be in the folder
(`dump_truncated` when absent) and decode to its end (`dump_unreadable` / `dump_truncated`); so must
every large-object file a blobs table of contents lists.  The files are read through the source, so a
directory dump can live on S3 or SFTP; with `copy_to`, each file read is also written there (a
private folder that `pg_restore` then restores from: the dump is read once).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from reversib.dumps.base import DumpProblem, Structure, find_tool, run_tool, unverifiable
from reversib.dumps.detect import decode, raw_chunks
from reversib.dumps.pgarchive import Archive, chunk_reader, read_archive
from reversib.model import FindingKind
from reversib.sources.base import CancelToken, Source

TOC = "toc.dat"
SUFFIX = {"none": "", "gzip": ".gz", "lz4": ".lz4", "zstd": ".zst"}
BLOB_TOC_DESCS = ("BLOBS", "LARGE OBJECTS")


def folders(files: list[str]) -> set[str]:
    """The folders (relative paths, "" for the root) that hold a `toc.dat` among `files`."""
    return {p[: -len(TOC)].rstrip("/") for p in files if p == TOC or p.endswith("/" + TOC)}


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def read_toc(source: Source, folder: str, copy_to: Path | None = None) -> Archive:
    chunks = _copying(raw_chunks(source, _join(folder, TOC)), copy_to / TOC if copy_to else None)
    read = chunk_reader(chunks)

    arch = read_archive(read, 3)
    for _ in chunks:  # the rest of the file (with copy_to: copied whole)
        pass
    return arch


def _copying(chunks: Iterator[bytes], target: Path | None) -> Iterator[bytes]:
    if target is None:
        yield from chunks
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            yield chunk


def list_toc(arch: Archive, cancel: CancelToken) -> None:
    """`pg_restore --list` on the table of contents alone (in a private folder): proves this client
    reads this archive version."""
    from reversib.dumps.base import clean_env, private_dir

    with private_dir() as d:
        (d / TOC).write_bytes(arch.toc_bytes)
        res = run_tool([find_tool("pg_restore"), "--list", str(d)], env=clean_env({}), cancel=cancel, timeout=300)
    if res.returncode != 0:
        msg = res.error_lines()
        if "unsupported version" in msg or "not supported" in msg:
            raise unverifiable(f"pg_restore is too old for this dump: {msg}", "a pg_restore that reads this dump")
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a table of contents pg_restore reads", msg)


def structural(source: Source, folder: str, files: set[str], cancel: CancelToken, arch: Archive | None = None,
               copy_to: Path | None = None) -> Structure:
    """Check the directory dump in `folder` (`files`: every file path of the export); see the module
    docstring.  `arch`: its table of contents when already read.  `copy_to`: a private folder that
    receives a copy of every file read."""
    if arch is None or copy_to is not None:  # (toc.dat is small: read again to be copied)
        arch = read_toc(source, folder, copy_to)
    list_toc(arch, cancel)
    suffix = SUFFIX[arch.compression]
    decoded_bytes = 0

    def check_file(name: str, what: str) -> None:
        nonlocal decoded_bytes
        path = _join(folder, name)
        if path not in files:
            raise DumpProblem(FindingKind.DUMP_TRUNCATED, f"the data file {name} ({what})",
                              "absent from the dump folder")
        cancel.check()
        try:
            for chunk in decode(_copying(raw_chunks(source, path), copy_to / name if copy_to else None),
                                arch.compression):
                decoded_bytes += len(chunk)
        except DumpProblem as exc:
            raise DumpProblem(exc.kind, f"{exc.expected} in {name} ({what})", exc.actual) from None

    for entry in arch.data_entries:
        if not entry.filename:
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a data file name for each data section",
                              f"none for {entry.desc} {entry.tag}")
        if entry.desc in BLOB_TOC_DESCS:
            blobs = _blob_toc(source, folder, entry.filename, files, copy_to)
            for name in blobs:
                check_file(name + suffix, "a large object")
        else:
            check_file(entry.filename + suffix, f"{entry.desc} {entry.namespace}.{entry.tag}")
    return Structure("postgres-directory", arch.tables, len(arch.data_entries), decoded_bytes)


def _blob_toc(source: Source, folder: str, name: str, files: set[str], copy_to: Path | None) -> list[str]:
    """The large-object files a blobs table of contents lists (`<oid> <file>` lines, uncompressed)."""
    path = _join(folder, name)
    if path not in files:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, f"the large-object list {name}", "absent from the dump folder")
    data = b"".join(_copying(raw_chunks(source, path), copy_to / name if copy_to else None))
    out = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or "/" in parts[1] or parts[1].startswith("."):
            raise DumpProblem(FindingKind.DUMP_UNREADABLE, f"'<oid> <file>' lines in {name}",
                              f"line {n}: {line[:80]!r}")
        out.append(parts[1])
    return out
