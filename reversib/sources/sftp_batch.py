"""Many small files read at once on one SFTP session: OPENs, READs and CLOSEs pipelined.

Reading a 4 KiB file alone costs two round trips (OPEN, then READ) and four SSH packets, each of
which wakes paramiko's transport thread and ours: on loopback that, not the bytes, is the price of a
small file.  Here the OPENs of a whole batch leave in one SSH packet, the READs of every file whose
handle has come back leave together as soon as the answers are in, and the CLOSEs ride with the next
request on the session (their answers are not waited for): a batch of 64 files costs about two round
trips and a handful of packets.

What a file returns is exactly what the one-file stream (`sftp._SftpStream`) would have handed over:
READs of at most REQUEST_SIZE in offset order, a short answer followed by a READ of the gap, and one
READ at the listed size to see the end of the file -- a truncated file returns fewer bytes (the
verifier reports the size), a file that grew since it was listed is left to the stream (it reads
on to the end).  A server error on one file (missing, permission denied) is that file's result; a
failure of the connection escapes, and the caller retries the files not finished on a new one.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_DATA, CMD_HANDLE, CMD_OPEN, CMD_READ, CMD_STATUS, SFTP_FLAG_READ, int64
from paramiko.sftp_attr import SFTPAttributes

from reversib.sources.sftp_conn import REQUEST_SIZE, Conn, ServerStatus, fs_path, status_error


class Grew:
    """A file that answered past its listed size: read it with a stream instead (to its end)."""


GREW = Grew()
Result = bytes | OSError | Grew


class _Box:
    """Answers to a batch's requests, by request id (paramiko's dispatch calls `_async_response`)."""

    __slots__ = ("__weakref__", "got", "owner")  # paramiko keeps its boxes in a WeakValueDictionary

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Any]] = {}
        self.owner: dict[int, int] = {}  # request id -> index of its file in the batch

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.got[num] = (t, msg)


class _File:
    __slots__ = ("chunks", "handle", "pending", "size")

    def __init__(self, size: int):
        self.size = size
        self.handle = b""
        self.pending: deque[tuple[int, int, int]] = deque()  # (request id, offset, length), in offset order
        self.chunks: list[bytes] = []


def _reads(size: int) -> list[tuple[int, int]]:
    """The READs of a whole file of `size` bytes, then one past its end (EOF expected)."""
    out = [(off, min(REQUEST_SIZE, size - off)) for off in range(0, size, REQUEST_SIZE)]
    out.append((size, 1))
    return out


def fetch(conn: Conn, files: dict[int, tuple[str, int]], results: dict[int, Result]) -> None:
    """Read every file of `files` (index -> (real path, listed size)) on `conn` into `results` (index ->
    bytes, the server's error, or GREW).  Files already in `results` are not read.  Connection failures
    escape (TRANSPORT_ERRORS); `results` then holds the files finished so far."""
    todo = {i: v for i, v in files.items() if i not in results}
    if not todo:
        return
    box = _Box()
    opens: dict[int, int] = {}  # file -> id of its OPEN request, until answered
    nums = conn.send(box, *[(CMD_OPEN, fs_path(real), SFTP_FLAG_READ, SFTPAttributes()) for real, _ in todo.values()])
    for i, num in zip(todo, nums, strict=True):
        opens[i] = num
        box.owner[num] = i
    state: dict[int, _File] = {}
    left = len(todo)
    while left:
        wanted: list[tuple[Any, ...]] = []  # READs of newly opened files, sent together in one packet
        wanted_of: list[tuple[int, int, int]] = []
        progressed = False
        for num in [n for n in box.got if n not in box.owner]:  # answers to requests given up on
            del box.got[num]
        for i in sorted({box.owner[num] for num in box.got}):
            f = state.get(i)
            if f is None:  # the OPEN's answer
                t, msg = box.got.pop(opens.pop(i))
                progressed = True
                if t == CMD_HANDLE:
                    f = state[i] = _File(todo[i][1])
                    f.handle = msg.get_binary()
                    for off, length in _reads(f.size):
                        wanted.append((CMD_READ, f.handle, int64(off), int(length)))
                        wanted_of.append((i, off, length))
                elif t == CMD_STATUS:
                    _, err = status_error(msg)
                    results[i] = err if err is not None else ServerStatus(None, "OPEN failed without a reason")
                    left -= 1
                else:
                    raise paramiko.SSHException(f"unexpected SFTP answer {t} to OPEN")
                continue
            result: Result | None = None
            while result is None and f.pending and f.pending[0][0] in box.got:
                num, off, length = f.pending.popleft()
                t, msg = box.got.pop(num)
                progressed = True
                if t == CMD_STATUS:
                    _, err = status_error(msg)
                    result = err if err is not None else b"".join(f.chunks)  # EOF
                elif t != CMD_DATA:
                    raise paramiko.SSHException(f"unexpected SFTP answer {t} to READ")
                else:
                    data: bytes = msg.get_string()
                    if not data:
                        result = b"".join(f.chunks)
                    elif off >= f.size:
                        result = GREW
                    else:
                        f.chunks.append(data)
                        if len(data) < length:  # a short read: the gap is asked for before anything else
                            gap_off, gap_len = off + len(data), length - len(data)
                            (gap,) = conn.send(box, (CMD_READ, f.handle, int64(gap_off), int(gap_len)))
                            box.owner[gap] = i
                            f.pending.appendleft((gap, gap_off, gap_len))
            if result is not None:
                results[i] = result
                left -= 1
                for num, _, _ in f.pending:  # their answers are dropped when they come
                    box.owner.pop(num, None)
                del state[i]
                conn.defer(CMD_CLOSE, f.handle)  # leaves with the next request on this session
        if wanted:
            sent = conn.send(box, *wanted)
            for num, (i, off, length) in zip(sent, wanted_of, strict=True):
                box.owner[num] = i
                state[i].pending.append((num, off, length))
        if not progressed:
            conn.pump()
