"""The layers under an archive as a stream: read (and hash) the file, decrypt, decompress.

    source.open_range ──> [reader thread: outer digests, byte count] ──> age/gpg process ──>
        [decompress thread: gzip/zstd/xz/bz2] ──> bounded queue ──> the tar reader (caller's thread)

Each layer runs on its own thread or process, so decryption, decompression and member hashing use
every core; queues and pipes are bounded, so memory does not grow with the archive.  Nothing is
written to disk.  When the reader downstream stops early (a corrupt member, a bomb limit, a
decryption failure), the reader thread still reads the file to its end if its own digests were asked
for: the archive file is then read exactly once for both checks.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import queue
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from reversib import digests
from reversib.archives import detect
from reversib.archives.decrypt import Decryption
from reversib.queues import put_unless
from reversib.sources.base import Cancelled, Source

CHUNK = 1 << 20
QUEUE_CHUNKS = 8  # chunks in flight between two threads (8 MiB)


class LayerError(Exception):
    """A layer failed: `layer` is "source", "decompress" or "container"; `cause` the original error."""

    def __init__(self, layer: str, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.layer = layer
        self.cause = cause


class _ChunkQueue:
    """A bounded queue of byte chunks between two threads, read as a binary stream."""

    def __init__(self, abandoned: threading.Event):
        self._q: queue.Queue[bytes | None] = queue.Queue(QUEUE_CHUNKS)
        self._abandoned = abandoned
        self.error: BaseException | None = None

    # -- producer side
    def put(self, chunk: bytes) -> bool:
        """False when the consumer has gone away."""
        return put_unless(self._q, chunk, self._abandoned)

    def close(self, error: BaseException | None = None) -> None:
        self.error = error
        put_unless(self._q, None, self._abandoned)


class _QueueReader(io.RawIOBase):
    def __init__(self, q: _ChunkQueue):
        super().__init__()
        self._q = q
        self._view = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._view:
            if self._eof:
                return 0
            chunk = self._q._q.get()
            if chunk is None:
                self._eof = True
                if self._q.error is not None:
                    raise self._q.error
                return 0
            self._view = memoryview(chunk)
        n = min(len(buf), len(self._view))
        buf[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


class _Prefixed(io.RawIOBase):
    """Bytes already read (a sniffed head), then the rest of a stream."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buf)  # type: ignore[attr-defined,no-any-return]


