"""The source interface every backend implements (local files now; S3, SFTP, archives later).

A source is rooted at one place (a directory, a bucket prefix, a remote path).  It:

* connects lazily -- never in its constructor -- and releases everything in `close()`;
* lists every entry below its root with `iter_entries()`, **in canonical order**: ascending
  code-point order of the full relative path (`/`-separated), which equals UTF-8 byte order and is
  the order S3 lists keys in.  The verifier merges this stream with the sorted manifest, so a
  source that breaks the order is a bug that the verifier reports;
* opens a byte range of an entry with `open_range(path, offset, length)` as a binary stream;
* declares its capabilities (`digests_without_download`, `latency_bound`);
* honours the run's `CancelToken` and `RateLimiter`, passed in, never global.

Adding a backend means copying `local.py` and keeping its shape.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO


class Cancelled(Exception):
    """The run was cancelled (SIGINT/SIGTERM, daemon shutdown)."""


class SourceError(Exception):
    """The source could not be reached, authenticated or listed: the run cannot conclude.

    The message must name the place (URL, endpoint) and never a secret.
    """


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)


class RateLimiter:
    """A token bucket shared by every stream of a run: at most `rate` bytes per second.  It also counts
    every byte read through it (`consumed`: the run's bytes downloaded)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.consumed = 0
        self._lock = threading.Lock()
        self._clock = clock
        self._next = self._clock()

    def consume(self, nbytes: int) -> None:
        if nbytes <= 0:
            return
        if not self.rate:
            with self._lock:
                self.consumed += nbytes
            return
        with self._lock:
            self.consumed += nbytes
            now = self._clock()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
            wait = start - now
        if wait > 0:
            time.sleep(wait)


class EntryType(str, enum.Enum):
    FILE = "file"
    SYMLINK = "symlink"  # a link reversib will not follow (dangling, escaping, or to a directory)
    OTHER = "other"  # device, socket, fifo...


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed entry.  `digests` holds digests the source can give without a download
    (algorithm name -> lowercase hex; with `hashed`, computed by reversib from the bytes), `problem`
    explains why an entry must not be read."""

    path: str
    size: int | None
    mtime: float | None = None
    type: EntryType = EntryType.FILE
    digests: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    # True when `digests` were computed by reversib itself from every byte of the entry while listing
    # (an archive's members, read in one pass): the verifier compares them as a download, without a second read.
    hashed: bool = False


@dataclass(frozen=True)
class StoredDigests:
    """Digests a source can give for one entry without downloading it, and how it got them."""

    tier: str  # a reversib.model.Tier value: "stored_checksum" or "remote_digest"
    digests: dict[str, str]  # algorithm -> lowercase hex
    detail: str | None = None  # e.g. "S3 ChecksumSHA256", "sha256sum on the server"
    # Values that change with the content but are no whole-file digest (an S3 multipart ETag, a composite
    # checksum, as "hex-N"): the verifier compares them with those recorded at the last full download.
    composite: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    # Algorithms for which `Entry.digests` is filled without downloading the data.
    digests_without_download: frozenset[str] = frozenset()
    # True when each open costs a round trip (S3, SFTP): many small files should be read in parallel.
    latency_bound: bool = False
    # Reads in flight a latency-bound source wants (0: fixity.parallelism decides).
    parallelism: int = 0
    # A digest mismatch is downloaded once more, to tell a transfer fault from the stored data (verify.py).
    recheck_mismatch: bool = False
    # Small files the verifier hands to `open_many` together (0: one `open_range` each), and the largest
    # listed size it hands over that way: worth it where the source reads a batch at less than one round
    # trip per file (SFTP pipelines the opens and reads of a whole batch).
    batch_files: int = 0
    batch_file_max: int = 0


class Source(ABC):
    scheme: str = ""

    def __init__(self, url: str, *, cancel: CancelToken | None = None, limiter: RateLimiter | None = None):
        self.url = url
        self.cancel = cancel or CancelToken()
        self.limiter = limiter or RateLimiter(None)

    # -- what every backend implements -------------------------------------------------
    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    def iter_entries(self) -> Iterator[Entry]:
        """Every entry below the root, recursively, in canonical order."""

    @abstractmethod
    def stat(self, path: str) -> Entry | None:
        """One entry by relative path, or None when absent."""

    @abstractmethod
    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        """A binary stream positioned at `offset` (raises FileNotFoundError/OSError)."""

    @abstractmethod
    def child_dirs(self) -> list[str]:
        """Names of the directories (prefixes) directly below the root, for generation selection."""

    @abstractmethod
    def sub(self, name: str) -> Source:
        """A source of the same kind rooted at the child `name` (a generation)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the source may be used again afterwards (it reconnects)."""

    def relative(self, location: str) -> str | None:
        """The path of `location` (a URL or path) inside this source, or None if it is elsewhere."""
        return None

    def digests_without_download(self, entry: Entry, algorithms: tuple[str, ...]) -> StoredDigests | None:
        """Digests of `entry` for some of `algorithms` obtained without a download (S3 stored
        checksums, a hash command run on an SFTP server), or None.  Only called for algorithms
        listed in `capabilities.digests_without_download`, and only when the check accepts the tier."""
        return None

    def process_root(self) -> str | None:
        """A local folder that a helper process may reopen as a `LocalSource` to share the hashing
        of many small files, or None when this source cannot be shared across processes."""
        return None

    def describe(self) -> str:
        """The source's place for messages: never contains a secret."""
        return self.url

    # -- shared behaviour ---------------------------------------------------------------
    def open_range(self, path: str, offset: int = 0, length: int | None = None) -> GuardedStream:
        """Open `length` bytes of `path` from `offset` (to the end when None)."""
        self.cancel.check()
        raw = self._open_raw(path, offset) if length is None else self._open_raw_range(path, offset, length)
        return GuardedStream(raw, self.cancel, self.limiter, length)

    def open_many(self, paths: Sequence[str]) -> Iterator[tuple[str, GuardedStream | OSError]]:
        """Whole files of `paths`, in that order: (path, stream) or (path, the OSError opening it raised),
        the caller closing each stream.  Here one `open_range` at a time; a backend declaring
        `Capabilities.batch_files` reads the batch at once (a failure of the connection: SourceError)."""
        for path in paths:
            try:
                stream = self.open_range(path)
            except OSError as exc:
                yield path, exc
                continue
            yield path, stream

    def _open_raw_range(self, path: str, offset: int, length: int) -> BinaryIO:
        """A stream of at least `length` bytes from `offset` (or to the end); a backend that can ask its
        server for exactly that range (an S3 `Range` header) overrides this."""
        return self._open_raw(path, offset)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GuardedStream:
    """Wraps a backend stream: checks cancellation and the rate limit on every read, stops at
    `length`.  Only `readinto` and `read` are offered: that is all the verifier uses."""

    def __init__(self, raw: BinaryIO, cancel: CancelToken, limiter: RateLimiter, length: int | None):
        self._raw = raw
        self._cancel = cancel
        self._limiter = limiter
        self._left = length

    def readinto(self, buf: memoryview | bytearray) -> int:
        self._cancel.check()
        view = memoryview(buf)
        if self._left is not None:
            if self._left <= 0:
                return 0
            if len(view) > self._left:
                view = view[: self._left]
        n = self._raw.readinto(view)  # type: ignore[attr-defined]
        n = n or 0
        if self._left is not None:
            self._left -= n
        self._limiter.consume(n)
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            chunks = []
            buf = bytearray(1 << 20)
            while n := self.readinto(buf):
                chunks.append(bytes(buf[:n]))
            return b"".join(chunks)
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])

    @property
    def extra_digests(self) -> dict[str, str] | None:
        """Values the backend derived while the bytes flowed (S3: a multipart object's composite values),
        read once the stream is at its end; None when it derives none."""
        extra = getattr(self._raw, "extra_digests", None)
        return dict(extra) if extra else None

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
