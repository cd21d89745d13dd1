"""minisign and OpenPGP manifest signatures, made and checked by the real tools (`minisign`, `gpg`),
through the real runner: signed passes, unsigned and signed-by-an-unknown-key are findings, and one
flipped byte of the manifest fails verification."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reversib.evidence.signatures import verify_minisign_signature, verify_openpgp_signature
from reversib.history import History
from reversib.model import Outcome, RunResult
from reversib.runner import run_check
from tests.evidence.conftest import make_check, sh, write_export
from tests.services import require_service

IDENTITY = "exports@provider.example"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        require_service(name, f"is not installed (Debian package {package})")
    return found


class Minisign:
    suffix = ".minisig"
    type = "minisign"

    def __init__(self, tmp: Path, name: str) -> None:
        self.tool = _tool("minisign", "minisign")
        self.pub, self.sec = tmp / f"{name}.pub", tmp / f"{name}.key"
        sh(self.tool, "-G", "-W", "-p", str(self.pub), "-s", str(self.sec))

    def sign(self, manifest: Path) -> None:
        sh(self.tool, "-S", "-s", str(self.sec), "-m", str(manifest), "-t", "ACME export")

    def close(self) -> None:
        pass


class OpenPGP:
    suffix = ".sig"
    type = "openpgp"

    def __init__(self, tmp: Path, name: str) -> None:
        self.tool = _tool("gpg", "gnupg")
        self.home = tmp / f"gnupg-{name}"
        self.home.mkdir(mode=0o700)
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        uid = f"{name} <{IDENTITY}>"
        self.gpg("--quick-generate-key", "--passphrase", "", uid, "ed25519", "sign", "never")
        self.pub = tmp / f"{name}.asc"
        self.pub.write_bytes(self.gpg("--armor", "--export", uid).stdout)

    def gpg(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.tool, "--batch", "--pinentry-mode", "loopback", *args], env=self.env,
                              check=True, capture_output=True, timeout=120)

    def sign(self, manifest: Path) -> None:
        self.gpg("--passphrase", "", "--detach-sign", "-o", str(manifest) + ".sig", str(manifest))

    def close(self) -> None:  # the agent gpg started for key generation and signing (by its home)
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], capture_output=True, timeout=30)


Signer = Minisign | OpenPGP


@pytest.fixture(params=["minisign", "openpgp"])
def make_signer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Signer]]:
    made: list[Signer] = []

    def make(name: str) -> Signer:
        signer: Signer = Minisign(tmp_path, name) if request.param == "minisign" else OpenPGP(tmp_path, name)
        made.append(signer)
        return signer

    yield make
    for s in made:
        s.close()


def run(tmp_path: Path, export: Path, signer: Signer, **sig: object) -> RunResult:
    signature = {"type": signer.type, "public_key_files": [str(signer.pub)], **sig}
    check = make_check(export, manifest={"path": "SHA256SUMS", "signature": signature})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        return run_check(check, history)


def kinds(result: RunResult) -> list[tuple[str, str | None, str]]:
    return [(f.kind.value, f.path, f.sev.value) for f in result.findings]


def test_signed_manifest_passes(tmp_path: Path, make_signer: Callable[[str], Signer]) -> None:
    provider = make_signer("provider")
    export = write_export(tmp_path / "export")
    provider.sign(export / "SHA256SUMS")
    assert (export / ("SHA256SUMS" + provider.suffix)).exists()
    result = run(tmp_path, export, provider)
    assert result.outcome is Outcome.PASSED and result.findings == []  # the signature file is not `unexpected`


def test_unsigned_manifest_is_a_finding(tmp_path: Path, make_signer: Callable[[str], Signer]) -> None:
    provider = make_signer("provider")
    export = write_export(tmp_path / "export")
    result = run(tmp_path, export, provider)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("manifest_unsigned", "SHA256SUMS", "error")]
    assert result.findings[0].actual == f"no SHA256SUMS{provider.suffix}"


def test_manifest_signed_by_an_unknown_key_is_a_finding(tmp_path: Path,
                                                        make_signer: Callable[[str], Signer]) -> None:
    provider, stranger = make_signer("provider"), make_signer("stranger")
    export = write_export(tmp_path / "export")
    stranger.sign(export / "SHA256SUMS")
    result = run(tmp_path, export, provider)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("manifest_signature_invalid", "SHA256SUMS", "error")]
    if provider.type == "openpgp":
        assert "not among the configured public keys" in (result.findings[0].actual or "")
    # with both keys configured, the stranger's signature is accepted (the keyring is exactly the config)
    assert run(tmp_path, export, provider, public_key_files=[str(provider.pub), str(stranger.pub)]).outcome \
        is Outcome.PASSED


def test_one_flipped_byte_of_the_manifest_fails(tmp_path: Path, make_signer: Callable[[str], Signer]) -> None:
    provider = make_signer("provider")
    export = write_export(tmp_path / "export")
    manifest = export / "SHA256SUMS"
    provider.sign(manifest)
    signature = (export / ("SHA256SUMS" + provider.suffix)).read_bytes()
    data = manifest.read_bytes()
    verify = verify_minisign_signature if provider.type == "minisign" else verify_openpgp_signature
    assert verify(data, signature, [str(provider.pub)])[0]
    for pos in range(0, len(data), max(1, len(data) // 12)):  # a dozen positions over the whole manifest
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        ok, message = verify(bytes(flipped), signature, [str(provider.pub)])
        assert not ok, f"byte {pos} flipped and the signature still verified"
    # through the runner: one hex digit of the first digest flipped (the manifest still parses)
    manifest.write_bytes(bytes([data[0] ^ 0x01]) + data[1:])
    result = run(tmp_path, export, provider)
    assert result.outcome is Outcome.FAILED
    assert ("manifest_signature_invalid", "SHA256SUMS", "error") in kinds(result)


def test_signature_config_is_checked() -> None:
    from reversib.config import SignatureConfig

    with pytest.raises(ValueError, match="needs public_key_files"):
        SignatureConfig.model_validate({"type": "minisign"})
    with pytest.raises(ValueError, match="needs allowed_signers_file and identity"):
        SignatureConfig.model_validate({"public_key_files": ["k.pub"]})
    assert SignatureConfig.model_validate({"type": "openpgp", "public_key_files": ["k.asc"]}).sig_suffix == ".sig"
    assert SignatureConfig.model_validate({"type": "minisign", "public_key_files": ["k"]}).sig_suffix == ".minisig"
