"""Archives over SFTP against the real sshd, through `reversib verify-now --json`: a gpg-encrypted tar.xz
on the SFTP-only (internal-sftp) port and a zip read through SFTP range reads."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.archives.conftest import FILES, gpg_encrypt, make_tar, make_tree, make_zip
from tests.archives.conftest import gpg_keys as gpg_keys  # the session fixture, shared

from .conftest import Sshd, run_sftp_check

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]


def test_a_gpg_encrypted_tar_over_sftp_only_passes(sshd: Sshd, tmp_path: Path, gpg_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = tmp_path / "drop"
    drop.mkdir()
    enc = gpg_encrypt(make_tar(tree, tmp_path / "a.tar.xz", "xz"), gpg_keys, "customer", drop / "acme.tar.xz.gpg")
    (drop / "SHA256SUMS").write_text(f"{hashlib.sha256(enc.read_bytes()).hexdigest()}  {enc.name}\n")
    code, doc = run_sftp_check(tmp_path, sshd.url(drop, sshd.sftp_only_port), sshd.options(),
                               manifest={"path": "SHA256SUMS"},
                               archive={"path": "acme.tar.xz.gpg",
                                        "decrypt": {"identity_file": str(gpg_keys["customer"]["secret"])}})
    run = doc["runs"][0]
    assert (code, run["outcome"]) == (0, "passed"), run["findings"]
    assert run["files_verified"] == len(FILES) + 1


def test_a_zip_over_sftp_names_the_changed_member(sshd: Sshd, tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    (tree / "mail/2026/inbox.mbox").write_bytes(b"rewritten\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    make_zip(tree, drop / "acme.zip")
    code, doc = run_sftp_check(tmp_path, sshd.url(drop), sshd.options(), archive={"path": "acme.zip"})
    run = doc["runs"][0]
    assert (code, run["outcome"]) == (1, "failed")
    assert [(f["kind"], f["path"]) for f in run["findings"]] == [("digest_mismatch", "acme.zip!/mail/2026/inbox.mbox")]
