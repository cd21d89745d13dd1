"""A real OpenSSH sshd on 127.0.0.1 for the SFTP tests, started once per session with its own config.

Two listening ports on one sshd: `port` lets the account run commands (remote hashing, `cat`
streaming), `sftp_only_port` forces `internal-sftp` (the common SFTP-only set-up).  Key
authentication for the current user (root here) with a generated ed25519 key; password
authentication is enabled but no test account has a usable password, so only its failure path is
tested.  The client verifies the host key against a known_hosts file written here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from tests.cli_helpers import verify_json
from tests.services import require_service

from .proxy import FaultProxy

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519", passphrase: str = "", fmt: list[str] | None = None) -> str:
    extra = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", passphrase, "-C", "reversib-test",
                    *(fmt or []), "-f", str(path)], check=True, capture_output=True)
    return path.with_suffix(path.suffix + ".pub").read_text().strip() if path.suffix else \
        Path(str(path) + ".pub").read_text().strip()


@dataclass
class Sshd:
    dir: Path
    port: int
    sftp_only_port: int
    user: str
    host_key_line: str  # "ssh-ed25519 AAAA..." of the server
    client_key: Path
    known_hosts: Path
    pid: int

    def known_hosts_line(self, port: int) -> str:
        return f"[127.0.0.1]:{port} {self.host_key_line}"

    def url(self, path: Path | str, port: int | None = None) -> str:
        return f"sftp://{self.user}@127.0.0.1:{port or self.port}{quote(str(path), safe='/')}"

    def options(self, **over: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {"private_key_file": str(self.client_key), "known_hosts": str(self.known_hosts),
                                "use_agent": False, "connect_timeout": "10s", "idle_timeout": "10s"}
        opts.update(over)
        return {k: v for k, v in opts.items() if v is not None}


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        require_service("OpenSSH sshd", f"not installed ({SSHD}, ssh-keygen): apt-get install openssh-server")
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(d / "host_ed25519")
    client_pub = _keygen(d / "client_ed25519")
    (d / "authorized_keys").write_text(client_pub + "\n")
    port, sftp_only = _free_port(), _free_port()
    config = d / "sshd_config"
    config.write_text(f"""
ListenAddress 127.0.0.1:{port}
ListenAddress 127.0.0.1:{sftp_only}
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
UsePAM no
StrictModes no
PermitRootLogin yes
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
MaxStartups 100
MaxSessions 50
LogLevel ERROR
Subsystem sftp internal-sftp
Match LocalPort {sftp_only}
    ForceCommand internal-sftp
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with open(d / "sshd.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            require_service("OpenSSH sshd", f"did not start: {(d / 'sshd.log').read_text()[-500:]}")
        time.sleep(0.05)
    known = d / "known_hosts"
    user = os.environ.get("USER") or __import__("getpass").getuser()
    s = Sshd(d, port, sftp_only, user, " ".join(host_pub.split()[:2]), d / "client_ed25519", known, proc.pid)
    known.write_text(s.known_hosts_line(port) + "\n" + s.known_hosts_line(sftp_only) + "\n")
    yield s
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def proxy(sshd: Sshd) -> Iterator[FaultProxy]:
    p = FaultProxy(sshd.port)
    yield p
    p.close()


def write_check(tmp_path: Path, url: str, sftp: dict[str, Any], **check: Any) -> Path:
    """A config + one check file named `sftp-test`; returns the config file."""
    checks = tmp_path / "checks"
    checks.mkdir(exist_ok=True)
    doc: dict[str, Any] = {"version": 1, "id": "sftp-test", "name": "sftp-test",
                           "source": {"url": url, "sftp": sftp}}
    doc.update(check)
    (checks / "sftp-test.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    cfg = tmp_path / "reversib.yaml"
    cfg.write_text("version: 1\nchecks_dir: checks\n")
    return cfg


def run_sftp_check(tmp_path: Path, url: str, sftp: dict[str, Any], **check: Any) -> tuple[int, dict[str, Any]]:
    cfg = write_check(tmp_path, url, sftp, **check)
    return verify_json(["sftp-test", "--config", str(cfg)], tmp_path / "history.db")
