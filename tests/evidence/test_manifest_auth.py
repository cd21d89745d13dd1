"""Manifest authenticity (OpenSSH signatures made and checked by the real ssh-keygen) and drift between
two generations of an append-only dataset, through the real runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reversib.history import History
from reversib.model import Outcome, RunResult, Severity
from reversib.runner import run_check
from tests.evidence.conftest import DAY, T0, Clock, make_check, sh, write_export

IDENTITY = "exports@provider.example"


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, allowed-signers file naming it for IDENTITY)."""
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen (openssh-client) is required")
    key = tmp_path / "provider_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provider", "-f", str(key))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'{IDENTITY} namespaces="file" {key.with_suffix(".pub").read_text().strip()}\n')
    return key, allowed


def sign(key: Path, manifest: Path, namespace: str = "file") -> None:
    sh("ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, str(manifest))


def run(tmp_path: Path, export: Path, **manifest: object) -> RunResult:
    check = make_check(export, manifest={"path": "SHA256SUMS", **manifest})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        return run_check(check, history)


def kinds(result: RunResult) -> list[tuple[str, str | None, str]]:
    return [(f.kind.value, f.path, f.sev.value) for f in result.findings]


def test_signed_manifest_passes(tmp_path: Path, signer: tuple[Path, Path]) -> None:
    key, allowed = signer
    export = write_export(tmp_path / "export")
    sign(key, export / "SHA256SUMS")
    assert (export / "SHA256SUMS.sig").exists()
    result = run(tmp_path, export, signature={"allowed_signers_file": str(allowed), "identity": IDENTITY})
    assert result.outcome is Outcome.PASSED and result.findings == []  # the .sig is not `unexpected`


def test_unsigned_manifest_is_a_finding(tmp_path: Path, signer: tuple[Path, Path]) -> None:
    _, allowed = signer
    export = write_export(tmp_path / "export")
    sig = {"allowed_signers_file": str(allowed), "identity": IDENTITY}
    result = run(tmp_path, export, signature=sig)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("manifest_unsigned", "SHA256SUMS", "error")]
    result = run(tmp_path, export, signature={**sig, "required": False})
    assert result.outcome is Outcome.PASSED
    assert kinds(result) == [("manifest_unsigned", "SHA256SUMS", Severity.WARNING.value)]


def test_manifest_signed_by_an_unknown_key_is_a_finding(tmp_path: Path, signer: tuple[Path, Path]) -> None:
    _, allowed = signer
    stranger = tmp_path / "stranger_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger))
    export = write_export(tmp_path / "export")
    sign(stranger, export / "SHA256SUMS")
    result = run(tmp_path, export, signature={"allowed_signers_file": str(allowed), "identity": IDENTITY})
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("manifest_signature_invalid", "SHA256SUMS", "error")]


def test_a_key_file_we_cannot_read_is_could_not_verify_not_a_failure(tmp_path: Path,
                                                                      signer: tuple[Path, Path]) -> None:
    """The provider signed correctly; our allowed-signers file is gone: reversib's side (outcome error,
    `signature_unverifiable`), never `manifest_signature_invalid` blamed on the provider."""
    key, _ = signer
    export = write_export(tmp_path / "export")
    sign(key, export / "SHA256SUMS")
    result = run(tmp_path, export, signature={"allowed_signers_file": str(tmp_path / "nofile"), "identity": IDENTITY})
    assert result.outcome is Outcome.ERROR
    assert kinds(result) == [("signature_unverifiable", "SHA256SUMS", "error")]
    assert "cannot read the key file" in (result.findings[0].actual or "")


@pytest.mark.parametrize("case", ["altered manifest", "wrong identity", "wrong namespace"])
def test_bad_signatures_are_findings(tmp_path: Path, signer: tuple[Path, Path], case: str) -> None:
    key, allowed = signer
    export = write_export(tmp_path / "export")
    sign(key, export / "SHA256SUMS", "other-namespace" if case == "wrong namespace" else "file")
    if case == "altered manifest":  # the provider regenerates the manifest after signing it
        (export / "a.txt").write_bytes(b"changed\n")
        sh("sh", "-c", "sha256sum a.txt 'b/c.csv' 'b/d e.bin' z/deep/er/file.json > SHA256SUMS", cwd=export)
    identity = "someone@else.example" if case == "wrong identity" else IDENTITY
    result = run(tmp_path, export, signature={"allowed_signers_file": str(allowed), "identity": identity})
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("manifest_signature_invalid", "SHA256SUMS", "error")]


def _generations(tmp_path: Path, append_only: bool) -> list[RunResult]:
    root = tmp_path / f"exports-{append_only}"
    first = write_export(root / "2026-01-01")
    clock = Clock()
    check = make_check(root, generation={"pattern": "%Y-%m-%d"}, manifest={"path": "SHA256SUMS",
                                                                         "append_only": append_only})
    results = []
    with History.open(f"sqlite:///{tmp_path / f'drift-{append_only}.db'}", clock=clock) as history:
        clock.t = T0 + 7 * 3600
        results.append(run_check(check, history, clock=clock))
        # the next generation: a file vanished and another one was regenerated with other content,
        # the manifest recomputed from that data (so plain verification passes)
        second = root / "2026-01-02"
        shutil.copytree(first, second)
        (second / "b" / "c.csv").unlink()
        (second / "a.txt").write_bytes(b"alpha, rewritten\n")
        sh("sh", "-c", "sha256sum a.txt 'b/d e.bin' z/deep/er/file.json > SHA256SUMS", cwd=second)
        clock.t = T0 + DAY + 7 * 3600
        results.append(run_check(check, history, clock=clock))
    return results


def test_vanished_file_and_changed_digest_in_an_append_only_dataset(tmp_path: Path) -> None:
    first, second = _generations(tmp_path, append_only=True)
    assert first.outcome is Outcome.PASSED and first.findings == []
    assert second.outcome is Outcome.FAILED
    assert kinds(second) == [("digest_changed", "a.txt", "error"), ("entry_vanished", "b/c.csv", "error")]
    changed = second.findings[0]
    assert changed.expected == "sha256:" + __import__("hashlib").sha256(b"alpha\n").hexdigest()


def test_without_append_only_the_same_generations_pass(tmp_path: Path) -> None:
    first, second = _generations(tmp_path, append_only=False)
    assert (first.outcome, second.outcome) == (Outcome.PASSED, Outcome.PASSED)
    assert second.findings == []
