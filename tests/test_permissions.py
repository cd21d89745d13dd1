"""A file the account cannot read is an `unreadable` finding, not a crash and not a pass.

The suite runs as root in CI, where permission bits do not stop reads, so the real CLI is run as
the unprivileged `nobody` through `setpriv` (util-linux)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import make_export, run_tool
from .services import require_service


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="reversib-perm-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(args: list[str]) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        require_service("setpriv (util-linux)", "is not installed: cannot run the CLI as an unprivileged user")
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to the nobody account (chmod alone already denies reads here)")
    exe = str(Path(sys.executable).with_name("reversib"))
    return subprocess.run([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", exe, *args],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_permission_denied_is_unreadable(shared_dir: Path) -> None:
    root = make_export(shared_dir / "exp", {"open.txt": b"fine\n", "secret/closed.txt": b"no\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    for p in [root, root / "secret", *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (root / "secret" / "closed.txt").chmod(0o000)
    proc = as_nobody(["verify-now", "--source", str(root), "--json", "--history",
                      f"sqlite:///{shared_dir}/h.db", "--no-progress"])
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    found = [(f["kind"], f["path"], f["actual"]) for f in doc["runs"][0]["findings"]]
    assert found == [("unreadable", "secret/closed.txt", "read failed: Permission denied")]


def test_unlistable_folder_is_unreadable(shared_dir: Path) -> None:
    root = make_export(shared_dir / "exp", {"a.txt": b"a\n", "locked/b.txt": b"b\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (root / "locked").chmod(0o000)
    proc = as_nobody(["verify-now", "--source", str(root), "--json", "--history",
                      f"sqlite:///{shared_dir}/h.db", "--no-progress"])
    doc = json.loads(proc.stdout)
    found = sorted((f["kind"], f["path"], f["actual"]) for f in doc["runs"][0]["findings"])
    # the folder cannot be listed: it is reported, and its file is unreadable (unknown), never `missing`
    assert found == [("unreadable", "locked", "directory cannot be listed: Permission denied"),
                     ("unreadable", "locked/b.txt",
                      "in locked/, which cannot be listed (directory cannot be listed: Permission denied)")], doc
    assert proc.returncode == 1
