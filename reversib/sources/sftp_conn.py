"""SSH connections of an `sftp://` source: host-key verification, authentication, a small pool, a watchdog.

Nothing here ever writes a secret into a message: errors name the place, the user, the key file
or the variable, never a password or passphrase.
"""

from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import logging
import os
import socket
import stat as statmod
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_HANDLE,
    CMD_LSTAT,
    CMD_NAME,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_READLINK,
    CMD_REALPATH,
    CMD_STAT,
    CMD_STATUS,
    SFTP_EOF,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from reversib.sources.base import SourceError
from reversib.sources.sftp_options import SftpOptions

log = logging.getLogger("reversib.sftp")

REQUEST_SIZE = 128 << 10  # bytes per SFTP read request (OpenSSH serves up to ~255 KiB)
WINDOW_SIZE = 16 << 20  # SSH channel window of an SFTP session
# Largest SSH packet payload the server may send us on a channel.  paramiko's default (32 KiB) splits each
# 128 KiB SFTP answer in five packets and makes a `cat` stream cost one Python packet round per 32 KiB;
# 252 KiB (under OpenSSH's 256 KiB packet limit, headers included) halves the server's and our CPU per byte.
MAX_PACKET = 252 << 10
READ_BUFFER = 4 << 20  # bytes taken at once from an SFTP channel's buffer (READs in flight: at most 4 MiB)
EXEC_WINDOW = 8 << 20  # SSH channel window of a `cat` stream
EXEC_READ = EXEC_WINDOW  # bytes taken at once from an exec channel's buffer: all of it (see _ExecStream)
REKEY_BYTES = 1 << 40  # paramiko #822: a client-side re-key during a long transfer can stall; defer it
DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
KEY_TYPE_ALGORITHMS = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}


