"""`file://` source: an export on a local or mounted file system.

Listing uses `lstat` semantics.  A symlink is followed only when it resolves to a regular file
inside the export root; a symlink that leaves the root, dangles or points to a directory is
listed with a `problem` and never read.  Names are passed through byte-exact (undecodable
bytes are kept with Python's `surrogateescape`).
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from reversib.sources.base import CancelToken, Capabilities, Entry, EntryType, RateLimiter, Source, SourceError

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
DIRS_PER_THREAD = 8  # folder descriptors each reading thread keeps open (files are read folder by folder)


def path_from_url(url: str) -> Path:
    """`file:///x/y`, `file://localhost/x`, or a plain path -> Path."""
    if url.startswith("file:"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise SourceError(f"file URL with a remote host is not supported: {url}")
        return Path(unquote(parsed.path))
    return Path(url)


class LocalSource(Source):
    scheme = "file"

    def __init__(self, url: str | os.PathLike[str], *, cancel: CancelToken | None = None,
                 limiter: RateLimiter | None = None):
        super().__init__(str(url), cancel=cancel, limiter=limiter)
        self.root = path_from_url(str(url)).absolute()
        self._real_root: str | None = None
        # Per reading thread: folder path -> descriptor, opened from the root one name at a time without
        # following links (see _dir_fd); every thread's cache is registered for close().
        self._local = threading.local()
        self._caches: list[OrderedDict[str, int]] = []
        self._caches_lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def _root(self) -> str:
        if self._real_root is None:
            if not self.root.exists():
                raise SourceError(f"export root does not exist: {self.root}")
            if not self.root.is_dir():
                raise SourceError(f"export root is not a directory: {self.root}")
            self._real_root = os.path.realpath(self.root)
        return self._real_root

    def _inside(self, real: str) -> bool:
        root = self._root()
        return real == root or real.startswith(root.rstrip("/") + "/")

    def _entry(self, rel: str, full: str, st: os.stat_result) -> Entry:
        if stat.S_ISREG(st.st_mode):
            return Entry(rel, st.st_size, st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(full)
            if not self._inside(target):
                return Entry(rel, None, None, EntryType.SYMLINK,
                             problem=f"symlink leaves the export root (-> {os.readlink(full)})")
            try:
                tst = os.stat(full)
            except OSError:
                return Entry(rel, None, None, EntryType.SYMLINK,
                             problem=f"dangling symlink (-> {os.readlink(full)})")
            if stat.S_ISREG(tst.st_mode):
                return Entry(rel, tst.st_size, tst.st_mtime)
            what = "a directory" if stat.S_ISDIR(tst.st_mode) else "something that is not a regular file"
            return Entry(rel, None, None, EntryType.SYMLINK, problem=f"symlink to {what} (not followed)")
        return Entry(rel, None, st.st_mtime, EntryType.OTHER, problem="not a regular file")

    def iter_entries(self) -> Iterator[Entry]:
        root = self._root()
        try:
            fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise SourceError(f"cannot list {root}: {exc.strerror}") from exc
        yield from self._walk(fd, "")

    def _walk(self, dir_fd: int, prefix: str) -> Iterator[Entry]:
        """List the folder open as `dir_fd` (closed here), descending through folders opened relative to
        it without following links: a folder swapped for a link mid-listing is never entered."""
        try:
            self.cancel.check()
            try:
                with os.scandir(dir_fd) as it:
                    children = list(it)
            except OSError as exc:
                if prefix == "":
                    raise SourceError(f"cannot list {self._root()}: {exc.strerror}") from exc
                yield Entry(prefix.rstrip("/"), None, None, EntryType.OTHER,
                            problem=f"directory cannot be listed: {exc.strerror}")
                return
            # Canonical order of full paths: a directory sorts as "name/" (see sources/base.py).
            keyed = []
            for child in children:
                is_dir = child.is_dir(follow_symlinks=False)
                keyed.append((child.name + "/" if is_dir else child.name, is_dir, child))
            keyed.sort(key=lambda k: k[0])
            for _, is_dir, child in keyed:
                rel = prefix + child.name
                if is_dir:
                    try:
                        sub = os.open(child.name, _DIR_FLAGS, dir_fd=dir_fd)
                    except OSError as exc:
                        why = ("it was replaced by a symbolic link while listed" if exc.errno in
                               (errno.ELOOP, errno.ENOTDIR) else exc.strerror)
                        yield Entry(rel, None, None, EntryType.OTHER, problem=f"directory cannot be listed: {why}")
                        continue
                    yield from self._walk(sub, rel + "/")
                    continue
                try:
                    st = child.stat(follow_symlinks=False)
                except OSError as exc:
                    yield Entry(rel, None, None, EntryType.OTHER, problem=f"cannot stat: {exc.strerror}")
                    continue
                yield self._entry(rel, os.path.join(self._root(), rel), st)
        finally:
            os.close(dir_fd)

    def stat(self, path: str) -> Entry | None:
        full = os.path.join(self._root(), path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if stat.S_ISDIR(st.st_mode):
            return Entry(path, None, st.st_mtime, EntryType.OTHER, problem="a directory")
        return self._entry(path, full, st)

    def _dir_fd(self, rel_dir: str) -> int:
        """A descriptor of the folder `rel_dir`, opened from the root one name at a time with O_NOFOLLOW:
        no symbolic link is followed on the way, so a folder swapped for a link while the run goes on
        cannot lead a read outside the root, and a descriptor keeps naming the folder it was opened on.
        Each thread keeps its own few (never closed under another thread's feet)."""
        cache: OrderedDict[str, int] | None = getattr(self._local, "dirs", None)
        if cache is None:
            cache = self._local.dirs = OrderedDict()
            with self._caches_lock:
                self._caches.append(cache)
        fd = cache.get(rel_dir)
        if fd is not None:
            cache.move_to_end(rel_dir)
            return fd
        fd = os.open(self._root(), _DIR_FLAGS)
        try:
            parts = rel_dir.split("/") if rel_dir else []
            for i, part in enumerate(parts):
                if part in ("", ".", ".."):
                    raise PermissionError(f"refusing to open below {rel_dir!r}: not a plain relative path")
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    walked = "/".join(parts[:i + 1])
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(os.path.join(self._root(),
                                                                                                 walked)):
                        raise PermissionError(f"refusing to open below {rel_dir}: {walked} is a symbolic link "
                                              "(folders are not followed)") from None
                    raise
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        cache[rel_dir] = fd
        if len(cache) > DIRS_PER_THREAD:
            os.close(cache.popitem(last=False)[1])
        return fd

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        rel_dir, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            raise PermissionError(f"refusing to open {path!r}: not a file name")
        try:
            # The folder was reached without following links; the file itself must not be one either.
            fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._dir_fd(rel_dir))
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # A link to a file: followed only to a regular file inside the root, itself opened as above.
            real = os.path.realpath(os.path.join(self._root(), path))
            if not self._inside(real) or real == self._root():
                raise PermissionError(f"refusing to open {path}: it resolves outside the export root") from exc
            real_dir, _, real_name = os.path.relpath(real, self._root()).rpartition("/")
            fd = os.open(real_name, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._dir_fd(real_dir))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb", buffering=0)
        if offset:
            f.seek(offset)
        return f  # type: ignore[return-value]

    def close(self) -> None:
        with self._caches_lock:
            caches, self._caches = self._caches, []
            self._local = threading.local()
        for cache in caches:
            while cache:
                os.close(cache.popitem()[1])

    def relative(self, location: str) -> str | None:
        if "://" in location and not location.startswith("file:"):
            return None
        p = Path(os.path.normpath(path_from_url(location).absolute()))  # `EXPORT/../SUMS` is outside
        root = Path(os.path.normpath(self.root))
        if p == root:
            return ""
        if root in p.parents:
            return p.relative_to(root).as_posix()
        return None

    def process_root(self) -> str | None:
        # A rate limit is shared by the threads of one process only: keep such runs in-process.
        return None if self.limiter.rate else str(self.root)

    def child_dirs(self) -> list[str]:
        root = self._root()
        try:
            with os.scandir(root) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError as exc:
            raise SourceError(f"cannot list {root}: {exc.strerror}") from exc

    def sub(self, name: str) -> LocalSource:
        return LocalSource(self.root / name, cancel=self.cancel, limiter=self.limiter)
