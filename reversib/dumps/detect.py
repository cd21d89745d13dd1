"""Reading a dump from its source: outer compression (gzip in-process, zstd through the `zstd`
tool), decoded to the end, and the format sniffed from the first decoded bytes."""

from __future__ import annotations

import subprocess
import threading
import zlib
from collections.abc import Iterator
from contextlib import suppress

from reversib.dumps.base import DumpProblem, clean_env, find_tool
from reversib.model import FindingKind
from reversib.sources.base import Source

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def raw_chunks(source: Source, path: str) -> Iterator[bytes]:
    try:
        with source.open_range(path) as stream:
            while data := stream.read(CHUNK):
                yield data
    except OSError as exc:
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a readable dump", f"read error: {exc}") from exc


def sniff_compression(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def _gunzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    d = zlib.decompressobj(47)
    started = False
    for chunk in chunks:
        data = chunk
        while data:
            if d.eof:  # another gzip member follows (concatenated gzip files)
                d = zlib.decompressobj(47)
            try:
                out = d.decompress(data)
            except zlib.error as exc:
                raise DumpProblem(FindingKind.DUMP_UNREADABLE, "a valid gzip stream", f"gzip: {exc}") from exc
            started = True
            if out:
                yield out
            data = d.unused_data if d.eof else b""
    if not started or not d.eof:
        raise DumpProblem(FindingKind.DUMP_TRUNCATED, "a complete gzip stream",
                          "the gzip stream ends before its end marker")


def _through_tool(chunks: Iterator[bytes], tool: str) -> Iterator[bytes]:
    """Decode with the `zstd` or `lz4` command-line tool (`-d -c -q`), streamed both ways."""
    proc = subprocess.Popen([find_tool(tool), "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env({}))
    errors: list[BaseException] = []
    err = bytearray()

    def feed() -> None:
        assert proc.stdin is not None
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except BaseException as exc:
            errors.append(exc)
            proc.kill()
        finally:
            with suppress(OSError):
                proc.stdin.close()

    def drain() -> None:
        assert proc.stderr is not None
        err.extend(proc.stderr.read(1 << 16))

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=drain, daemon=True)]
    for t in threads:
        t.start()
    try:
        assert proc.stdout is not None
        while data := proc.stdout.read(CHUNK):
            yield data
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in threads:
            t.join(10)
    if errors:
        raise errors[0]
    if proc.returncode != 0:
        msg = " ".join(err.decode("utf-8", "replace").split())[:300] or f"exit status {proc.returncode}"
        low = msg.lower()
        if "truncated" in low or "premature end" in low or "unexpected end" in low or "read error" in low:
            raise DumpProblem(FindingKind.DUMP_TRUNCATED, f"a complete {tool} stream", f"{tool}: {msg}")
        raise DumpProblem(FindingKind.DUMP_UNREADABLE, f"a valid {tool} stream", f"{tool}: {msg}")


def decode(chunks: Iterator[bytes], compression: str) -> Iterator[bytes]:
    """`chunks` decoded (`gzip`, `zstd`, `lz4` or `none`), to the end of the stream."""
    if compression == "gzip":
        return _gunzip(chunks)
    if compression in ("zstd", "lz4"):
        return _through_tool(chunks, compression)
    return chunks


def decoded(source: Source, path: str, compression: str) -> Iterator[bytes]:
    """The dump's bytes after its outer compression (`gzip`, `zstd` or `none`)."""
    return decode(raw_chunks(source, path), compression)


def head_of(source: Source, path: str, n: int = 512) -> bytes:
    with source.open_range(path, 0, n) as stream:
        return stream.read(n)


def sniff_format(head: bytes) -> str | None:
    """The dump kind from its first (decoded) bytes, None when unknown."""
    if head.startswith(b"PGDMP"):
        # byte 10 is the archive format: 1 for a custom archive; a toc.dat (tar, directory) says 3
        return "postgres-custom" if len(head) > 10 and head[10] == 1 else "postgres-directory"
    if head.startswith(b"SQLite format 3\x00"):
        return "sqlite"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "postgres-tar"
    text = head[:4096].decode("latin-1")
    if "PostgreSQL database dump" in text or "SET standard_conforming_strings" in text:
        return "postgres-plain"
    if "MySQL dump" in text or "MariaDB dump" in text or "/*!40101 SET" in text:
        return "mysql"
    return None


def decoded_head(source: Source, path: str, compression: str, n: int = 4096) -> bytes:
    out = b""
    gen = decoded(source, path, compression)
    try:
        for chunk in gen:
            out += chunk
            if len(out) >= n:
                break
    except DumpProblem:
        pass  # the full read reports it
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    return out[:n]
