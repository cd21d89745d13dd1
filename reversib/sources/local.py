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
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from reversib.sources.base import CancelToken, Capabilities, Entry, EntryType, RateLimiter, Source, SourceError

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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
        self._dirs: dict[str, str] = {}

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
            return Entry(rel, None, None, EntryType.SYMLINK, problem="symlink to a directory (not followed)")
        return Entry(rel, None, st.st_mtime, EntryType.OTHER, problem="not a regular file")

    def iter_entries(self) -> Iterator[Entry]:
        yield from self._walk(self._root(), "")

    def _walk(self, directory: str, prefix: str) -> Iterator[Entry]:
        self.cancel.check()
        try:
            with os.scandir(directory) as it:
                children = list(it)
        except OSError as exc:
            if prefix == "":
                raise SourceError(f"cannot list {directory}: {exc.strerror}") from exc
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
                yield from self._walk(child.path, rel + "/")
                continue
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                yield Entry(rel, None, None, EntryType.OTHER, problem=f"cannot stat: {exc.strerror}")
                continue
            yield self._entry(rel, child.path, st)

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

    def _real_dir(self, rel_dir: str) -> str:
        """The resolved folder of a relative path, checked to be inside the root (cached)."""
        real = self._dirs.get(rel_dir)
        if real is None:
            real = os.path.realpath(os.path.join(self._root(), rel_dir))
            if not self._inside(real):
                raise PermissionError(f"refusing to open below {rel_dir}: it resolves outside the export root")
            self._dirs[rel_dir] = real
        return real

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        rel_dir, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            raise PermissionError(f"refusing to open {path!r}: not a file name")
        candidate = os.path.join(self._real_dir(rel_dir), name)
        try:
            # The folder is resolved and inside the root; the last component must not be a link.
            fd = os.open(candidate, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            real = os.path.realpath(candidate)  # a symlink: followed only when it stays inside
            if not self._inside(real):
                raise PermissionError(f"refusing to open {path}: it resolves outside the export root") from exc
            fd = os.open(real, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb", buffering=0)
        if offset:
            f.seek(offset)
        return f  # type: ignore[return-value]

    def relative(self, location: str) -> str | None:
        if "://" in location and not location.startswith("file:"):
            return None
        p = path_from_url(location).absolute()
        if p == self.root:
            return ""
        if self.root in p.parents:
            return p.relative_to(self.root).as_posix()
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
