"""`sftp://user@host:port/path` source: an export on an SFTP server (paramiko).

* Connects lazily, on first use, never in the constructor.  Host keys are verified against a
  known_hosts file; an unknown or changed key is a `SourceError` that shows the offered SHA256
  fingerprint and how to trust it.  Trust-on-first-use only when `trust_on_first_use: true`, and
  then the key is appended to known_hosts and pinned.  Never paramiko's AutoAddPolicy.
* Listing uses `lstat` semantics (READDIR answers carry lstat attributes) in canonical order.  A
  symlink is followed only when the server's realpath of it stays inside the export root and is a
  regular file; otherwise it is listed with a `problem` and never read.  The export root and every
  folder opened are resolved with the server's realpath and checked to be inside the root.
* Reads are pipelined: 128 KiB READ requests, a window that grows from 2 to 32 outstanding
  requests (so that reading a 4 KiB manifest head costs one round trip), TCP_NODELAY, a large SSH
  window, and paramiko's client-initiated re-key deferred (paramiko #822).  Each verifier thread
  borrows one connection of a small pool (`max_sessions`).  Small files come in batches
  (`open_many`, sftp_batch.py): the OPENs of up to 64 files in one packet, their READs in the next,
  the CLOSEs with the following request -- about two round trips per batch instead of two per file.
* Listing asks for a folder's realpath in the same packet as its OPENDIR.
* A cut or stalled connection is resumed from the last byte handed to the caller on a new
  connection (`retries` times), inside the stream: the verifier sees one continuous stream.  Every
  wait is bounded: the idle timeout on each channel, the connect timeout and the per-file timeout
  by a watchdog thread that closes the connection.  When all resumptions fail the run ends with
  `error` (a `SourceError`).
* With `remote_hash: true` and an account that may run commands, `sha256sum -- PATH` (and the other
  coreutils digests) runs on the server: tier `remote_digest`.  With `exec_stream: true` files are
  read with `cat` over an exec channel.  On an SFTP-only account (internal-sftp) both fall back to
  plain SFTP.
"""

from __future__ import annotations

import io
import logging
import posixpath
import shlex
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO
from urllib.parse import quote

from paramiko.sftp import CMD_CLOSE, CMD_DATA, CMD_OPEN, CMD_READ, CMD_STATUS, SFTP_FLAG_READ, int64
from paramiko.sftp_attr import SFTPAttributes
from paramiko.ssh_exception import SSHException

from reversib import digests
from reversib.sources.base import (
    CancelToken,
    Capabilities,
    Entry,
    EntryType,
    GuardedStream,
    RateLimiter,
    Source,
    SourceError,
    StoredDigests,
)
from reversib.sources.sftp_batch import Grew, Result, fetch
from reversib.sources.sftp_conn import (
    EXEC_READ,
    REQUEST_SIZE,
    TRANSPORT_ERRORS,
    Conn,
    Connector,
    Guard,
    Place,
    Pool,
    Responses,
    ServerStatus,
    _describe,
    _redact,
    fs_path,
    is_dir,
    is_link,
    is_regular,
    parse_url,
    status_error,
)
from reversib.sources.sftp_options import SftpOptions

# The connection failed (not the request): worth a retry on a new connection.  Refusals (not a regular
# file, permission, missing) are plain OSErrors and are never retried.
_CONNECTION_FAILURES: tuple[type[BaseException], ...] = (SSHException, EOFError, TimeoutError,
                                                         ConnectionError)

log = logging.getLogger("reversib.sftp")

MAX_OUTSTANDING = 32  # READ requests in flight per stream (x 128 KiB = 4 MiB)
LISTED_CACHE = 8192  # recently listed regular files: opened without another lstat
HASH_TOOLS = {"md5": "md5sum", "sha1": "sha1sum", "sha224": "sha224sum", "sha256": "sha256sum",
              "sha384": "sha384sum", "sha512": "sha512sum", "blake2b": "b2sum"}
EXEC_PROBE = b"reversib-exec-ok"
EXEC_MIN_BYTES = 4 << 20  # smaller files are read over SFTP even with exec_stream (see _worth_a_command)
BATCH_FILES = 64  # small files read together on one session (sftp_batch): about two round trips in all
BATCH_FILE_MAX = 256 << 10  # listed size up to which a file is read in a batch (two READs at most)
REMOTE_HASH_MIN_RATE = 20e6  # bytes/s assumed for the server's hash command when bounding its wait