@dataclass(frozen=True)
class Place:
    user: str
    host: str
    port: int
    path: str  # as given in the URL ("/" for the login folder's root; "~/x" relative to the login folder)

    @property
    def host_pattern(self) -> str:
        """The host's name in known_hosts: `host`, or `[host]:port` for a port other than 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sftp://{self.user}@{host}:{self.port}{self.path}"


def parse_url(url: str, options: SftpOptions) -> Place:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sftp" or not parts.hostname:
        raise SourceError(f"not an sftp://[user@]host[:port]/path URL: {_redact(url)}")
    if parts.password is not None:
        raise SourceError(f"{_redact(url)}: a password in the URL is refused; use source.sftp.password_env or "
                          "password_file")
    try:
        url_port = parts.port
    except ValueError as exc:
        raise SourceError(f"bad port in {_redact(url)}") from exc
    user = options.username or (unquote(parts.username) if parts.username else None) or getpass.getuser()
    port = options.port or url_port or 22
    path = unquote(parts.path, errors="surrogateescape") or "/"
    if path.startswith("/~"):
        path = path[1:]
    return Place(user, parts.hostname, port, path)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def fs_path(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def fs_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------------
# Watchdog: a deadline on anything that could wait forever (handshake, subsystem start, a file)
# ------------------------------------------------------------------------------------------

class Guard:
    def __init__(self, deadline: float, transport: Any, what: str):
        self.deadline = deadline
        self.transport = transport
        self.what = what
        self.fired = False


class Watchdog:
    """One daemon thread per pool: closes the transport of any guarded operation past its deadline,
    which makes every paramiko wait on it fail at once."""

    def __init__(self) -> None:
        self._guards: set[Guard] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False

    def watch(self, deadline: float | None, transport: Any, what: str) -> Guard:
        """Close `transport` at `deadline` (time.monotonic) unless `unwatch` is called first."""
        g = Guard(deadline if deadline is not None else float("inf"), transport, what)
        if deadline is not None:
            with self._lock:
                self._guards.add(g)
                if self._thread is None or not self._thread.is_alive():
                    self._stop = False
                    self._thread = threading.Thread(target=self._run, name="reversib-sftp-watchdog", daemon=True)
                    self._thread.start()
        return g

    def unwatch(self, g: Guard) -> None:
        with self._lock:
            self._guards.discard(g)

    @contextmanager
    def guard(self, seconds: float | None, transport: Any, what: str) -> Iterator[Guard]:
        g = self.watch(time.monotonic() + seconds if seconds else None, transport, what)
        try:
            yield g
        finally:
            self.unwatch(g)

    def _run(self) -> None:
        while True:
            self._wake.wait(0.25)
            now = time.monotonic()
            with self._lock:
                if self._stop:
                    return
                expired = [g for g in self._guards if g.deadline <= now]
                for g in expired:
                    self._guards.discard(g)
            for g in expired:
                g.fired = True
                log.warning("sftp watchdog: %s exceeded its time limit; closing the connection", g.what)
                with suppress(Exception):
                    g.transport.close()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
        self._wake.set()
        self._wake = threading.Event()


# ------------------------------------------------------------------------------------------
# One connection: transport + SFTP session (+ exec channels on demand)
# ------------------------------------------------------------------------------------------

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (paramiko.SSHException, EOFError, socket.timeout,
                                                     ConnectionError, OSError)


class ServerStatus(OSError):
    """The SFTP server answered a request with an error status (no such file, permission denied...)."""


class ServerNotFound(ServerStatus, FileNotFoundError):
    pass


class ServerDenied(ServerStatus, PermissionError):
    pass


def server_status(code: int | None, text: str) -> ServerStatus:
    if code == errno.ENOENT:
        return ServerNotFound(code, text)
    if code == errno.EACCES:
        return ServerDenied(code, text)
    return ServerStatus(code, text)


@dataclass(eq=False)
class Conn:
    """One SSH connection and its SFTP session, used by one thread at a time.

    Requests are framed here rather than by paramiko's SFTPClient (whose bookkeeping, `request_number` and
    `_expecting`, is kept): several requests go out in one SSH packet (a file's READs; a CLOSE whose
    answer nobody waits for rides with the next request), and answers are cut from everything the channel
    has buffered at once.  Small files cost two SSH packets each way instead of four, and half the waits.
    """

    transport: Any
    sftp: Any
    created: float = field(default_factory=time.monotonic)
    broken: bool = False
    _rbuf: bytearray = field(default_factory=bytearray)
    _deferred: list[bytes] = field(default_factory=list)

    def send(self, box: Any, *requests: tuple[Any, ...]) -> list[int]:
        """Send `requests` ((type, *args) each) in one SSH packet, with any deferred request before them;
        their answers go to `box._async_response` (None: answers dropped).  Returns the request ids."""
        parts, self._deferred = self._deferred, []
        nums = [self._frame(parts, box, r) for r in requests]
        if parts:
            self.sftp.sock.sendall(b"".join(parts))
        return nums

    def defer(self, t: int, *args: Any) -> None:
        """A request whose answer nobody waits for (a CLOSE): sent with the next `send` on this session (an
        idle session keeps it until then, or until it is closed, which closes the handle too)."""
        self._frame(self._deferred, None, (t, *args))

    def _frame(self, out: list[bytes], box: Any, request: tuple[Any, ...]) -> int:
        sftp = self.sftp
        t, *args = request
        msg = paramiko.Message()
        with sftp._lock:
            num: int = sftp.request_number
            sftp.request_number += 1
            sftp._expecting[num] = box if box is not None else type(None)
        msg.add_int(num)
        for item in args:
            if isinstance(item, int64):
                msg.add_int64(item)
            elif isinstance(item, int):
                msg.add_int(item)
            elif isinstance(item, SFTPAttributes):
                item._pack(msg)
            else:
                msg.add_string(item)
        body = msg.asbytes()
        out.append(struct.pack(">IB", len(body) + 1, t) + body)
        return num

    def pump(self) -> None:
        """Wait for at least one complete SFTP answer, then hand every complete answer buffered to its box."""
        buf = self._rbuf
        while True:
            if len(buf) >= 4:
                size = struct.unpack_from(">I", buf)[0]
                if len(buf) >= 4 + size:
                    break
            data = self.sftp.sock.recv(READ_BUFFER)  # socket.timeout after idle_timeout
            if not data:
                raise paramiko.SSHException("Server connection dropped: end of stream")
            buf += data
        sftp = self.sftp
        pos = 0
        answers: list[tuple[Any, int, Any, int]] = []
        with sftp._lock:
            while len(buf) - pos >= 4:
                size = struct.unpack_from(">I", buf, pos)[0]
                if len(buf) - pos < 4 + size:
                    break
                t = buf[pos + 4]
                msg = paramiko.Message(bytes(memoryview(buf)[pos + 5:pos + 4 + size]))
                pos += 4 + size
                num = msg.get_int()
                box = sftp._expecting.pop(num, None)
                if box is not None and box is not type(None):
                    answers.append((box, t, msg, num))
        del buf[:pos]
        for box, t, msg, num in answers:
            box._async_response(t, msg, num)

    def wait(self, box: Responses, num: int) -> tuple[int, Any]:
        while num not in box.got:
            self.pump()
        return box.got.pop(num)

    def request(self, t: int, *args: Any) -> Any:
        """One SFTP request, waited for; a server error status becomes ServerStatus."""
        box = Responses()
        (num,) = self.send(box, (t, *args))
        rt, msg = self.wait(box, num)
        if rt == CMD_STATUS:
            eof, err = status_error(msg)
            if err is not None:
                raise err
            if eof:
                raise EOFError("end of file")
        return msg

    def lstat(self, path: str) -> SFTPAttributes:
        return SFTPAttributes._from_msg(self.request(CMD_LSTAT, fs_path(path)))

    def stat(self, path: str) -> SFTPAttributes:
        return SFTPAttributes._from_msg(self.request(CMD_STAT, fs_path(path)))

    def realpath(self, path: str) -> str:
        return _one_name(self.request(CMD_REALPATH, fs_path(path)), "realpath")

    def listdir(self, path: str, read_aheads: int = 16,
                check: Callable[[str], None] | None = None) -> list[tuple[str, SFTPAttributes]]:
        """Every name in a folder with its lstat attributes (READDIR requests pipelined).  With `check`, the
        folder's realpath is asked for in the same SSH packet as the OPENDIR (a round trip saved per folder)
        and handed to `check`, which may refuse it by raising, before any name is read."""
        box = Responses()
        if check is None:
            (opened,) = self.send(box, (CMD_OPENDIR, fs_path(path)))
        else:
            asked, opened = self.send(box, (CMD_REALPATH, fs_path(path)), (CMD_OPENDIR, fs_path(path)))
        t, msg = self.wait(box, opened)
        handle: bytes | None = None
        refused: ServerStatus | None = None
        if t == CMD_HANDLE:
            handle = msg.get_binary()
        elif t == CMD_STATUS:
            refused = status_error(msg)[1] or ServerStatus(None, "OPENDIR failed without a reason")
        else:
            raise paramiko.SSHException(f"unexpected SFTP answer {t} to OPENDIR")
        out: list[tuple[str, SFTPAttributes]] = []
        try:
            if check is not None:
                rt, rmsg = self.wait(box, asked)
                if rt == CMD_STATUS:
                    raise status_error(rmsg)[1] or ServerStatus(None, "realpath failed without a reason")
                check(_one_name(rmsg, "realpath"))
            if handle is None:
                assert refused is not None
                raise refused
            pending = self.send(box, *[(CMD_READDIR, handle)] * read_aheads)
            done = False
            while pending:
                num = pending.pop(0)
                t, rmsg = self.wait(box, num)
                if done:
                    continue
                if t == CMD_STATUS:
                    eof, err = status_error(rmsg)
                    if err is not None:
                        raise err
                    done = True
                    continue
                if t != CMD_NAME:
                    raise paramiko.SSHException(f"unexpected SFTP answer {t} to READDIR")
                for _ in range(rmsg.get_int()):
                    name = fs_name(rmsg.get_string())
                    rmsg.get_string()  # longname
                    attrs = SFTPAttributes._from_msg(rmsg)
                    if name not in (".", ".."):
                        out.append((name, attrs))
                pending += self.send(box, (CMD_READDIR, handle))
        finally:
            if handle is not None and not self.broken:
                with suppress(*TRANSPORT_ERRORS):
                    self.defer(CMD_CLOSE, handle)
        return out

    def readlink(self, path: str) -> str:
        return _one_name(self.request(CMD_READLINK, fs_path(path)), "readlink")

    def exec(self, command: bytes, timeout: float) -> Any:
        chan = self.transport.open_session(window_size=EXEC_WINDOW, max_packet_size=MAX_PACKET, timeout=timeout)
        chan.settimeout(timeout)
        chan.exec_command(command)
        return chan

    def close(self) -> None:
        self.broken = True
        with suppress(Exception):
            self.sftp.close()
        with suppress(Exception):
            self.transport.close()


def _one_name(msg: Any, what: str) -> str:
    """The single name of an SSH_FXP_NAME answer (REALPATH, READLINK)."""
    if msg.get_int() != 1:
        raise ServerStatus(None, f"{what}: unexpected answer")
    return fs_name(msg.get_string())


_STATUS_ERRNO = {2: errno.ENOENT, 3: errno.EACCES}  # SFTP_NO_SUCH_FILE, SFTP_PERMISSION_DENIED


def status_error(msg: Any) -> tuple[bool, ServerStatus | None]:
    """Read an SSH_FXP_STATUS answer: (is EOF, the error to raise or None)."""
    code = msg.get_int()
    text = msg.get_text()
    if code == SFTP_EOF:
        return True, None
    if code == 0:
        return False, None
    return False, server_status(_STATUS_ERRNO.get(code), text or f"SFTP status {code}")


class Responses:
    """Collects the answers to pipelined requests (paramiko dispatches them to `_async_response`)."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, Any]] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.got[num] = (t, msg)


