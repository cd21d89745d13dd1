"""Archives made by the real tools (tar, gzip, zstd, xz, zip) and encrypted by the real age and gpg,
with keys generated here.  A missing tool skips locally and fails under CI (tests/services.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reversib.config import CheckConfig
from reversib.history import History
from reversib.model import RunResult
from reversib.runner import run_check
from tests.helpers import make_export, run_tool
from tests.services import require_service

FILES = {
    "crm/contacts.csv": b"id,name\n1,Ada\n2,Grace\n" * 50,
    "crm/deals.json": b'{"deals": [1, 2, 3]}\n',
    "docs/contrat signé.pdf": os.urandom(300_000),
    "mail/2026/inbox.mbox": b"From a@b\nSubject: x\n\nbody\n" * 2000,
}


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            require_service(tool, f"the {tool} command is not installed")


def sh(*argv: str | Path, cwd: Path | None = None, stdin: bytes | None = None,
       env: dict[str, str] | None = None) -> bytes:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, input=stdin, capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{argv}: {done.stderr.decode(errors='replace')}")
    return done.stdout


def make_tree(root: Path, files: dict[str, bytes] | None = None, *, manifest: bool = True) -> Path:
    """A folder `export/` with files and a SHA256SUMS written by the real sha256sum."""
    tree = make_export(root / "export", files if files is not None else FILES)
    if manifest:
        run_tool(["sha256sum"], tree, "SHA256SUMS")
    return tree


def make_tar(tree: Path, out: Path, compression: str = "zst") -> Path:
    """`tar -C tree -cf - .` piped through the real compressor."""
    need("tar")
    raw = sh("tar", "-C", tree, "--sort=name", "-cf", "-", ".")
    if compression == "none":
        out.write_bytes(raw)
        return out
    tool = {"zst": ["zstd", "-q", "-c"], "gz": ["gzip", "-c"], "xz": ["xz", "-c"], "bz2": ["bzip2", "-c"]}[compression]
    need(tool[0])
    out.write_bytes(sh(*tool, stdin=raw))
    return out


def make_zip(tree: Path, out: Path) -> Path:
    need("zip")
    sh("zip", "-q", "-r", "-y", out.resolve(), ".", cwd=tree)
    return out


@pytest.fixture(scope="session")
def age_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two age identities made by the real age-keygen: the customer's, and someone else's."""
    need("age", "age-keygen")
    d = tmp_path_factory.mktemp("age")
    keys: dict[str, Any] = {}
    for who in ("customer", "other"):
        path = d / f"{who}.key"
        sh("age-keygen", "-o", path)
        recipient = next(line.split(": ", 1)[1] for line in path.read_text().splitlines() if "public key" in line)
        keys[who] = {"identity": path, "recipient": recipient}
    return keys


def age_encrypt(plain: Path, recipient: str, out: Path) -> Path:
    sh("age", "-r", recipient, "-o", out, plain)
    return out


GPG_PASSPHRASE = "correct horse battery"


@pytest.fixture(scope="session")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two OpenPGP keys made by the real gpg in a throwaway home; the customer's secret key exported."""
    need("gpg", "gpgconf")
    home = tmp_path_factory.mktemp("gnupg")
    os.chmod(home, 0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    keys: dict[str, Any] = {"home": home, "env": env}
    for who in ("customer", "other", "protected"):  # "protected": the customer's key under a passphrase
        uid = f"{who} <{who}@example.test>"
        pw = ["--pinentry-mode", "loopback", "--passphrase", GPG_PASSPHRASE if who == "protected" else ""]
        sh("gpg", "--batch", *pw, "--quick-gen-key", uid, "ed25519", "cert", "never", env=env)
        fpr = sh("gpg", "--batch", "--with-colons", "--list-keys", uid, env=env).decode()
        fingerprint = next(line.split(":")[9] for line in fpr.splitlines() if line.startswith("fpr:"))
        sh("gpg", "--batch", *pw, "--quick-add-key", fingerprint, "cv25519", "encr", "never", env=env)
        secret = home / f"{who}.sec.asc"
        secret.write_bytes(sh("gpg", "--batch", *pw, "--armor", "--export-secret-keys", fingerprint, env=env))
        keys[who] = {"uid": uid, "fingerprint": fingerprint, "secret": secret}
    yield keys
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, capture_output=True)


def gpg_encrypt(plain: Path, keys: dict[str, Any], who: str, out: Path) -> Path:
    sh("gpg", "--batch", "--yes", "--trust-model", "always", "-z", "0", "-r", keys[who]["fingerprint"], "-o", out,
       "--encrypt", plain, env=keys["env"])
    return out


def archive_check(drop: Path, archive: dict[str, Any], **more: Any) -> CheckConfig:
    data: dict[str, Any] = {"version": 1, "name": "archive-test", "source": {"url": str(drop)}, "archive": archive}
    data.update(more)
    return CheckConfig.model_validate(data)


def run(check: CheckConfig, tmp: Path) -> RunResult:
    with History.open(f"sqlite:///{tmp / 'history.db'}") as history:
        return run_check(check, history)


def kinds(result: RunResult) -> list[tuple[str, str | None]]:
    return sorted((f.kind.value, f.path) for f in result.findings if f.severity.value != "info")