class _Shared:
    """What a source and its generations (`sub`) share: one connector, one pool."""

    def __init__(self, place: Place, options: SftpOptions):
        self.connector = Connector(place, options)
        self.pool = Pool(self.connector)
        self.lock = threading.Lock()


class SftpSource(Source):
    scheme = "sftp"

    def __init__(self, url: str, options: SftpOptions | None = None, *, cancel: CancelToken | None = None,
                 limiter: RateLimiter | None = None, _shared: _Shared | None = None):
        super().__init__(url, cancel=cancel, limiter=limiter)
        self.options = options or SftpOptions()
        self.place = parse_url(url, self.options)  # no network here
        self._shared = _shared or _Shared(self.place, self.options)
        self._root_real: str | None = None
        self._dirs: dict[str, str] = {}
        self._listed: OrderedDict[str, tuple[str, int | None]] = OrderedDict()
        self._lock = threading.Lock()

    # -- interface ------------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        algs = frozenset(HASH_TOOLS) if self.options.remote_hash else frozenset()
        return Capabilities(digests_without_download=algs, latency_bound=True, batch_files=BATCH_FILES,
                            batch_file_max=BATCH_FILE_MAX)

    @property
    def pool(self) -> Pool:
        return self._shared.pool

    def describe(self) -> str:
        return _redact(self.url)

    def process_root(self) -> str | None:
        return None

    def close(self) -> None:
        self.pool.close()
        self._root_real = None
        self._dirs.clear()
        with self._lock:
            self._listed.clear()

    # -- paths --------------------------------------------------------------------------------
    def _root(self, conn: Conn) -> str:
        if self._root_real is None:
            path = self.place.path
            if path.startswith("~"):
                path = path[1:].lstrip("/") or "."
            try:
                real = conn.realpath(path)
                attrs = conn.stat(real)
            except ServerStatus as exc:
                raise SourceError(f"{self.describe()}: export root {self.place.path} cannot be opened: "
                                  f"{exc.strerror or exc}") from exc
            if not is_dir(attrs):
                raise SourceError(f"{self.describe()}: export root {self.place.path} is not a directory")
            self._root_real = real
        return self._root_real

    def _inside(self, root: str, real: str) -> bool:
        return real == root or real.startswith(root.rstrip("/") + "/")

    def _join(self, base: str, rel: str) -> str:
        if not rel:
            return base
        return base.rstrip("/") + "/" + rel

    def _real_dir(self, conn: Conn, rel_dir: str) -> str:
        """The server's realpath of a folder below the root, checked to be inside the root (cached)."""
        root = self._root(conn)
        if not rel_dir:
            return root
        real = self._dirs.get(rel_dir)
        if real is None:
            real = conn.realpath(self._join(root, rel_dir))
            if not self._inside(root, real):
                raise PermissionError(f"refusing to open below {rel_dir}: it resolves outside the export root")
            self._dirs[rel_dir] = real
        return real

    def _remember(self, rel: str, real: str, size: int | None) -> None:
        with self._lock:
            self._listed[rel] = (real, size)
            if len(self._listed) > LISTED_CACHE:
                self._listed.popitem(last=False)

    def _entry(self, conn: Conn, rel: str, full: str, attrs: SFTPAttributes) -> Entry:
        mtime = float(attrs.st_mtime) if attrs.st_mtime is not None else None
        if is_regular(attrs):
            self._remember(rel, full, attrs.st_size)
            return Entry(rel, attrs.st_size, mtime)
        if is_link(attrs):
            root = self._root(conn)
            try:
                target = conn.readlink(full)
            except ServerStatus:
                target = "?"
            try:
                real = conn.realpath(full)
            except ServerStatus:
                lexical = posixpath.normpath(posixpath.join(posixpath.dirname(full), target))
                if not self._inside(root, lexical):
                    return Entry(rel, None, None, EntryType.SYMLINK,
                                 problem=f"symlink leaves the export root (-> {target})")
                return Entry(rel, None, None, EntryType.SYMLINK, problem=f"dangling symlink (-> {target})")
            if not self._inside(root, real):
                return Entry(rel, None, None, EntryType.SYMLINK,
                             problem=f"symlink leaves the export root (-> {target})")
            try:
                tattrs = conn.stat(real)
            except ServerStatus:
                return Entry(rel, None, None, EntryType.SYMLINK, problem=f"dangling symlink (-> {target})")
            if is_regular(tattrs):
                self._remember(rel, real, tattrs.st_size)
                tm = float(tattrs.st_mtime) if tattrs.st_mtime is not None else None
                return Entry(rel, tattrs.st_size, tm)
            return Entry(rel, None, None, EntryType.SYMLINK, problem="symlink to a directory (not followed)")
        return Entry(rel, None, mtime, EntryType.OTHER, problem="not a regular file")

    def _with_retry(self, what: str, fn: Any) -> Any:
        """Run `fn(conn)` on a pooled connection; a broken connection is replaced `retries` times."""
        attempt = 0
        while True:
            self.cancel.check()
            try:
                with self.pool.session() as conn:
                    return fn(conn)
            except ServerStatus:
                raise
            except (PermissionError, FileNotFoundError, IsADirectoryError, SourceError):
                raise
            except TRANSPORT_ERRORS as exc:
                attempt += 1
                if attempt > self.options.retries:
                    raise SourceError(f"{self.describe()}: {what} failed: {_describe(exc)}") from exc
                log.warning("sftp %s: %s failed (%s); retrying on a new connection", self.describe(), what,
                            _describe(exc))

    # -- listing -----------------------------------------------------------------------------
    def iter_entries(self) -> Iterator[Entry]:
        yield from self._walk("")

    def _list_dir(self, rel_dir: str) -> tuple[list[tuple[str, bool]], dict[str, Entry]]:
        """One folder: its children in canonical order (name, is_dir) and the entries of the non-folders."""

        def work(conn: Conn) -> tuple[list[tuple[str, bool]], dict[str, Entry]]:
            root = self._root(conn)
            real = self._dirs.get(rel_dir) if rel_dir else root
            if real is not None:
                children = conn.listdir(real)
            else:  # the folder's realpath comes with its listing: checked before any name is read
                found: list[str] = []

                def inside(resolved: str) -> None:
                    if not self._inside(root, resolved):
                        raise PermissionError(f"refusing to open below {rel_dir}: it resolves outside the export "
                                              "root")
                    found.append(resolved)

                children = conn.listdir(self._join(root, rel_dir), check=inside)
                real = self._dirs[rel_dir] = found[0]
            keyed = sorted(((name + "/" if is_dir(a) else name), name, a) for name, a in children)
            order: list[tuple[str, bool]] = []
            entries: dict[str, Entry] = {}
            prefix = rel_dir + "/" if rel_dir else ""
            for key, name, attrs in keyed:
                folder = key.endswith("/")
                order.append((name, folder))
                if not folder:
                    entries[name] = self._entry(conn, prefix + name, self._join(real, name), attrs)
            return order, entries

        result: tuple[list[tuple[str, bool]], dict[str, Entry]] = self._with_retry(
            f"listing {rel_dir or '/'}", work)
        return result

    def _walk(self, rel_dir: str) -> Iterator[Entry]:
        self.cancel.check()
        try:
            order, entries = self._list_dir(rel_dir)
        except (ServerStatus, PermissionError) as exc:
            if rel_dir == "":
                raise SourceError(f"{self.describe()}: cannot list the export root: {exc.strerror or exc}") from exc
            yield Entry(rel_dir, None, None, EntryType.OTHER,
                        problem=f"directory cannot be listed: {exc.strerror or exc}")
            return
        prefix = rel_dir + "/" if rel_dir else ""
        for name, folder in order:
            if folder:
                yield from self._walk(prefix + name)
            else:
                yield entries[name]

    def stat(self, path: str) -> Entry | None:
        parent, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            return None

        def work(conn: Conn) -> Entry | None:
            try:
                real_dir = self._real_dir(conn, parent)
            except ServerStatus:
                return None
            except PermissionError as exc:
                return Entry(path, None, None, EntryType.SYMLINK, problem=str(exc))
            full = self._join(real_dir, name)
            try:
                attrs = conn.lstat(full)
            except ServerStatus:
                return None
            if is_dir(attrs):
                mtime = float(attrs.st_mtime) if attrs.st_mtime is not None else None
                return Entry(path, None, mtime, EntryType.OTHER, problem="a directory")
            return self._entry(conn, path, full, attrs)

        result: Entry | None = self._with_retry(f"stat of {path}", work)
        return result

    def child_dirs(self) -> list[str]:
        def work(conn: Conn) -> list[str]:
            try:
                children = conn.listdir(self._root(conn))
            except ServerStatus as exc:
                raise SourceError(f"{self.describe()}: cannot list the export root: {exc.strerror or exc}") from exc
            return sorted(name for name, a in children if is_dir(a))

        result: list[str] = self._with_retry("listing the export root", work)
        return result

    def sub(self, name: str) -> SftpSource:
        url = self.url.rstrip("/") + "/" + quote(name, safe="", errors="surrogateescape")
        return SftpSource(url, self.options, cancel=self.cancel, limiter=self.limiter, _shared=self._shared)

    def relative(self, location: str) -> str | None:
        if not location.lower().startswith("sftp://"):
            return None
        try:
            other = parse_url(location, self.options)
        except SourceError:
            return None
        if (other.user, other.host, other.port) != (self.place.user, self.place.host, self.place.port):
            return None
        root = self.place.path.rstrip("/")
        path = other.path.rstrip("/")
        if path == root:
            return ""
        if path.startswith(root + "/"):
            return path[len(root) + 1:]
        return None

    # -- reading ------------------------------------------------------------------------------
    def resolve_for_read(self, conn: Conn, path: str) -> tuple[str, int | None]:
        """The real path to open for `path` and its size; refuses anything that is not a regular
        file inside the root (a FIFO would block the server's sftp process)."""
        with self._lock:
            known = self._listed.get(path)
        if known is not None:
            return known
        parent, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            raise PermissionError(f"refusing to open {path!r}: not a file name")
        full = self._join(self._real_dir(conn, parent), name)
        attrs = conn.lstat(full)
        if is_regular(attrs):
            return full, attrs.st_size
        if is_link(attrs):
            real = conn.realpath(full)
            if not self._inside(self._root(conn), real):
                raise PermissionError(f"refusing to open {path}: it resolves outside the export root")
            tattrs = conn.stat(real)
            if is_regular(tattrs):
                return real, tattrs.st_size
        if is_dir(attrs):
            raise IsADirectoryError(21, "is a directory")
        raise OSError(f"not a regular file: {path}")

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        if self.options.exec_stream and self._worth_a_command(path, offset) and self._exec_available():
            return _ExecStream(self, path, offset)  # type: ignore[return-value]
        return _SftpStream(self, path, offset)  # type: ignore[return-value]

    def open_many(self, paths: Sequence[str]) -> Iterator[tuple[str, GuardedStream | OSError]]:
        """Small files read together on one session (see sftp_batch), then handed over one by one from
        memory (at most BATCH_FILES x BATCH_FILE_MAX bytes).  A file larger than BATCH_FILE_MAX, or one
        that grew since it was listed, is opened as a stream when its turn comes."""
        results = self._fetch_many(paths)
        for i, path in enumerate(paths):
            got = results[i]
            if isinstance(got, Grew):
                try:
                    yield path, self.open_range(path)
                except OSError as exc:
                    yield path, exc
            elif isinstance(got, OSError):
                yield path, got
            else:
                yield path, GuardedStream(io.BytesIO(got), self.cancel, self.limiter, None)

    def _fetch_many(self, paths: Sequence[str]) -> dict[int, Result]:
        """Every file of `paths` by index: its bytes, its own error, or Grew (to be read as a stream).  A
        connection that fails is replaced `retries` times and the files not finished are read again from
        their start (nothing of them was handed over); then, or past `file_timeout` (all files of a batch
        are in flight from its start), a SourceError: could not verify, never a pass."""
        results: dict[int, Result] = {}
        if not paths:
            return results
        o = self.options
        deadline = time.monotonic() + o.file_timeout if o.file_timeout else None
        attempts = 0
        while True:
            self.cancel.check()
            pool = self.pool
            conn = pool.acquire()
            guard = pool.watchdog.watch(deadline, conn.transport, f"reading {len(paths)} small files") \
                if deadline is not None else None
            try:
                files: dict[int, tuple[str, int]] = {}
                for i, path in enumerate(paths):
                    if i in results:
                        continue
                    try:
                        real, size = self.resolve_for_read(conn, path)
                    except _CONNECTION_FAILURES:
                        raise
                    except OSError as exc:  # refused, missing, not a regular file: this file's finding
                        results[i] = exc
                        continue
                    if size is None or size > BATCH_FILE_MAX:
                        results[i] = Grew()
                    else:
                        files[i] = (real, size)
                fetch(conn, files, results)
                return results
            except TRANSPORT_ERRORS as exc:
                conn.broken = True
                where = f"{self.describe()}: reading {paths[0]} and {len(paths) - 1} more small files"
                if guard is not None and guard.fired:
                    raise SourceError(f"{where}: file_timeout ({o.file_timeout:g}s) exceeded") from exc
                attempts += 1
                if attempts > o.retries:
                    raise SourceError(f"{where}: {_describe(exc)} (after {attempts - 1} retries; "
                                      f"idle_timeout {o.idle_timeout:g}s)") from exc
                log.warning("sftp %s: %s; retrying on a new connection", where, _describe(exc))
            except BaseException:
                conn.broken = True
                raise
            finally:
                if guard is not None:
                    pool.watchdog.unwatch(guard)
                pool.release(conn)

    def _worth_a_command(self, path: str, offset: int) -> bool:
        """Stream over an exec channel only what is long enough to repay starting a command on the server
        (a session, a shell and `cat`: 50-200 ms): files listed with EXEC_MIN_BYTES or more left to read.
        Small files, and files not listed yet (the manifest, read before the listing), go over the SFTP
        session that is already open."""
        with self._lock:
            known = self._listed.get(path)
        return known is not None and known[1] is not None and known[1] - offset >= EXEC_MIN_BYTES

    # -- commands on the server ---------------------------------------------------------------------
    def _exec_available(self) -> bool:
        pool = self.pool
        if pool.exec_ok is None:
            def probe(conn: Conn) -> bool:
                try:
                    out, _, code = _run(conn, b"printf %s " + EXEC_PROBE, self.options.idle_timeout)
                except TRANSPORT_ERRORS as exc:
                    if not conn.transport.is_active():
                        raise
                    log.info("sftp %s: commands not available (%s): SFTP only", self.describe(), _describe(exc))
                    return False
                ok = code == 0 and out == EXEC_PROBE
                if not ok:
                    log.info("sftp %s: the account cannot run commands: SFTP only", self.describe())
                return ok

            with self._shared.lock:
                if pool.exec_ok is None:
                    pool.exec_ok = bool(self._with_retry("probing for commands", probe))
        return bool(pool.exec_ok)

    def digests_without_download(self, entry: Entry, algorithms: tuple[str, ...]) -> StoredDigests | None:
        if not self.options.remote_hash:
            return None
        usable = [a for a in digests.STRENGTH if a in algorithms and a in HASH_TOOLS]
        if not usable or not self._exec_available():
            return None
        alg = usable[0]
        tool = HASH_TOOLS[alg]
        o = self.options
        size = entry.size or 0
        wait = o.file_timeout or max(o.idle_timeout, o.idle_timeout + size / REMOTE_HASH_MIN_RATE)

        def work(conn: Conn) -> StoredDigests | None:
            real, _ = self.resolve_for_read(conn, entry.path)
            cmd = f"{tool} -- {shlex.quote(real)}".encode("utf-8", "surrogateescape")
            with self.pool.watchdog.guard(wait, conn.transport, f"{tool} of {entry.path}") as g:
                try:
                    out, err, code = _run(conn, cmd, wait)
                except TRANSPORT_ERRORS as exc:
                    if g.fired:
                        raise SourceError(f"{self.describe()}: {tool} of {entry.path} took longer than "
                                          f"{wait:.0f}s") from exc
                    raise
            if code != 0:
                log.info("sftp %s: %s of %s failed (exit %s): downloading instead", self.describe(), tool,
                         entry.path, code)
                return None
            line = out.split(b"\n", 1)[0].decode("ascii", "replace")
            hexdigest = line.lstrip("\\").split(" ", 1)[0].lower()
            if len(hexdigest) != digests.new(alg).digest_size * 2 or \
                    any(c not in "0123456789abcdef" for c in hexdigest):
                return None
            return StoredDigests("remote_digest", {alg: hexdigest}, detail=f"{tool} on the server")

        try:
            result: StoredDigests | None = self._with_retry(f"{tool} of {entry.path}", work)
        except (ServerStatus, PermissionError, FileNotFoundError, IsADirectoryError):
            return None
        return result


