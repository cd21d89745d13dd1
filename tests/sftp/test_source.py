"""SftpSource against the real sshd: listing order, lstat semantics, reads, pool, remote hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from reversib.sources import open_source
from reversib.sources.base import EntryType, SourceError
from reversib.sources.local import LocalSource
from reversib.sources.sftp import SftpSource
from reversib.sources.sftp_options import SftpOptions
from tests.helpers import make_export

from .conftest import Sshd

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

FILES = {
    "a.txt": b"alpha\n",
    "a b/c.csv": b"id,name\n1,x\n",
    "a-b": b"dash",
    "ab/deep/er/x.json": b"{}\n",
    "caf\u00e9.txt": b"unicode\n",
    "line\nbreak.txt": b"newline in the name\n",
    "z/empty": b"",
    "big.bin": os.urandom(3 * 1024 * 1024 + 123),
}


def source(sshd: Sshd, root: Path, **over: object) -> SftpSource:
    s = open_source(sshd.url(root), _Opts(SftpOptions(**sshd.options(**over))))
    assert isinstance(s, SftpSource)
    return s


class _Opts:
    def __init__(self, sftp: SftpOptions):
        self.sftp = sftp


def test_constructor_never_connects(sshd: Sshd) -> None:
    s = SftpSource("sftp://nobody@127.0.0.1:1/x", SftpOptions(known_hosts="/nonexistent"))
    assert s.pool._count == 0
    with pytest.raises(SourceError, match="cannot connect"):
        s.child_dirs()


def test_listing_matches_local_source_in_canonical_order(sshd: Sshd, tmp_path: Path) -> None:
    root = make_export(tmp_path / "export", FILES)
    os.symlink("a.txt", root / "link-inside")
    os.symlink("/etc/passwd", root / "link-outside")
    os.symlink("ab", root / "link-dir")
    os.symlink("missing", root / "link-dangling")
    os.mkfifo(root / "fifo")
    with source(sshd, root) as s:
        got = list(s.iter_entries())
    want = list(LocalSource(root).iter_entries())
    assert [(e.path, e.size, e.type, e.problem is None) for e in got] == \
        [(e.path, e.size, e.type, e.problem is None) for e in want]
    assert [e.path for e in got] == sorted(e.path for e in got)
    by = {e.path: e for e in got}
    outside = by["link-outside"]
    assert outside.type is EntryType.SYMLINK and "leaves the export root" in (outside.problem or "")
    assert by["link-inside"].size == len(FILES["a.txt"]) and by["link-inside"].problem is None
    assert by["fifo"].type is EntryType.OTHER


def test_reads_are_byte_exact_and_resumable_at_an_offset(sshd: Sshd, tmp_path: Path) -> None:
    root = make_export(tmp_path / "export", FILES)
    with source(sshd, root) as s:
        for rel, data in FILES.items():
            with s.open_range(rel) as f:
                assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest(), rel
        with s.open_range("big.bin", 1000, 5000) as f:
            assert f.read() == FILES["big.bin"][1000:6000]
        with s.open_range("big.bin", len(FILES["big.bin"]) - 10) as f:
            assert f.read() == FILES["big.bin"][-10:]


def test_stat_and_refusals(sshd: Sshd, tmp_path: Path) -> None:
    root = make_export(tmp_path / "export", FILES)
    outside = make_export(tmp_path / "outside", {"secret": b"s"})
    os.symlink(outside, root / "escape")
    os.mkfifo(root / "fifo")
    with source(sshd, root) as s:
        assert s.stat("a b/c.csv") is not None and s.stat("a b/c.csv").size == len(FILES["a b/c.csv"])  # type: ignore[union-attr]
        assert s.stat("nope") is None
        assert s.stat("ab").problem == "a directory"  # type: ignore[union-attr]
        e = s.stat("escape/secret")
        assert e is not None and e.problem is not None
        with pytest.raises(PermissionError):
            s.open_range("escape/secret")
        with pytest.raises(OSError):
            s.open_range("fifo")  # refused before any open: a FIFO would block the server
        with pytest.raises(FileNotFoundError):
            s.open_range("nope")


def test_child_dirs_sub_and_relative(sshd: Sshd, tmp_path: Path) -> None:
    root = make_export(tmp_path / "series", {"2024-01-01/a": b"1", "2024-01-02/b": b"2", "file": b"x"})
    with source(sshd, root) as s:
        assert s.child_dirs() == ["2024-01-01", "2024-01-02"]
        sub = s.sub("2024-01-02")
        assert [e.path for e in sub.iter_entries()] == ["b"]
        assert s.relative(sshd.url(root / "2024-01-02" / "SHA256SUMS")) == "2024-01-02/SHA256SUMS"
        assert s.relative(sshd.url(tmp_path / "elsewhere")) is None
        assert s.relative(str(root)) is None


def test_export_root_missing_is_a_source_error(sshd: Sshd, tmp_path: Path) -> None:
    with source(sshd, tmp_path / "nope") as s, pytest.raises(SourceError, match="export root"):
        list(s.iter_entries())


def test_exec_stream_only_for_listed_files_worth_a_command(sshd: Sshd, tmp_path: Path) -> None:
    """`exec_stream`: `cat` (or `tail -c` from an offset) for listed files of EXEC_MIN_BYTES or more; small
    files and files not listed yet (a manifest read before the listing) over the open SFTP session."""
    from reversib.sources.sftp import EXEC_MIN_BYTES, _ExecStream, _SftpStream

    big = os.urandom(EXEC_MIN_BYTES + 4321)
    root = make_export(tmp_path / "export", {"big.bin": big, "small.txt": b"small\n"})
    with source(sshd, root, exec_stream=True) as s:
        with s.open_range("big.bin") as f:  # not listed yet
            assert isinstance(f._raw, _SftpStream) and f.read() == big
        list(s.iter_entries())
        with s.open_range("big.bin") as f:
            assert isinstance(f._raw, _ExecStream) and f.read() == big
        with s.open_range("big.bin", 1000) as f:  # resumption path: tail -c +1001
            assert isinstance(f._raw, _ExecStream) and f.read() == big[1000:]
        with s.open_range("big.bin", len(big) - 10) as f:  # too little left to repay a command
            assert isinstance(f._raw, _SftpStream) and f.read() == big[-10:]
        with s.open_range("small.txt") as f:
            assert isinstance(f._raw, _SftpStream) and f.read() == b"small\n"


def test_many_small_files_on_one_session_share_no_answers(sshd: Sshd, tmp_path: Path) -> None:
    """Each file's CLOSE is sent with the next request and its answer dropped: hundreds of files read one
    after the other on a single session stay byte-exact, and partly read files leave no stray answers."""
    files = {f"d{i % 7}/f{i:04d}": os.urandom(i * 37 % 5000) for i in range(400)}
    root = make_export(tmp_path / "export", files)
    with source(sshd, root, max_sessions=1) as s:
        assert sorted(e.path for e in s.iter_entries()) == sorted(files)
        for i, (rel, data) in enumerate(sorted(files.items())):
            if i % 50 == 0 and len(data) > 10:
                with s.open_range(rel, 0, 10) as f:  # closed before EOF, READs still in flight
                    assert f.read() == data[:10]
            with s.open_range(rel) as f:
                assert f.read() == data, rel
        assert s.pool._count == 1