def is_regular(attrs: SFTPAttributes) -> bool:
    return attrs.st_mode is not None and statmod.S_ISREG(attrs.st_mode)


def is_dir(attrs: SFTPAttributes) -> bool:
    return attrs.st_mode is not None and statmod.S_ISDIR(attrs.st_mode)


def is_link(attrs: SFTPAttributes) -> bool:
    return attrs.st_mode is not None and statmod.S_ISLNK(attrs.st_mode)


# ------------------------------------------------------------------------------------------
# Connecting: TCP, handshake, host key, authentication, SFTP session
# ------------------------------------------------------------------------------------------

def _read_secret(options: SftpOptions, name: str, place: Place) -> str | None:
    env = getattr(options, f"{name}_env")
    file = getattr(options, f"{name}_file")
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise SourceError(f"{place}: source.sftp.{name}_env: environment variable {env} is not set")
        return value
    if file is not None:
        try:
            return Path(os.path.expanduser(file)).read_text().rstrip("\r\n")
        except OSError as exc:
            raise SourceError(f"{place}: source.sftp.{name}_file: cannot read {file}: {exc.strerror}") from exc
    return None


class Connector:
    """Opens authenticated connections to one place; shared by the pool."""

    def __init__(self, place: Place, options: SftpOptions):
        self.place = place
        self.options = options
        self.known_hosts = Path(os.path.expanduser(options.known_hosts))
        self._tofu_lock = threading.Lock()
        self._keys: list[tuple[str, Any]] | None = None
        self._revoked: set[bytes] = set()  # host keys known_hosts marks @revoked (read with the others)

    # -- host keys ---------------------------------------------------------------------------
    def _known(self) -> dict[str, Any]:
        """The keys known_hosts has for this host, read as OpenSSH reads the file: `@cert-authority` lines are
        skipped (reversib does not use host certificates), `@revoked` keys are remembered (a server offering
        one is refused), and a line that cannot be read is skipped with a warning naming it."""
        hk = paramiko.HostKeys()
        revoked: set[bytes] = set()
        if self.known_hosts.exists():
            try:
                text = self.known_hosts.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise SourceError(f"{self.place}: cannot read known_hosts {self.known_hosts}: "
                                  f"{exc.strerror}") from exc
            for lineno, raw in enumerate(text.splitlines(), 1):
                line, marker = raw.strip(), ""
                if not line or line.startswith("#"):
                    continue
                if line.startswith("@"):
                    marker, _, line = line.partition(" ")
                    if marker not in ("@revoked", "@cert-authority"):
                        log.warning("sftp: %s line %d: unknown marker %s: line ignored", self.known_hosts, lineno,
                                    marker[:40])
                        continue
                    if marker == "@cert-authority":
                        continue
                try:
                    entry = paramiko.hostkeys.HostKeyEntry.from_line(line.strip(), lineno)
                except Exception as exc:  # paramiko raises InvalidHostKey, a bare Exception, on a bad key
                    log.warning("sftp: %s line %d cannot be read (%s): line ignored", self.known_hosts, lineno,
                                type(exc).__name__)
                    continue
                if entry is None:
                    continue
                if marker == "@revoked":
                    revoked.add(entry.key.asbytes())
                else:
                    hk._entries.append(entry)  # as HostKeys.load() does, with the lines it cannot read left out
        self._revoked = revoked
        found = hk.lookup(self.place.host_pattern)
        return dict(found) if found is not None else {}

    def _prefer_known_key_types(self, transport: Any, known: dict[str, Any]) -> None:
        """Ask for the host-key types known_hosts has, as OpenSSH does: no false 'changed key' alarm."""
        if not known:
            return
        sec = transport.get_security_options()
        offered = list(sec.key_types)
        first: list[str] = []
        for ktype in known:
            for alg in KEY_TYPE_ALGORITHMS.get(ktype, (ktype,)):
                if alg in offered and alg not in first:
                    first.append(alg)
        if first:
            sec.key_types = tuple(first + [a for a in offered if a not in first])

    def _check_host_key(self, transport: Any, known: dict[str, Any]) -> None:
        key = transport.get_remote_server_key()
        ktype, offered_fp = key.get_name(), fingerprint(key)
        line = f"{self.place.host_pattern} {ktype} {key.get_base64()}"
        if key.asbytes() in self._revoked:
            raise SourceError(f"{self.place}: REVOKED HOST KEY: the server offered {ktype} {offered_fp}, which "
                              f"{self.known_hosts} marks @revoked: refused")
        if ktype in known:
            if known[ktype].asbytes() == key.asbytes():
                return
            raise SourceError(
                f"{self.place}: HOST KEY CHANGED: the server offered {ktype} {offered_fp}, but "
                f"{self.known_hosts} has {fingerprint(known[ktype])} for {self.place.host_pattern}. This may be "
                "an attack (or the server was reinstalled): confirm the new fingerprint with the provider, then "
                f"replace the line in {self.known_hosts} with: {line}")
        if known:
            types = ", ".join(sorted(known))
            raise SourceError(
                f"{self.place}: HOST KEY CHANGED: the server offered {ktype} {offered_fp}, but {self.known_hosts} "
                f"has only {types} keys for {self.place.host_pattern}. Confirm the fingerprint with the provider, "
                f"then add to {self.known_hosts}: {line}")
        if self.options.trust_on_first_use:
            self._persist(line)
            log.warning("sftp: trusted the host key of %s on first use (%s %s), pinned in %s",
                        self.place.host_pattern, ktype, offered_fp, self.known_hosts)
            return
        raise SourceError(
            f"{self.place}: unknown host key: {self.place.host_pattern} is not in {self.known_hosts}; the server "
            f"offered {ktype} {offered_fp}. Confirm this fingerprint with the provider, then add this line to "
            f"{self.known_hosts}: {line} (ssh-keyscan -p {self.place.port} {self.place.host} prints it), or set "
            "source.sftp.trust_on_first_use: true to accept and pin it once")

    def _persist(self, line: str) -> None:
        with self._tofu_lock:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            again = self._known()  # another connection of this run may have pinned it meanwhile
            if again:
                return
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line + "\n")

    # -- authentication ------------------------------------------------------------------------
    def _load_keys(self) -> list[tuple[str, Any]]:
        if self._keys is not None:
            return self._keys
        o = self.options
        keys: list[tuple[str, Any]] = []
        files: list[Path]
        explicit = o.private_key_file is not None
        if explicit:
            files = [Path(os.path.expanduser(str(o.private_key_file)))]
        else:
            files = [Path.home() / ".ssh" / n for n in DEFAULT_KEY_FILES]
        passphrase = _read_secret(o, "passphrase", self.place)
        secret = passphrase.encode() if passphrase is not None else None
        for path in files:
            if not path.exists():
                if explicit:
                    raise SourceError(f"{self.place}: source.sftp.private_key_file {path} does not exist")
                continue
            try:
                keys.append((f"key {path}", paramiko.PKey.from_path(str(path), password=secret)))
            except paramiko.PasswordRequiredException as exc:
                if explicit:
                    raise SourceError(f"{self.place}: private key {path} is encrypted: give its passphrase with "
                                      "source.sftp.passphrase_env or passphrase_file") from exc
            except (paramiko.SSHException, ValueError, OSError) as exc:
                if explicit:
                    what = "wrong passphrase or unsupported key" if passphrase is not None else "unsupported key"
                    raise SourceError(f"{self.place}: cannot load private key {path} ({what}: "
                                      f"{type(exc).__name__})") from exc
        if o.use_agent and os.environ.get("SSH_AUTH_SOCK"):
            with suppress(paramiko.SSHException, OSError):
                for i, k in enumerate(paramiko.Agent().get_keys()):
                    keys.append((f"agent key {i + 1} ({k.get_name()} {fingerprint(k)})", k))
        self._keys = keys
        return keys

    def _authenticate(self, transport: Any) -> None:
        user = self.place.user
        tried: list[str] = []
        for label, key in self._load_keys():
            try:
                transport.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                tried.append(f"{label} (server accepts only {', '.join(exc.allowed_types)})")
                break
            except paramiko.AuthenticationException:
                tried.append(f"{label} (refused)")
                continue
            if transport.is_authenticated():
                return
        password = _read_secret(self.options, "password", self.place)
        if password is not None:
            where = (f"password from ${self.options.password_env}" if self.options.password_env
                     else f"password from {self.options.password_file}")
            try:
                transport.auth_password(user, password)
            except paramiko.BadAuthenticationType as exc:
                tried.append(f"{where} (server accepts only {', '.join(exc.allowed_types)})")
            except paramiko.AuthenticationException:
                tried.append(f"{where} (refused)")
            if transport.is_authenticated():
                return
        if not tried:
            raise SourceError(f"{self.place}: no credentials to log in as {user}: set source.sftp.private_key_file, "
                              "password_env/password_file, or run an ssh-agent")
        raise SourceError(f"{self.place}: authentication failed for user {user}; tried: {'; '.join(tried)}")

    # -- the whole connection ------------------------------------------------------------------
    def connect(self, watchdog: Watchdog) -> Conn:
        o, place = self.options, self.place
        try:
            sock = socket.create_connection((place.host, place.port), timeout=o.connect_timeout)
        except OSError as exc:
            raise SourceError(f"{place}: cannot connect: {exc.strerror or exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        ok = False
        try:
            with watchdog.guard(o.connect_timeout, transport, f"connecting to {place}") as g:
                try:
                    self._handshake(transport)
                    chan = transport.open_session(window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET,
                                                  timeout=o.connect_timeout)
                    chan.settimeout(o.connect_timeout)
                    chan.invoke_subsystem("sftp")
                    sftp = paramiko.SFTPClient(chan)
                except SourceError:
                    raise
                except TRANSPORT_ERRORS as exc:
                    if g.fired:
                        raise SourceError(f"{place}: connection not set up within {o.connect_timeout:g}s "
                                          "(connect_timeout)") from exc
                    raise SourceError(f"{place}: SSH connection failed: {_describe(exc)}") from exc
            chan.settimeout(o.idle_timeout)
            if o.keepalive:
                transport.set_keepalive(int(max(1, o.keepalive)))
            ok = True
            return Conn(transport, sftp)
        finally:
            if not ok:
                transport.close()
                sock.close()

    def _handshake(self, transport: Any) -> None:
        o = self.options
        transport.banner_timeout = o.connect_timeout
        transport.handshake_timeout = o.connect_timeout
        transport.auth_timeout = o.connect_timeout
        pkt = transport.packetizer
        pkt.REKEY_BYTES = pkt.REKEY_PACKETS = REKEY_BYTES
        pkt.REKEY_BYTES_OVERFLOW_MAX = pkt.REKEY_PACKETS_OVERFLOW_MAX = REKEY_BYTES
        sec = transport.get_security_options()
        supported = list(sec.ciphers)
        preferred = [c for c in o.ciphers if c in supported]
        sec.ciphers = tuple(preferred + [c for c in supported if c not in preferred])
        known = self._known()
        self._prefer_known_key_types(transport, known)
        transport.start_client(timeout=o.connect_timeout)
        self._check_host_key(transport, known)
        self._authenticate(transport)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text


# ------------------------------------------------------------------------------------------
# The pool: at most max_sessions connections, each used by one thread at a time
# ------------------------------------------------------------------------------------------

class Pool:
    def __init__(self, connector: Connector):
        self.connector = connector
        self.max = connector.options.max_sessions
        self._idle: list[Conn] = []
        self._count = 0
        self._cond = threading.Condition()
        self.watchdog = Watchdog()
        self.exec_ok: bool | None = None  # None: not probed yet

    def acquire(self) -> Conn:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self.max:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return self.connector.connect(self.watchdog)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def release(self, conn: Conn) -> None:
        with self._cond:
            if conn.broken or not conn.transport.is_active():
                conn.close()
                self._count -= 1
            else:
                self._idle.append(conn)
            self._cond.notify()

    @contextmanager
    def session(self) -> Iterator[Conn]:
        conn = self.acquire()
        try:
            yield conn
        except TRANSPORT_ERRORS as exc:
            if not isinstance(exc, ServerStatus):
                conn.broken = True
            raise
        except BaseException:
            conn.broken = True
            raise
        finally:
            self.release(conn)

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for c in idle:
            c.close()
        self.watchdog.stop()
        self.exec_ok = None