def _run(conn: Conn, command: bytes, timeout: float) -> tuple[bytes, bytes, int]:
    """Run one command over an exec channel: (stdout, stderr, exit status)."""
    chan = conn.exec(command, timeout)
    try:
        out = bytearray()
        while chunk := chan.recv(1 << 16):
            out += chunk
        err = bytearray()
        while chunk := chan.recv_stderr(1 << 16):
            err += chunk
        if not chan.status_event.wait(timeout):
            raise TimeoutError("no exit status")
        return bytes(out), bytes(err), int(chan.recv_exit_status())
    finally:
        chan.close()


class _Stream(io.RawIOBase):
    """Shared by both readers: one pooled connection, resumption from `pos` on a new one, the
    per-file deadline enforced by the watchdog."""

    def __init__(self, src: SftpSource, path: str, offset: int):
        super().__init__()
        self.src = src
        self.path = path
        self.pos = offset  # offset of the next byte not yet received
        self.attempts = 0
        self.conn: Conn | None = None
        self.guard: Guard | None = None
        self.leftover = memoryview(b"")
        self.eof = False
        o = src.options
        self.deadline = time.monotonic() + o.file_timeout if o.file_timeout else None
        self._open_retrying()

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        pool = self.src.pool
        conn = pool.acquire()
        self.conn = conn
        if self.deadline is not None:
            self.guard = pool.watchdog.watch(self.deadline, conn.transport, f"reading {self.path}")
        try:
            self._start(conn)
        except BaseException as exc:
            if isinstance(exc, TRANSPORT_ERRORS) and not isinstance(exc, ServerStatus | PermissionError |
                                                                   FileNotFoundError | IsADirectoryError):
                conn.broken = True
            self._release()
            raise

    def _open_retrying(self) -> None:
        """Open on a pooled connection; a connection that fails (stall, cut, timeout) is replaced up to
        `retries` times, then the read ends with a SourceError (could not verify), never a raw timeout."""
        while True:
            try:
                self._open()
                return
            except _CONNECTION_FAILURES as exc:
                where = f"{self.src.describe()}: opening {self.path}"
                self.attempts += 1
                if self._timed_out() or self.attempts > self.src.options.retries:
                    raise SourceError(f"{where}: {_describe(exc)} (after {self.attempts - 1} retries; "
                                      f"idle_timeout {self.src.options.idle_timeout:g}s)") from exc
                log.warning("sftp %s: %s; retrying on a new connection", where, _describe(exc))
                self.src.cancel.check()

    def _start(self, conn: Conn) -> None:
        raise NotImplementedError

    def _next(self) -> bytes | None:
        raise NotImplementedError

    def _release(self) -> None:
        if self.guard is not None:
            self.src.pool.watchdog.unwatch(self.guard)
            self.guard = None
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.src.pool.release(conn)

    def _timed_out(self) -> bool:
        return self.guard is not None and self.guard.fired

    def _next_resuming(self) -> bytes | None:
        while True:
            try:
                return self._next()
            except (ServerStatus, PermissionError, FileNotFoundError, IsADirectoryError):
                raise
            except TRANSPORT_ERRORS as exc:
                where = f"{self.src.describe()}: reading {self.path} at byte {self.pos}"
                if self._timed_out():
                    self._drop()
                    raise SourceError(f"{where}: file_timeout ({self.src.options.file_timeout:g}s) exceeded") \
                        from exc
                self._drop()
                self.attempts += 1
                if self.attempts > self.src.options.retries:
                    raise SourceError(f"{where}: {_describe(exc)} (after {self.attempts - 1} resumptions; "
                                      f"idle_timeout {self.src.options.idle_timeout:g}s)") from exc
                log.warning("sftp %s: %s; resuming on a new connection", where, _describe(exc))
                self.src.cancel.check()
                self._open_retrying()

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.broken = True
        self._release()

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if not self.leftover:
            if self.eof:
                return 0
            data = self._next_resuming()
            if data is None:
                self.eof = True
                return 0
            self.leftover = memoryview(data)
            self.pos += len(data)
        n = min(len(view), len(self.leftover))
        view[:n] = self.leftover[:n]
        self.leftover = self.leftover[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._finish()
            finally:
                self._release()
        super().close()

    def _finish(self) -> None:
        pass


class _SftpStream(_Stream):
    """Pipelined SFTP READ requests, answers consumed in offset order."""

    def _start(self, conn: Conn) -> None:
        real, size = self.src.resolve_for_read(conn, self.path)
        msg = conn.request(CMD_OPEN, fs_path(real), SFTP_FLAG_READ, SFTPAttributes())
        self.handle = msg.get_binary()
        self.size_hint = size
        self.box = Responses()
        self.pending: deque[tuple[int, int, int]] = deque()
        self.next_off = self.pos
        self.window = 2
        self.probing = False

    def _issue(self, offset: int, length: int) -> int:
        assert self.conn is not None
        (num,) = self.conn.send(self.box, (CMD_READ, self.handle, int64(offset), int(length)))
        return num

    def _fill(self) -> None:
        """Top the window up; the new READs leave in one SSH packet."""
        wanted: list[tuple[int, int]] = []
        while len(self.pending) + len(wanted) < self.window:
            hint = self.size_hint
            if hint is not None and self.next_off >= hint:
                if self.probing:  # one request past the expected end tells EOF (or growth)
                    break
                self.probing = True
                length = REQUEST_SIZE
            else:
                length = REQUEST_SIZE if hint is None else min(REQUEST_SIZE, hint - self.next_off)
            wanted.append((self.next_off, length))
            self.next_off += length
        if wanted:
            assert self.conn is not None
            nums = self.conn.send(self.box, *[(CMD_READ, self.handle, int64(o), int(n)) for o, n in wanted])
            self.pending.extend((num, o, n) for num, (o, n) in zip(nums, wanted, strict=True))

    def _next(self) -> bytes | None:
        assert self.conn is not None
        self._fill()
        num, off, length = self.pending[0]
        t, msg = self.conn.wait(self.box, num)
        self.pending.popleft()
        if t == CMD_STATUS:
            eof, err = status_error(msg)
            if err is not None:
                raise err
            return None
        if t != CMD_DATA:
            raise ServerStatus(None, f"unexpected SFTP answer {t} to READ")
        data: bytes = msg.get_string()
        if not data:
            return None
        if self.size_hint is not None and off >= self.size_hint:
            self.size_hint = None  # the file grew since it was listed: read on to its end
            self.probing = False
        if len(data) < length:  # a short read: ask for the gap before anything already requested
            self.pending.appendleft((self._issue(off + len(data), length - len(data)), off + len(data),
                                     length - len(data)))
        self.window = min(MAX_OUTSTANDING, self.window * 2)
        return data

    def _finish(self) -> None:
        conn = self.conn
        if conn is None or conn.broken:
            return
        try:
            # Not waited for, and sent with the next request on this session (its answer is dropped when it
            # comes): a round trip and an SSH packet saved per file.  The server handles requests in order.
            conn.defer(CMD_CLOSE, self.handle)
        except TRANSPORT_ERRORS:
            conn.broken = True

    def _release(self) -> None:
        self.box = Responses()
        self.pending = deque()
        super()._release()


class _ExecStream(_Stream):
    """`cat -- PATH` (or `tail -c +N -- PATH` to resume) over an exec channel."""

    def _start(self, conn: Conn) -> None:
        real, _ = self.src.resolve_for_read(conn, self.path)
        q = shlex.quote(real)
        cmd = f"cat -- {q}" if self.pos == 0 else f"tail -c +{self.pos + 1} -- {q}"
        self.chan = conn.exec(cmd.encode("utf-8", "surrogateescape"), self.src.options.idle_timeout)

    def _next(self) -> bytes | None:
        # Take all that is buffered (EXEC_READ is the channel's whole window): paramiko's buffer is an array
        # whose front is deleted after each read, so a smaller read from a full buffer moves the rest each time.
        data: bytes = self.chan.recv(EXEC_READ)
        if data:
            return data
        if not self.chan.status_event.wait(self.src.options.idle_timeout):
            raise TimeoutError("no exit status from cat")
        code = self.chan.recv_exit_status()
        if code == -1:  # closed without an exit status: the connection was cut; resume on a new one
            raise EOFError("the connection closed before cat finished")
        if code != 0:
            err = self.chan.recv_stderr(4096).decode("utf-8", "replace").strip()
            raise ServerStatus(None, f"cat on the server failed (exit {code}): {err[:200]}")
        return None

    def _finish(self) -> None:
        chan = getattr(self, "chan", None)
        if chan is not None:
            chan.close()