def _read_head(stream: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _decompressor(kind: str, raw: IO[bytes]) -> IO[bytes]:
    if kind == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zst":
        try:
            from compression.zstd import ZstdFile  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            from backports.zstd import ZstdFile
        return ZstdFile(raw)  # type: ignore[no-any-return,unused-ignore]
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if kind == "bz2":
        return bz2.BZ2File(raw)
    raise ValueError(f"unknown compression {kind!r}")


class Pipeline:
    """One read of an archive file through its layers; use as a context manager.

    `stream` is the plaintext, decompressed byte stream (the tar).  After the caller is done,
    `finish()` waits for every layer and returns; `outer_digests`, `compressed_bytes`,
    `decryption.verdict()` and `errors` then tell what each layer saw."""

    def __init__(self, source: Source, path: str, *, outer_algorithms: tuple[str, ...] = (),
                 decryption: Decryption | None = None, compression: str = "none",
                 on_bytes: Callable[[int], None] | None = None):
        self.source = source
        self.path = path
        self.outer_algorithms = outer_algorithms
        self.decryption = decryption
        self.compression = compression
        self.on_bytes = on_bytes
        self.compressed_bytes = 0
        self.outer_digests: dict[str, str] = {}
        self.read_to_end = False
        self.errors: list[LayerError] = []
        self._abandoned = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stream: BinaryIO | None = None
        self.plaintext_zip = False  # the decrypted plaintext is a zip (needs random access: refused)

    # -- set-up
    def __enter__(self) -> Pipeline:
        sink: _ChunkQueue | IO[bytes] | None
        if self.decryption is not None:
            proc_in, proc_out = self.decryption.start()
            sink = proc_in
            plain: IO[bytes] = proc_out
        else:
            q = _ChunkQueue(self._abandoned)
            sink = q
            plain = io.BufferedReader(_QueueReader(q), CHUNK)
        try:
            self._spawn(self._read_file, sink, name="reversib-archive-read")
            if self.compression == "auto":  # only the plaintext can tell
                head = _read_head(plain, 512)
                self.compression = detect.compression_of(head)
                self.plaintext_zip = self.compression == "none" and detect.is_zip(head)
                plain = io.BufferedReader(_Prefixed(head, plain), CHUNK)
            if self.compression == "none":
                self.stream = plain  # type: ignore[assignment]
            else:
                out = _ChunkQueue(self._abandoned)
                self._spawn(self._decompress, plain, out, name="reversib-archive-decompress")
                self.stream = io.BufferedReader(_QueueReader(out), CHUNK)  # type: ignore[assignment]
        except BaseException as exc:  # __exit__ is not called when __enter__ fails: tear down here
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # -- layers
    def _read_file(self, sink: _ChunkQueue | IO[bytes]) -> None:
        hashers = [digests.new(a) for a in self.outer_algorithms]
        feeding = True
        error: BaseException | None = None
        try:
            with self.source.open_range(self.path) as stream:
                while True:
                    chunk = stream.read(CHUNK)
                    if not chunk:
                        self.read_to_end = True
                        break
                    for h in hashers:
                        h.update(chunk)
                    self.compressed_bytes += len(chunk)
                    if self.on_bytes is not None:
                        self.on_bytes(len(chunk))
                    if feeding:
                        feeding = self._feed(sink, chunk)
                    if not feeding and (not hashers or self.source.cancel.cancelled):
                        break
        except Cancelled as exc:
            error = exc
        except OSError as exc:
            error = exc
            self.errors.append(LayerError("source", f"reading {self.path}: {exc.strerror or exc}", exc))
        except Exception as exc:  # a source's own failure (SourceError...)
            error = exc
            self.errors.append(LayerError("source", f"reading {self.path}: {exc}", exc))
        finally:
            if self.read_to_end and hashers:
                self.outer_digests = {a: h.hexdigest() for a, h in zip(self.outer_algorithms, hashers, strict=True)}
            if isinstance(sink, _ChunkQueue):
                sink.close(LayerError("source", "the archive file could not be read to its end", error)
                           if error is not None else None)
            else:
                try:
                    sink.close()
                except OSError:
                    pass

    def _feed(self, sink: _ChunkQueue | IO[bytes], chunk: bytes) -> bool:
        if isinstance(sink, _ChunkQueue):
            return sink.put(chunk)  # False once the reader downstream stopped
        # A decryption process gets every byte even when the reader downstream stopped: its verdict
        # (a bad MDC is only known at the end) must be about the whole ciphertext.
        try:
            sink.write(chunk)
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False  # the process stopped: its verdict says why

    def _decompress(self, plain: IO[bytes], out: _ChunkQueue) -> None:
        error: BaseException | None = None
        try:
            with _decompressor(self.compression, plain) as d:
                while not self._abandoned.is_set():
                    chunk = d.read(CHUNK)
                    if not chunk:
                        break
                    if not out.put(chunk):
                        break
        except LayerError as exc:
            error = exc
        except Exception as exc:  # zlib.error, EOFError, LZMAError, ZstdError, OSError (bad header)...
            error = LayerError("decompress", f"{self.compression} stream: {_describe(exc)}", exc)
        finally:
            out.close(error)

    # -- teardown
    def abandon(self) -> None:
        """The reader downstream stops early: let every layer wind down."""
        self._abandoned.set()

    def finish(self) -> None:
        """Wait for every layer: the decompressor stops at its next chunk, the decryption process runs to
        its end (output discarded) so its verdict covers the whole file, the file reader finishes its digests."""
        self._abandoned.set()
        for t in self._threads[1:]:
            t.join()
        if self.decryption is not None:
            self.decryption.finish()
        for t in self._threads[:1]:  # the file reader
            t.join()

    def __exit__(self, *exc: object) -> None:
        if self.decryption is not None and (self.source.cancel.cancelled or exc[0] is not None):
            self.decryption.kill()
        self.finish()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError):
        return f"truncated ({text})"
    return text
