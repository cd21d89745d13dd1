"""End to end over SFTP: `reversib verify-now` against the real sshd, with the check's source.sftp options.

The corruption matrix of the core on SFTP, host-key and authentication failures (each `error`, exit
2, a clear message, no secret anywhere in the output), trust-on-first-use, remote hashing on a
shell account and its graceful fallback on an SFTP-only account.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import findings_of, verify_json
from tests.helpers import flip_byte, make_export, run_tool
from tests.test_corruption_matrix import CASES, FILES, Export

from .conftest import Sshd, _keygen, run_sftp_check

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

MATRIX_FORMATS = ["sha256sum", "json", "bagit"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.ssh keys, agent or known_hosts of the machine running the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def _manifest_check(sshd: Sshd, export: Export, port: int | None = None) -> dict[str, Any]:
    if export.manifest is None:
        return {}
    return {"manifest": {"location": sshd.url(export.manifest, port)}}


def sftp_verify(sshd: Sshd, export: Export, tmp_path: Path, **opts: Any) -> tuple[int, dict[str, Any]]:
    return run_sftp_check(tmp_path, sshd.url(export.root), sshd.options(**opts), **_manifest_check(sshd, export))


@pytest.fixture(params=MATRIX_FORMATS)
def export(request: pytest.FixtureRequest, tmp_path: Path) -> Export:
    return Export(tmp_path, request.param)


def test_untouched_export_passes_over_sftp(sshd: Sshd, export: Export, tmp_path: Path) -> None:
    code, doc = sftp_verify(sshd, export, tmp_path)
    assert (code, doc["outcome"], findings_of(doc)) == (0, "passed", [])
    n = len(FILES) + (4 if export.fmt == "bagit" else 0)
    assert doc["runs"][0]["tiers"] == {"downloaded": n}


@pytest.mark.parametrize("case", list(CASES))
def test_one_fault_one_finding_over_sftp(sshd: Sshd, export: Export, tmp_path: Path, case: str) -> None:
    breaker, with_sizes, without_sizes = CASES[case]
    path = export.rel(breaker(export))
    kind = with_sizes if export.fmt == "json" else without_sizes
    code, doc = sftp_verify(sshd, export, tmp_path)
    assert findings_of(doc) == [(kind, path)], f"{export.fmt}/{case}: {doc['runs'][0]['findings']}"
    assert (code, doc["outcome"]) == (1, "failed")


def test_duplicate_entry_over_sftp(sshd: Sshd, tmp_path: Path) -> None:
    e = Export(tmp_path, "sha256sum")
    lines = e.manifest_file.read_bytes().splitlines(keepends=True)
    e.manifest_file.write_bytes(b"".join(lines) + lines[0])
    code, doc = sftp_verify(sshd, e, tmp_path)
    assert [k for k, _ in findings_of(doc)] == ["duplicate_entry"] and code == 1


HOSTILE_NAMES = {
    "with space/and more spaces.txt": b"spaces\n",
    "line\nbreak.txt": b"a newline in the name\n",
    "\u65e5\u672c\u8a9e/\u00e9t\u00e9 \u2603.csv": b"unicode\n",
    "back\\slash": b"backslash\n",
    "quote'and\"dq $(echo no) `x`;": b"shell metacharacters\n",
}


@pytest.mark.parametrize("remote_hash", [False, True])
def test_names_with_spaces_newlines_unicode(sshd: Sshd, tmp_path: Path, remote_hash: bool) -> None:
    root = make_export(tmp_path / "export", HOSTILE_NAMES)
    manifest = run_tool(["sha256sum"], root, "SHA256SUMS")
    opts: dict[str, Any] = {"remote_hash": remote_hash}
    check: dict[str, Any] = {"manifest": {"path": "SHA256SUMS"}}
    if remote_hash:
        check["fixity"] = {"accept": ["remote_digest"]}
    code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(**opts), **check)
    tier = "remote_digest" if remote_hash else "downloaded"
    assert (code, findings_of(doc), doc["runs"][0]["tiers"]) == (0, [], {tier: len(HOSTILE_NAMES)})
    flip_byte(root / "line\nbreak.txt", 3)
    code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(**opts), **check)
    assert (code, findings_of(doc)) == (1, [("digest_mismatch", "line\nbreak.txt")])
    assert manifest.exists()


# -- host keys and authentication -----------------------------------------------------------------

def _error_run(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str], secret: str | None = None,
               **opts: Any) -> str:
    root = make_export(tmp_path / "export", {"a": b"a"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(**opts), manifest={"path": "SHA256SUMS"})
    assert (code, doc["outcome"]) == (2, "error"), doc
    run = doc["runs"][0]
    assert [f["kind"] for f in run["findings"]] == ["source_error"]
    text = json.dumps(doc) + capsys.readouterr().err
    if secret is not None:
        assert secret not in text
    message: str = run["error"]
    return message


def _fingerprint(pub: str) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", "-"], input=pub, capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_unknown_host_is_an_error_showing_the_fingerprint(sshd: Sshd, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    msg = _error_run(sshd, tmp_path, capsys, known_hosts=str(kh))
    assert "unknown host key" in msg
    assert _fingerprint(sshd.host_key_line) in msg
    assert sshd.known_hosts_line(sshd.port) in msg  # the line to add
    assert "trust_on_first_use" in msg
    assert kh.read_text() == ""  # never added silently


def test_missing_known_hosts_file_is_unknown_host(sshd: Sshd, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    msg = _error_run(sshd, tmp_path, capsys, known_hosts=str(tmp_path / "nope"))
    assert "unknown host key" in msg and not (tmp_path / "nope").exists()


def test_changed_host_key_is_refused(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _keygen(tmp_path / "other_host")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other.split()[:2])}\n")
    msg = _error_run(sshd, tmp_path, capsys, known_hosts=str(kh), trust_on_first_use=True)
    assert "HOST KEY CHANGED" in msg
    assert _fingerprint(sshd.host_key_line) in msg and _fingerprint(other) in msg


def test_known_hosts_markers_and_bad_lines_are_read_as_openssh_reads_them(
        sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`@cert-authority` lines and lines that cannot be read are skipped (an enterprise known_hosts has them);
    a key marked `@revoked` is refused even when also listed plainly."""
    kh = tmp_path / "known_hosts"
    good = sshd.known_hosts_line(sshd.port)
    kh.write_text("@cert-authority *.corp.example ssh-ed25519 AAAAnot-base64\n"
                  "[127.0.0.1]:1 ssh-ed25519 AAAA!!!garbage\n" + good + "\n")
    root = make_export(tmp_path / "export", {"a": b"a"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(known_hosts=str(kh)),
                               manifest={"path": "SHA256SUMS"})
    assert (code, doc["outcome"]) == (0, "passed"), doc
    assert "line 2 cannot be read" in capsys.readouterr().err
    kh.write_text(good + "\n@revoked * " + sshd.host_key_line + "\n")
    msg = _error_run(sshd, tmp_path / "r", capsys, known_hosts=str(kh))
    assert "REVOKED HOST KEY" in msg and _fingerprint(sshd.host_key_line) in msg


def test_wrong_client_key(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _keygen(tmp_path / "stranger")
    msg = _error_run(sshd, tmp_path, capsys, private_key_file=str(tmp_path / "stranger"))
    assert "authentication failed" in msg and "stranger (refused)" in msg


def test_wrong_password_never_shows_the_password(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Tr0ub4dor-not-the-password-8d1f"
    monkeypatch.setenv("REVERSIB_TEST_SFTP_PASSWORD", secret)
    msg = _error_run(sshd, tmp_path, capsys, secret=secret, private_key_file=None,
                     password_env="REVERSIB_TEST_SFTP_PASSWORD")
    assert "authentication failed" in msg and "$REVERSIB_TEST_SFTP_PASSWORD (refused)" in msg


def test_password_file_and_unset_variable(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "file-secret-3a9c"
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    msg = _error_run(sshd, tmp_path, capsys, secret=secret, private_key_file=None, password_file=str(pw))
    assert f"password from {pw} (refused)" in msg
    msg = _error_run(sshd, tmp_path / "x", capsys, private_key_file=None, password_env="REVERSIB_NOT_SET_ANYWHERE")
    assert "REVERSIB_NOT_SET_ANYWHERE is not set" in msg


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_key_types_and_passphrase(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    passphrase = f"pass-{kind}-77e1"
    pub = _keygen(tmp_path / f"k_{kind}", kind, passphrase)
    auth = sshd.dir / "authorized_keys"
    before = auth.read_text()
    auth.write_text(before + pub + "\n")
    try:
        root = make_export(tmp_path / "export", {"a": b"a"})
        run_tool(["sha256sum"], root, "SHA256SUMS")
        monkeypatch.setenv("REVERSIB_TEST_PASSPHRASE", passphrase)
        code, doc = run_sftp_check(tmp_path, sshd.url(root),
                                   sshd.options(private_key_file=str(tmp_path / f"k_{kind}"),
                                                passphrase_env="REVERSIB_TEST_PASSPHRASE"),
                                   manifest={"path": "SHA256SUMS"})
        assert (code, doc["outcome"]) == (0, "passed"), doc
        monkeypatch.setenv("REVERSIB_TEST_PASSPHRASE", "wrong-" + passphrase)
        msg = _error_run(sshd, tmp_path / "w", capsys, secret=passphrase,
                         private_key_file=str(tmp_path / f"k_{kind}"), passphrase_env="REVERSIB_TEST_PASSPHRASE")
        assert "cannot load private key" in msg
        assert "wrong-" + passphrase not in msg
    finally:
        auth.write_text(before)


def test_trust_on_first_use_persists_and_pins(sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kh = tmp_path / "tofu" / "known_hosts"
    root = make_export(tmp_path / "export", {"a": b"a"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    opts = sshd.options(known_hosts=str(kh), trust_on_first_use=True)
    code, doc = run_sftp_check(tmp_path, sshd.url(root), opts, manifest={"path": "SHA256SUMS"})
    assert (code, doc["outcome"]) == (0, "passed")
    assert kh.read_text() == sshd.known_hosts_line(sshd.port) + "\n"
    assert oct(kh.stat().st_mode & 0o777) == "0o600"
    code, doc = run_sftp_check(tmp_path, sshd.url(root), opts, manifest={"path": "SHA256SUMS"})
    assert code == 0 and kh.read_text().count("\n") == 1  # pinned: not appended again
    other = _keygen(tmp_path / "other_host")
    kh.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other.split()[:2])}\n")  # the server "changed"
    msg = _error_run(sshd, tmp_path / "again", capsys, known_hosts=str(kh), trust_on_first_use=True)
    assert "HOST KEY CHANGED" in msg


def test_adhoc_verify_now_uses_home_ssh(sshd: Sshd, tmp_path: Path) -> None:
    """`verify-now --source sftp://...` with no options: ~/.ssh/known_hosts and ~/.ssh/id_ed25519."""
    ssh = Path(os.environ["HOME"]) / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "known_hosts").write_text(sshd.known_hosts.read_text())
    (ssh / "id_ed25519").write_bytes(sshd.client_key.read_bytes())
    os.chmod(ssh / "id_ed25519", 0o600)
    root = make_export(tmp_path / "export", FILES)
    run_tool(["sha256sum"], root, "SHA256SUMS")
    code, doc = verify_json(["--source", sshd.url(root), "--manifest", sshd.url(root / "SHA256SUMS")],
                            tmp_path / "h.db")
    assert (code, doc["outcome"], doc["runs"][0]["files_verified"]) == (0, "passed", len(FILES))


def test_manifest_outside_the_export_over_sftp(sshd: Sshd, tmp_path: Path) -> None:
    root = make_export(tmp_path / "export", FILES)
    sums = run_tool(["sha256sum"], root, "SHA256SUMS")
    elsewhere = tmp_path / "manifests"
    elsewhere.mkdir()
    sums.rename(elsewhere / "SHA256SUMS")
    code, doc = run_sftp_check(tmp_path, sshd.url(root), sshd.options(),
                               manifest={"location": sshd.url(elsewhere / "SHA256SUMS")})
    assert (code, doc["outcome"]) == (0, "passed"), doc


# -- remote hashing and exec streaming ---------------------------------------------------------------

def test_remote_digest_tier_is_recorded(sshd: Sshd, tmp_path: Path) -> None:
    e = Export(tmp_path, "sha256sum")
    check = {"manifest": {"path": "SHA256SUMS"}, "fixity": {"accept": ["remote_digest"]}}
    code, doc = run_sftp_check(tmp_path, sshd.url(e.root), sshd.options(remote_hash=True), **check)
    run = doc["runs"][0]
    assert (code, run["tiers"]) == (0, {"remote_digest": len(FILES)})
    assert run["bytes_verified"] == 0  # nothing downloaded
    flip_byte(e.p("data2/nested/deep.bin"), 7)
    code, doc = run_sftp_check(tmp_path, sshd.url(e.root), sshd.options(remote_hash=True), **check)
    f = doc["runs"][0]["findings"]
    assert code == 1 and [(x["kind"], x["path"]) for x in f] == [("digest_mismatch", "data2/nested/deep.bin")]
    assert "sha256sum on the server" in f[0]["detail"]


def test_remote_digest_not_used_unless_accepted(sshd: Sshd, tmp_path: Path) -> None:
    e = Export(tmp_path, "sha256sum")
    code, doc = run_sftp_check(tmp_path, sshd.url(e.root), sshd.options(remote_hash=True),
                               manifest={"path": "SHA256SUMS"})
    assert (code, doc["runs"][0]["tiers"]) == (0, {"downloaded": len(FILES)})


def test_sftp_only_account_falls_back_to_download(sshd: Sshd, tmp_path: Path) -> None:
    e = Export(tmp_path, "sha256sum")
    check = {"manifest": {"path": "SHA256SUMS"}, "fixity": {"accept": ["remote_digest"]}}
    code, doc = run_sftp_check(tmp_path, sshd.url(e.root, sshd.sftp_only_port),
                               sshd.options(remote_hash=True, exec_stream=True), **check)
    assert (code, doc["runs"][0]["tiers"]) == (0, {"downloaded": len(FILES)}), doc


def test_exec_streaming_on_a_shell_account(sshd: Sshd, tmp_path: Path) -> None:
    e = Export(tmp_path, "json")
    code, doc = run_sftp_check(tmp_path, sshd.url(e.root), sshd.options(exec_stream=True),
                               manifest={"path": e.manifest.name if e.manifest else ""})
    assert (code, doc["runs"][0]["tiers"]) == (0, {"downloaded": len(FILES)}), doc
    flip_byte(e.p("alpha.txt"), 1)
    code, doc = run_sftp_check(tmp_path, sshd.url(e.root), sshd.options(exec_stream=True),
                               manifest={"path": e.manifest.name if e.manifest else ""})
    assert (code, findings_of(doc)) == (1, [("digest_mismatch", "alpha.txt")])
