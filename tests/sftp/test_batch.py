"""Small files read in batches on one SFTP session (sftp_batch.fetch, SftpSource.open_many).

The request/answer logic is exercised against an SFTP server kept in memory (short reads, answers out of
order, refusals: what OpenSSH on loopback never does); everything else against the real sshd, through the
fault proxy for cut, stalled and slow connections.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    SFTP_EOF,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_PERMISSION_DENIED,
)

from reversib.sources.base import SourceError
from reversib.sources.sftp import BATCH_FILE_MAX, SftpSource
from reversib.sources.sftp_batch import Grew, Result, fetch
from reversib.sources.sftp_conn import REQUEST_SIZE
from reversib.sources.sftp_options import SftpOptions
from tests.cli_helpers import findings_of
from tests.helpers import make_export, run_tool

from .conftest import Sshd, run_sftp_check
from .proxy import FaultProxy

pytestmark = [pytest.mark.timeout(120)]


# -- the request logic, against a server in memory -----------------------------------------------------

class _MemoryServer:
    """Stands in for `sftp_conn.Conn`: answers each request from `files`, at most `max_read` bytes per READ
    (short reads), and hands the answers of each pump over in reverse order when `reverse`."""

    def __init__(self, files: dict[str, bytes], max_read: int = 1 << 20, reverse: bool = False,
                 denied: frozenset[str] = frozenset()):
        self.files = files
        self.max_read = max_read
        self.reverse = reverse
        self.denied = denied
        self.queue: list[tuple[Any, int, tuple[Any, ...]]] = []
        self.deferred: list[tuple[Any, ...]] = []
        self.handles: dict[bytes, str] = {}
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.packets = 0
        self._num = 0

    def send(self, box: Any, *requests: tuple[Any, ...]) -> list[int]:
        self.packets += 1
        for r in self.deferred:
            self._queue(None, r)
        self.deferred = []
        return [self._queue(box, r) for r in requests]

    def defer(self, t: int, *args: Any) -> None:
        self.deferred.append((t, *args))

    def _queue(self, box: Any, request: tuple[Any, ...]) -> int:
        self._num += 1
        self.queue.append((box, self._num, request))
        return self._num

    def pump(self) -> None:
        if not self.queue:
            raise EOFError("waiting for an answer to nothing")
        answers = [(box, num, *self._answer(request)) for box, num, request in self.queue]
        self.queue = []
        for box, num, t, msg in reversed(answers) if self.reverse else answers:
            if box is not None:
                box._async_response(t, msg, num)

    def _answer(self, request: tuple[Any, ...]) -> tuple[int, paramiko.Message]:
        t, *args = request
        m = paramiko.Message()
        if t == CMD_OPEN:
            path = args[0].decode()
            if path in self.denied:
                return CMD_STATUS, _status(m, SFTP_PERMISSION_DENIED, "Permission denied")
            if path not in self.files:
                return CMD_STATUS, _status(m, SFTP_NO_SUCH_FILE, "No such file")
            handle = f"h{len(self.handles)}".encode()
            self.handles[handle] = path
            self.opened.append(path)
            m.add_string(handle)
            return CMD_HANDLE, paramiko.Message(m.asbytes())
        if t == CMD_READ:
            handle, off, length = args
            data = self.files[self.handles[handle]][off:off + min(length, self.max_read)]
            if not data:
                return CMD_STATUS, _status(m, SFTP_EOF, "EOF")
            m.add_string(data)
            return CMD_DATA, paramiko.Message(m.asbytes())
        if t == CMD_CLOSE:
            self.closed.append(self.handles[args[0]])
            return CMD_STATUS, _status(m, SFTP_OK, "")
        raise AssertionError(f"unexpected request {t}")


def _status(m: paramiko.Message, code: int, text: str) -> paramiko.Message:
    m.add_int(code)
    m.add_string(text)
    m.add_string("")
    return paramiko.Message(m.asbytes())


def _fetch(server: _MemoryServer, listed: dict[str, int], results: dict[int, Result] | None = None) -> dict[str, Any]:
    names = list(listed)
    got: dict[int, Result] = dict(results or {})
    fetch(server, {i: (n, listed[n]) for i, n in enumerate(names)}, got)  # type: ignore[arg-type]
    assert sorted(got) == list(range(len(names)))
    return {names[i]: r for i, r in got.items()}


@pytest.mark.parametrize(("max_read", "reverse"), [(1 << 20, False), (1 << 20, True), (1000, False), (777, True)])
def test_fetch_is_byte_exact_with_short_reads_and_answers_out_of_order(max_read: int, reverse: bool) -> None:
    sizes = [0, 1, 999, 1000, 1001, 4096, REQUEST_SIZE - 1, REQUEST_SIZE, REQUEST_SIZE + 1, BATCH_FILE_MAX]
    files = {f"/x/{n}": os.urandom(n) for n in sizes}
    server = _MemoryServer(files, max_read=max_read, reverse=reverse)
    got = _fetch(server, {p: len(d) for p, d in files.items()})
    assert got == files
    assert sorted(server.opened) == sorted(files)
    assert sorted(server.closed + [server.handles[r[1]] for r in server.deferred]) == sorted(files)  # every handle
    if max_read > BATCH_FILE_MAX:
        assert server.packets == 2  # the OPENs, then every READ: no round trip per file


def test_fetch_reports_each_file_as_the_stream_would() -> None:
    files = {"/x/ok": b"a" * 5000, "/x/cut": b"b" * 3000, "/x/grew": b"c" * 7000, "/x/denied": b"d",
             "/x/empty-grew": b"e"}
    server = _MemoryServer(files, max_read=1024, reverse=True, denied=frozenset({"/x/denied"}))
    listed = {"/x/ok": 5000, "/x/cut": 4096, "/x/grew": 4096, "/x/denied": 1, "/x/gone": 10, "/x/empty-grew": 0}
    got = _fetch(server, listed)
    assert got["/x/ok"] == files["/x/ok"]
    assert got["/x/cut"] == files["/x/cut"]  # fewer bytes than listed: the verifier reports it
    assert isinstance(got["/x/grew"], Grew) and isinstance(got["/x/empty-grew"], Grew)  # read again as a stream
    assert isinstance(got["/x/denied"], PermissionError) and "Permission denied" in str(got["/x/denied"])
    assert isinstance(got["/x/gone"], FileNotFoundError)


def test_fetch_skips_files_already_read() -> None:
    """After a failed connection, only the files not finished are read again."""
    files = {"/x/a": b"aa", "/x/b": b"bb"}
    server = _MemoryServer(files)
    got = _fetch(server, {"/x/a": 2, "/x/b": 2}, {0: b"aa"})
    assert got == files and server.opened == ["/x/b"]


# -- against the real sshd ---------------------------------------------------------------------------

def _source(sshd: Sshd, root: Path, port: int | None = None, **over: Any) -> SftpSource:
    return SftpSource(sshd.url(root, port), SftpOptions(**sshd.options(**over)))


def _read_all(src: SftpSource, paths: list[str]) -> tuple[dict[str, bytes], dict[str, OSError], dict[str, type]]:
    data: dict[str, bytes] = {}
    errors: dict[str, OSError] = {}
    how: dict[str, type] = {}
    for path, got in src.open_many(paths):
        if isinstance(got, OSError):
            errors[path] = got
            continue
        how[path] = type(got._raw)
        with got:  # each stream is read and closed before the next is asked for, as the verifier does
            data[path] = got.read()
    return data, errors, how


@pytest.mark.service
def test_open_many_is_byte_exact_and_refuses_what_one_file_refuses(sshd: Sshd, tmp_path: Path) -> None:
    sizes = [0, 1, 4096, REQUEST_SIZE - 1, REQUEST_SIZE, REQUEST_SIZE + 1, BATCH_FILE_MAX, BATCH_FILE_MAX + 1,
             3 << 20]
    files = {f"s/{n:08d}.bin": os.urandom(n) for n in sizes}
    files.update({f"m{i % 3}/f{i:03d}": os.urandom(i * 31) for i in range(150)})
    root = make_export(tmp_path / "export", files)
    (root / "adir").mkdir()
    os.symlink("/etc/hostname", root / "escape")
    os.mkfifo(root / "fifo")  # opening it would block the server: never opened
    with _source(sshd, root, max_sessions=1) as src:
        assert len(list(src.iter_entries())) == len(files) + 2
        paths = [*sorted(files), "absent", "adir", "escape", "fifo"]
        data, errors, how = _read_all(src, paths)
        assert data == files
        assert all(how[p] is io.BytesIO for p in files if len(files[p]) <= BATCH_FILE_MAX)
        assert all(how[p] is not io.BytesIO for p in files if len(files[p]) > BATCH_FILE_MAX)  # a stream
        assert isinstance(errors.pop("absent"), FileNotFoundError)
        assert isinstance(errors.pop("adir"), IsADirectoryError)
        assert isinstance(errors.pop("escape"), PermissionError)
        assert "not a regular file" in str(errors.pop("fifo"))
        assert errors == {}
        for p in sorted(files)[::20]:  # the session is left clean: one file at a time still byte-exact
            with src.open_range(p) as f:
                assert f.read() == files[p]
        assert src.pool._count == 1


@pytest.mark.service
def test_open_many_sees_files_changed_after_the_listing(sshd: Sshd, tmp_path: Path) -> None:
    files = {f"f{i}": os.urandom(4096) for i in range(6)}
    root = make_export(tmp_path / "export", files)
    with _source(sshd, root) as src:
        list(src.iter_entries())  # sizes as listed: 4096 each
        (root / "f0").write_bytes(files["f0"][:1000])  # truncated
        grown = files["f1"] + os.urandom(300_000)
        (root / "f1").write_bytes(grown)
        (root / "f2").unlink()
        corrupt = bytearray(files["f3"])
        corrupt[100] ^= 1
        (root / "f3").write_bytes(corrupt)
        data, errors, _ = _read_all(src, sorted(files))
    assert data["f0"] == files["f0"][:1000]
    assert data["f1"] == grown  # read on to its end, as one file would be
    assert isinstance(errors["f2"], FileNotFoundError)
    assert data["f3"] == bytes(corrupt)
    assert data["f4"] == files["f4"] and data["f5"] == files["f5"]


@pytest.mark.service
def test_run_over_many_small_files_reports_each_fault(sshd: Sshd, tmp_path: Path) -> None:
    files = {f"d{i % 5}/f{i:04d}.bin": os.urandom(4096) for i in range(400)}
    root = make_export(tmp_path / "export", files)
    run_tool(["sha256sum"], root, "SHA256SUMS")
    check = {"manifest": {"path": "SHA256SUMS"}}
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
    code, doc = run_sftp_check(tmp_path / "a", sshd.url(root), sshd.options(), **check)
    assert (code, doc["outcome"], findings_of(doc)) == (0, "passed", []), doc
    assert doc["runs"][0]["files_verified"] == len(files)
    names = sorted(files)
    (root / names[7]).write_bytes(files[names[7]][:4000])  # truncated
    (root / names[100]).write_bytes(os.urandom(4096))  # same size, other bytes
    (root / names[300]).unlink()
    code, doc = run_sftp_check(tmp_path / "b", sshd.url(root), sshd.options(), **check)
    assert (code, sorted(findings_of(doc))) == (1, sorted([("digest_mismatch", names[7]),
                                                           ("digest_mismatch", names[100]),
                                                           ("missing", names[300])])), doc


# -- faults --------------------------------------------------------------------------------------------

@pytest.fixture
def small_export(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = {f"d{i % 2}/f{i:03d}": os.urandom(4096) for i in range(200)}  # 800 KiB
    return make_export(tmp_path / "export", files), files


def _via(sshd: Sshd, proxy: FaultProxy, tmp_path: Path, **over: Any) -> dict[str, Any]:
    kh = tmp_path / "known_hosts_proxy"
    kh.write_text(sshd.known_hosts_line(proxy.port) + "\n")
    return sshd.options(known_hosts=str(kh), max_sessions=1, **over)


@pytest.mark.service
@pytest.mark.timeout(60)
def test_cut_during_a_batch_reads_the_rest_again_on_a_new_connection(
        sshd: Sshd, proxy: FaultProxy, small_export: tuple[Path, dict[str, bytes]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root, files = small_export
    src = SftpSource(sshd.url(root, proxy.port), SftpOptions(**_via(sshd, proxy, tmp_path)))
    with src, caplog.at_level(logging.WARNING, "reversib.sftp"):
        list(src.iter_entries())  # well under 200 KB on the first connection
        proxy.fault.mode, proxy.fault.after, proxy.fault.only_connection = "cut", 200_000, 1
        data, errors, _ = _read_all(src, sorted(files))
    assert (data, errors) == (files, {})
    assert proxy.faults_applied == 1 and proxy.connections == 2
    assert any("retrying on a new connection" in r.getMessage() for r in caplog.records)


@pytest.mark.service
@pytest.mark.timeout(60)
def test_cut_on_every_connection_is_a_source_error(sshd: Sshd, proxy: FaultProxy,
                                                   small_export: tuple[Path, dict[str, bytes]],
                                                   tmp_path: Path) -> None:
    root, files = small_export
    src = SftpSource(sshd.url(root, proxy.port), SftpOptions(**_via(sshd, proxy, tmp_path, retries=2)))
    with src:
        list(src.iter_entries())
        proxy.fault.mode, proxy.fault.after = "cut", 200_000
        with pytest.raises(SourceError, match="after 2 retries"):
            _read_all(src, sorted(files))
    assert proxy.connections == 3


@pytest.mark.service
@pytest.mark.timeout(60)
def test_stall_during_a_batch_is_bounded(sshd: Sshd, proxy: FaultProxy, small_export: tuple[Path, dict[str, bytes]],
                                         tmp_path: Path) -> None:
    root, files = small_export
    opts = _via(sshd, proxy, tmp_path, idle_timeout="2s", connect_timeout="3s", retries=1)
    src = SftpSource(sshd.url(root, proxy.port), SftpOptions(**opts))
    with src:
        list(src.iter_entries())
        proxy.fault.mode, proxy.fault.after = "stall", 200_000
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="timed out"):
            _read_all(src, sorted(files))
        assert time.monotonic() - t0 < 2 * (2 + 3) + 5


@pytest.mark.service
@pytest.mark.timeout(60)
def test_file_timeout_bounds_a_slow_batch(sshd: Sshd, proxy: FaultProxy,
                                          small_export: tuple[Path, dict[str, bytes]], tmp_path: Path) -> None:
    root, files = small_export
    src = SftpSource(sshd.url(root, proxy.port), SftpOptions(**_via(sshd, proxy, tmp_path, file_timeout="2s")))
    with src:
        list(src.iter_entries())
        proxy.fault.mode, proxy.fault.after, proxy.fault.rate = "throttle", 100_000, 200_000  # 800 KiB: 4 s
        with pytest.raises(SourceError, match="file_timeout"):
            _read_all(src, sorted(files))
