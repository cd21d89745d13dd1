"""Archives on a local export: plain and encrypted pass; break one thing, expect exactly one finding."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from reversib.config import ConfigError, DefaultsConfig, load_check
from reversib.model import Outcome, Tier
from tests.archives.conftest import (
    FILES,
    age_encrypt,
    archive_check,
    gpg_encrypt,
    kinds,
    make_tar,
    make_tree,
    make_zip,
    need,
    run,
)
from tests.helpers import flip_byte


def _drop(tmp_path: Path) -> Path:
    d = tmp_path / "drop"
    d.mkdir(exist_ok=True)
    return d


@pytest.mark.parametrize("compression", ["none", "gz", "zst", "xz", "bz2"])
def test_a_good_tar_passes(tmp_path: Path, compression: str) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    make_tar(tree, drop / f"acme.tar.{compression}")
    result = run(archive_check(drop, {"path": "acme.tar.*"}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.tiers == {Tier.DOWNLOADED.value: len(FILES)}
    assert result.bytes_verified == sum(len(v) for v in FILES.values())


def test_a_good_zip_passes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    make_zip(tree, drop / "acme.zip")
    result = run(archive_check(drop, {"path": "acme.zip"}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.tiers == {"downloaded": len(FILES)}


def test_an_age_encrypted_tar_zst_passes_and_the_outer_digest_is_checked_in_one_read(
        tmp_path: Path, age_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    plain = make_tar(tree, tmp_path / "acme.tar.zst")
    enc = age_encrypt(plain, age_keys["customer"]["recipient"], drop / "acme-2026-11-28.tar.zst.age")
    (drop / "SHA256SUMS").write_text(f"{hashlib.sha256(enc.read_bytes()).hexdigest()}  {enc.name}\n")
    check = archive_check(drop, {"path": "acme-*.tar.zst.age",
                                 "decrypt": {"identity_file": str(age_keys["customer"]["identity"])}},
                          manifest={"path": "SHA256SUMS"})
    result = run(check, tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.files_verified == len(FILES) + 1  # every member, and the archive file itself

    # the outer digest is wrong: exactly one finding, on the archive file; the members still verify
    (drop / "SHA256SUMS").write_text(f"{'0' * 64}  {enc.name}\n")
    result = run(check, tmp_path)
    assert kinds(result) == [("digest_mismatch", enc.name)]


def test_the_archive_file_is_read_once(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    from reversib.archives.check import verify_archive
    from reversib.archives.options import ArchiveConfig
    from reversib.manifests import load_manifest
    from reversib.sources.local import LocalSource
    from reversib.verify import VerifyOptions

    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    enc = age_encrypt(make_tar(tree, tmp_path / "a.tar.zst"), age_keys["customer"]["recipient"], drop / "a.age")
    (drop / "SHA256SUMS").write_text(f"{hashlib.sha256(enc.read_bytes()).hexdigest()}  a.age\n")
    export = LocalSource(str(drop))
    outer = load_manifest(export, "SHA256SUMS")
    cfg = ArchiveConfig(path="a.age", decrypt={"identity_file": str(age_keys["customer"]["identity"])})
    verdict = verify_archive(cfg, export, "a.age", outer, VerifyOptions(own_paths=frozenset({"SHA256SUMS"})))
    assert verdict.reads == 1
    assert verdict.archive.compressed_bytes == enc.stat().st_size  # every byte read once, no more
    assert not verdict.report.findings


def test_a_gpg_encrypted_archive_passes(tmp_path: Path, gpg_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    gpg_encrypt(make_tar(tree, tmp_path / "acme.tar.gz", "gz"), gpg_keys, "customer", drop / "acme.tar.gz.gpg")
    check = archive_check(drop, {"path": "acme.tar.gz.gpg",
                                 "decrypt": {"identity_file": str(gpg_keys["customer"]["secret"])}})
    result = run(check, tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings


# -- the corruption matrix, inside the archive -------------------------------------------------------
def _matrix_case(tree: Path, case: str) -> str:
    if case == "missing":
        (tree / "crm/deals.json").unlink()
        return "crm/deals.json"
    if case == "unexpected":
        (tree / "crm/extra.txt").write_bytes(b"not listed\n")
        return "crm/extra.txt"
    if case == "size_mismatch":
        (tree / "crm/deals.json").write_bytes(b"{}\n")
        return "crm/deals.json"
    if case == "digest_mismatch":  # same length, one flipped bit
        flip_byte(tree / "mail/2026/inbox.mbox", 100)
        return "mail/2026/inbox.mbox"
    if case == "appended":
        with open(tree / "crm/contacts.csv", "ab") as f:
            f.write(b"x")
        return "crm/contacts.csv"
    if case == "truncated":
        os.truncate(tree / "docs/contrat signé.pdf", 100)
        return "docs/contrat signé.pdf"
    if case == "name_normalization":
        src = tree / "docs/contrat signé.pdf"
        src.rename(src.with_name(unicodedata.normalize("NFD", src.name)))
        return "docs/contrat signé.pdf"
    raise AssertionError(case)


MATRIX = {"missing": "missing", "unexpected": "unexpected", "size_mismatch": "size_mismatch",
          "digest_mismatch": "digest_mismatch", "appended": "size_mismatch", "truncated": "size_mismatch",
          "name_normalization": "name_normalization"}


@pytest.mark.parametrize("case", list(MATRIX))
@pytest.mark.parametrize("container", ["tar.zst.age", "zip"])
def test_corruption_matrix_inside_the_archive(tmp_path: Path, age_keys: dict[str, Any], case: str,
                                              container: str) -> None:
    from reversib.manifests.create import create_manifest

    tree = make_tree(tmp_path, manifest=False)  # reversib's JSON manifest: sizes and digests
    create_manifest(tree, "json", tmp_path / "m.json")
    (tmp_path / "m.json").rename(tree / "reversib-manifest.json")
    path = _matrix_case(tree, case)
    drop = _drop(tmp_path)
    decrypt: dict[str, Any] = {}
    if container == "zip":
        make_zip(tree, drop / "x.zip")
        name = "x.zip"
    else:
        name = "x.tar.zst.age"
        age_encrypt(make_tar(tree, tmp_path / "x.tar.zst"), age_keys["customer"]["recipient"], drop / name)
        decrypt = {"identity_file": str(age_keys["customer"]["identity"])}
    result = run(archive_check(drop, {"path": name, "decrypt": decrypt}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [(MATRIX[case], f"{name}!/{path}")]


# -- the layers under the archive ------------------------------------------------------------------------
def test_a_truncated_archive_is_archive_corrupt(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    arc = make_tar(tree, drop / "t.tar.zst")
    data = arc.read_bytes()
    arc.write_bytes(data[: len(data) // 2])
    result = run(archive_check(drop, {"path": "t.tar.zst"}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert [k for k, _ in kinds(result)] == ["archive_corrupt"]


def test_a_flipped_byte_in_the_ciphertext_is_ciphertext_corrupt(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    enc = age_encrypt(make_tar(tree, tmp_path / "c.tar.zst"), age_keys["customer"]["recipient"], drop / "c.age")
    flip_byte(enc, enc.stat().st_size // 2)
    result = run(archive_check(drop, {"path": "c.age",
                                      "decrypt": {"identity_file": str(age_keys["customer"]["identity"])}}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("ciphertext_corrupt", "c.age")]


def test_a_flipped_byte_in_gpg_ciphertext_is_ciphertext_corrupt(tmp_path: Path, gpg_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    enc = gpg_encrypt(make_tar(tree, tmp_path / "c.tar", "none"), gpg_keys, "customer", drop / "c.tar.gpg")
    flip_byte(enc, enc.stat().st_size - 200)
    result = run(archive_check(drop, {"path": "c.tar.gpg",
                                      "decrypt": {"identity_file": str(gpg_keys["customer"]["secret"])}}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("ciphertext_corrupt", "c.tar.gpg")]


def test_the_wrong_age_key_is_decrypt_failed(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "w.tar.zst"), age_keys["other"]["recipient"], drop / "w.age")
    result = run(archive_check(drop, {"path": "w.age",
                                      "decrypt": {"identity_file": str(age_keys["customer"]["identity"])}}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("decrypt_failed", "w.age")]


def test_an_archive_encrypted_to_someone_else_names_the_key(tmp_path: Path, gpg_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    gpg_encrypt(make_tar(tree, tmp_path / "o.tar.zst"), gpg_keys, "other", drop / "o.gpg")
    result = run(archive_check(drop, {"path": "o.gpg",
                                      "decrypt": {"identity_file": str(gpg_keys["customer"]["secret"])}}), tmp_path)
    assert kinds(result) == [("decrypt_failed", "o.gpg")]
    [finding] = [f for f in result.findings if f.kind.value == "decrypt_failed"]
    assert "encrypted to OpenPGP key" in finding.actual


def test_a_missing_key_file_is_could_not_verify_not_a_failure(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "k.tar.zst"), age_keys["customer"]["recipient"], drop / "k.age")
    result = run(archive_check(drop, {"path": "k.age", "decrypt": {"identity_file": str(tmp_path / "nope.key")}}),
                 tmp_path)
    assert result.outcome is Outcome.ERROR
    assert "nope.key" in (result.error or "")


# -- hostile archives ------------------------------------------------------------------------------------------
def _tar_with(members: list[tarfile.TarInfo], data: dict[str, bytes], out: Path,
              fmt: int = tarfile.DEFAULT_FORMAT) -> Path:
    with tarfile.open(out, "w", format=fmt) as tar:
        for ti in members:
            payload = data.get(ti.name)
            if payload is not None:
                ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    return ti


def _listed(data: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in sorted(data.items())).encode()


@pytest.mark.parametrize(("member", "path"), [
    (_member("../x"), "../x"),
    (_member("/etc/x"), "/etc/x"),
    (_member("root", tarfile.SYMTYPE, "/"), "root"),
    (_member("up", tarfile.SYMTYPE, "../../etc/passwd"), "up"),
    (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard"),
    (_member("dev", tarfile.CHRTYPE), "dev"),
])
def test_hostile_members_are_findings_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             member: tarfile.TarInfo, path: str) -> None:
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    drop = _drop(tmp_path)
    good = {"ok.txt": b"fine\n"}
    data = {**good, "SHA256SUMS": _listed(good)}
    if member.isreg():
        data[member.name] = b"evil\n"
    members = [_member("SHA256SUMS"), _member("ok.txt"), member]
    _tar_with(members, data, drop / "h.tar")
    before = {p for p in tmp_path.rglob("*")}
    result = run(archive_check(drop, {"path": "h.tar"}), tmp_path)
    assert kinds(result) == [("unsafe_path", f"h.tar!/{path}")]
    created = {p for p in tmp_path.rglob("*")} - before
    assert {p.name for p in created} <= {"history.db", "history.db-journal", "history.db-wal", "history.db-shm"}
    assert not (tmp_path / "work" / "x").exists()


def test_a_member_twice_is_duplicate_entry(tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    good = {"a.txt": b"second\n"}
    members = [_member("SHA256SUMS"), _member("a.txt"), _member("a.txt")]
    with tarfile.open(drop / "d.tar", "w") as tar:
        for ti, payload in zip(members, [_listed(good), b"first\n", b"second\n"], strict=True):
            ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload))
    result = run(archive_check(drop, {"path": "d.tar"}), tmp_path)
    assert kinds(result) == [("duplicate_entry", "d.tar!/a.txt")]


def test_a_zip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    need("zip")
    src = tmp_path / "bomb"
    src.mkdir()
    with open(src / "zeros.bin", "wb") as f:
        f.truncate(200 << 20)  # 200 MiB of zeros: about 200 KiB deflated
    drop = _drop(tmp_path)
    make_zip(src, drop / "bomb.zip")
    assert (drop / "bomb.zip").stat().st_size < 1 << 20
    result = run(archive_check(drop, {"path": "bomb.zip", "limits": {"max_ratio": 100}}), tmp_path)
    assert kinds(result) == [("archive_limit", "bomb.zip")]


def test_a_tar_bomb_stops_at_the_total_size_limit(tmp_path: Path) -> None:
    src = tmp_path / "bomb"
    src.mkdir()
    with open(src / "zeros.bin", "wb") as f:
        f.truncate(50 << 20)
    drop = _drop(tmp_path)
    make_tar(src, drop / "bomb.tar.gz", "gz")
    result = run(archive_check(drop, {"path": "bomb.tar.gz", "limits": {"max_total_size": "10MiB"}}), tmp_path)
    assert kinds(result) == [("archive_limit", "bomb.tar.gz")]


# -- configuration ----------------------------------------------------------------------------------------------
def test_archive_configuration_errors_are_precise(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nsource: {url: /data}\narchive:\n  path: a.tar\n  format: rar\n"
                   "  decrypt: {identity_file: k, gnupg_home: /g}\n")
    errors: list[str] = []
    assert load_check(bad, DefaultsConfig(), errors) is None
    text = "\n".join(errors)
    assert "unknown archive format 'rar'" in text
    assert "give one of identity_file, identity_env, gnupg_home" in text
    with pytest.raises(ConfigError):
        raise ConfigError(errors)


def test_a_key_file_is_relative_to_the_check_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("version: 1\nname: x\nsource: {url: ./drop}\n"
                 "archive: {path: a.age, decrypt: {identity_file: k.txt}}\n")
    check = load_check(f, DefaultsConfig(), [])
    assert check is not None and check.archive is not None
    assert check.archive.decrypt.identity_file == str(tmp_path / "k.txt")


def test_the_age_identity_may_come_from_the_environment(tmp_path: Path, age_keys: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "e.tar.zst"), age_keys["customer"]["recipient"], drop / "e.age")
    monkeypatch.setenv("ACME_AGE_KEY", age_keys["customer"]["identity"].read_text())
    result = run(archive_check(drop, {"path": "e.age", "decrypt": {"identity_env": "ACME_AGE_KEY"}}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert os.environ["ACME_AGE_KEY"] not in repr(result.findings)


def test_a_single_top_level_folder_is_the_archive_root(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    with tarfile.open(drop / "r.tgz", "w:gz") as tar:
        tar.add(tree, arcname="export-2026-11-28")
    result = run(archive_check(drop, {"path": "r.tgz"}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings



def test_check_config_connect_finds_the_archive_and_its_key(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    import datetime as dt

    from reversib.archives.check import preflight
    from reversib.archives.options import ArchiveConfig
    from reversib.sources.local import LocalSource

    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "p.tar.zst"), age_keys["customer"]["recipient"], drop / "p-2026-11-28.age")
    export = LocalSource(str(drop))
    now = dt.datetime(2026, 11, 28, 9, tzinfo=dt.timezone.utc).timestamp()
    key = str(age_keys["customer"]["identity"])
    ok = ArchiveConfig(path="p-%Y-%m-%d.age", decrypt={"identity_file": key})
    assert preflight(ok, export, dt.timezone.utc, now) is None
    assert "no archive matching" in (preflight(ok, export, dt.timezone.utc, now - 86400) or "")  # not yet
    nokey = ArchiveConfig(path="p-*.age")
    assert "set archive.decrypt.identity_file" in (preflight(nokey, export, dt.timezone.utc, now) or "")
    gone = ArchiveConfig(path="p-*.age", decrypt={"identity_file": str(tmp_path / "gone.key")})
    assert "gone.key" in (preflight(gone, export, dt.timezone.utc, now) or "")


def test_a_cancelled_run_is_interrupted_and_leaves_no_process(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    from reversib.history import History
    from reversib.model import RunState
    from reversib.runner import run_check
    from reversib.sources.base import CancelToken

    tree = make_tree(tmp_path, {f"f{i}.bin": os.urandom(2 << 20) for i in range(8)})
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "c.tar.zst"), age_keys["customer"]["recipient"], drop / "c.age")
    cancel = CancelToken()

    class Progress:
        seen = 0

        def start(self, check: str, total_bytes: int | None, total_files: int) -> None: ...

        def advance(self, nbytes: int, nfiles: int) -> None:
            self.seen += nbytes
            if self.seen > 4 << 20:
                cancel.cancel("SIGTERM")

        def close(self) -> None: ...

    check = archive_check(drop, {"path": "c.age", "decrypt": {"identity_file": str(age_keys["customer"]["identity"])}})
    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        result = run_check(check, history, cancel=cancel, progress=Progress())
    assert result.state is RunState.INTERRUPTED and result.outcome is Outcome.ERROR
    assert "age" not in _children()


def _children() -> list[str]:
    """Names of this process's child processes (from /proc)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1: text.rindex(")")], text[text.rindex(")") + 2:].split()
        if int(rest[1]) == os.getpid():
            names.append(name)
    return names


def test_a_truncated_encrypted_archive_is_ciphertext_corrupt(tmp_path: Path, age_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    enc = age_encrypt(make_tar(tree, tmp_path / "t.tar.zst"), age_keys["customer"]["recipient"], drop / "t.age")
    os.truncate(enc, enc.stat().st_size - 1000)
    result = run(archive_check(drop, {"path": "t.age",
                                      "decrypt": {"identity_file": str(age_keys["customer"]["identity"])}}), tmp_path)
    assert kinds(result) == [("ciphertext_corrupt", "t.age")]


def test_a_flipped_byte_in_the_zstd_stream_is_archive_corrupt(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    arc = make_tar(tree, drop / "z.tar.zst")
    flip_byte(arc, arc.stat().st_size // 2)
    result = run(archive_check(drop, {"path": "z.tar.zst"}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert [k for k, _ in kinds(result)] == ["archive_corrupt"]


def test_a_passphrase_encrypted_gpg_archive_opens_with_the_passphrase(tmp_path: Path,
                                                                     gpg_keys: dict[str, Any]) -> None:
    from tests.archives.conftest import sh

    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    plain = make_tar(tree, tmp_path / "s.tar.gz", "gz")
    (tmp_path / "pass.txt").write_text("correct horse\n")
    sh("gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase-file", tmp_path / "pass.txt",
       "-o", drop / "s.tar.gz.gpg", "--symmetric", plain, env=gpg_keys["env"])
    ok = archive_check(drop, {"path": "s.tar.gz.gpg", "decrypt": {"passphrase_file": str(tmp_path / "pass.txt")}})
    result = run(ok, tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    (tmp_path / "wrong.txt").write_text("Tr0ub4dor&3\n")
    bad = archive_check(drop, {"path": "s.tar.gz.gpg", "decrypt": {"passphrase_file": str(tmp_path / "wrong.txt")}})
    result = run(bad, tmp_path)
    assert result.outcome is Outcome.ERROR and "passphrase" in (result.error or "")
    assert "Tr0ub4dor" not in (result.error or "") + repr(result.findings)


@pytest.mark.parametrize(("first", "reads"), [(True, 1), (False, 2)])
def test_a_sha512_manifest_is_read_once_when_it_comes_first(tmp_path: Path, first: bool, reads: int) -> None:
    from reversib.archives.check import verify_archive
    from reversib.archives.options import ArchiveConfig
    from reversib.sources.local import LocalSource
    from reversib.verify import VerifyOptions
    from tests.archives.conftest import sh
    from tests.helpers import run_tool

    tree = make_tree(tmp_path, manifest=False)
    run_tool(["sha512sum"], tree, "SHA512SUMS")
    drop = _drop(tmp_path)
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and p.name != "SHA512SUMS")
    order = ["SHA512SUMS", *names] if first else [*names, "SHA512SUMS"]
    sh("tar", "-C", tree, "-cf", drop / "m.tar", "--", *order)
    verdict = verify_archive(ArchiveConfig(path="m.tar"), LocalSource(str(drop)), "m.tar", None, VerifyOptions())
    assert verdict.reads == reads
    assert not verdict.report.findings
    assert verdict.report.files_verified == len(names)


def test_todays_archive_is_due_by_the_deadline(tmp_path: Path) -> None:
    import datetime as dt

    from reversib.history import History
    from reversib.runner import run_check

    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    make_tar(tree, drop / "acme-2026-11-27.tar.gz", "gz")  # yesterday's only
    check = archive_check(drop, {"path": "acme-%Y-%m-%d.tar.gz"}, expect={"deadline": "06:00"},
                          timezone="Europe/Paris")

    def at(hour: int) -> float:
        return dt.datetime(2026, 11, 28, hour, tzinfo=dt.timezone.utc).timestamp()

    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        early = run_check(check, history, clock=lambda: at(4))
        late = run_check(check, history, clock=lambda: at(6))
        make_tar(tree, drop / "acme-2026-11-28.tar.gz", "gz")
        delivered = run_check(check, history, clock=lambda: at(7))
    assert early.outcome is Outcome.PASSED, early.findings  # before 06:00 Paris, yesterday's is the one due
    assert late.outcome is Outcome.FAILED and kinds(late) == [("missing", "acme-2026-11-28.tar.gz")]
    assert late.files_verified == len(FILES)  # yesterday's, the newest there, is still verified
    assert delivered.outcome is Outcome.PASSED, delivered.findings


def test_the_archive_is_looked_for_in_the_selected_generation(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    for day in ("2026-11-26", "2026-11-27"):
        (drop / day).mkdir()
        make_tar(tree, drop / day / "export.tar.zst")
    flip_byte(drop / "2026-11-26" / "export.tar.zst", 200)  # an old, broken generation is not judged
    check = archive_check(drop, {"path": "export.tar.zst"}, generation={"pattern": "%Y-%m-%d"})
    result = run(check, tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.generation == "2026-11-27"


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_long_names_and_sparse_members_are_read_in_every_tar_format(tmp_path: Path, fmt: str) -> None:
    from tests.archives.conftest import sh

    long_dir = "/".join(["a-rather-long-folder-name-été"] * 4)
    files = {f"{long_dir}/file.txt": b"deep\n"} if fmt != "ustar" else {"short/file.txt": b"deep\n"}
    tree = make_tree(tmp_path, {**files, "small.txt": b"x\n"}, manifest=False)
    with open(tree / "sparse.bin", "wb") as f:  # holes tar stores as a sparse member (-S)
        f.seek(5 << 20)
        f.write(b"end")
    from tests.helpers import run_tool

    run_tool(["sha256sum"], tree, "SHA256SUMS")
    drop = _drop(tmp_path)
    sparse = ["-S"] if fmt != "ustar" else []  # ustar has no sparse members: the holes are stored as zeros
    sh("tar", "-C", tree, f"--format={fmt}", *sparse, "--sort=name", "-cf", drop / "l.tar", ".")
    result = run(archive_check(drop, {"path": "l.tar"}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.files_verified == len(files) + 2


# -- header bombs: bytes of headers count, and a header's size is bounded -------------------------------------
def _header_bomb(out: Path, kind: str, size: int, copies: int = 1) -> Path:
    import gzip

    good = {"ok.txt": b"fine\n"}
    if kind == "pax":  # the members after the headers are listed: only the limit is a finding
        good.update({f"x{i}": b"" for i in range(copies)})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT if kind == "gnu" else tarfile.PAX_FORMAT) as t:
        for name, payload in [("SHA256SUMS", _listed(good)), ("ok.txt", b"fine\n")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            t.addfile(ti, io.BytesIO(payload))
        for i in range(copies):
            if kind == "gnu":
                ti = tarfile.TarInfo(f"{i}" + "a" * size)  # one GNU long-name header of `size` bytes
            else:
                ti = tarfile.TarInfo(f"x{i}")
                ti.pax_headers = {"comment": "a" * size}
            t.addfile(ti, io.BytesIO(b""))
    out.write_bytes(gzip.compress(buf.getvalue(), 9))
    return out


@pytest.mark.parametrize("kind", ["gnu", "pax"])
def test_a_huge_tar_header_is_archive_limit_and_its_name_is_not_stored(tmp_path: Path, kind: str) -> None:
    drop = _drop(tmp_path)
    _header_bomb(drop / "b.tar.gz", kind, 8 << 20)
    result = run(archive_check(drop, {"path": "b.tar.gz", "limits": {"max_total_size": "10MiB", "max_ratio": 10}}),
                 tmp_path)
    assert kinds(result) == [("archive_limit", "b.tar.gz")]
    assert all(len(f.path or "") < 1000 and len(f.actual) < 1000 for f in result.findings)
    assert (tmp_path / "history.db").stat().st_size < 1 << 20


def test_global_pax_records_are_bounded_for_the_whole_archive(tmp_path: Path) -> None:
    """Global PAX records (`g` headers) stay in tarfile until the end of the archive and are copied into
    every member: many of them, each under the per-member header cap, are still archive_limit."""
    import gzip

    def global_header(i: int) -> bytes:
        return tarfile.TarInfo(f"g{i}")._create_pax_generic_header(  # type: ignore[attr-defined]
            {f"k{i}.{j}": "v" * 1000 for j in range(20)}, tarfile.XGLTYPE, "utf-8")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(8):  # 8 x ~20 KB of distinct global keys: 160 KB piled up, each header small
            t.fileobj.write(global_header(i))  # type: ignore[union-attr]
            t.offset += len(global_header(i))  # type: ignore[attr-defined]
            ti = tarfile.TarInfo(f"f{i}.txt")
            t.addfile(ti, io.BytesIO(b""))
    drop = _drop(tmp_path)
    (drop / "g.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    result = run(archive_check(drop, {"path": "g.tar.gz"}), tmp_path)
    assert ("archive_limit", "g.tar.gz") in kinds(result)
    [finding] = [f for f in result.findings if f.kind.value == "archive_limit"]
    assert "global PAX records" in finding.expected


def test_a_very_long_member_name_is_unsafe_path_and_cut_in_the_finding(tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    _header_bomb(drop / "n.tar.gz", "gnu", 200_000)
    result = run(archive_check(drop, {"path": "n.tar.gz"}), tmp_path)
    [finding] = [f for f in result.findings if f.severity.value != "info"]
    assert finding.kind.value == "unsafe_path" and len(finding.path or "") < 400


def test_header_bytes_count_toward_the_ratio_limit(tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    _header_bomb(drop / "h.tar.gz", "pax", 3 << 20, copies=30)  # 90 MiB of PAX headers, no member data
    assert (drop / "h.tar.gz").stat().st_size < 2 << 20
    result = run(archive_check(drop, {"path": "h.tar.gz", "limits": {"max_ratio": 10}}), tmp_path)
    assert kinds(result) == [("archive_limit", "h.tar.gz")]
    [finding] = [f for f in result.findings if f.kind.value == "archive_limit"]
    assert "max_ratio" in finding.expected


def test_the_member_count_limit_applies_to_a_tar(tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    good = {f"e{i}.txt": b"" for i in range(20)}
    _tar_with([_member("SHA256SUMS"), *(_member(n) for n in good)], {**good, "SHA256SUMS": _listed(good)},
              drop / "m.tar")
    result = run(archive_check(drop, {"path": "m.tar", "limits": {"max_members": 5}}), tmp_path)
    assert kinds(result) == [("archive_limit", "m.tar")]
    (tmp_path / "ok").mkdir()
    assert run(archive_check(drop, {"path": "m.tar"}), tmp_path / "ok").outcome is Outcome.PASSED


# -- the customer's key never stays behind ----------------------------------------------------------------------
def _gpg_leftovers(tmp: Path) -> list[str]:
    """GnuPG homes of reversib under `tmp`, and processes (gpg-agent...) started for one."""
    left = [str(p) for p in tmp.glob("reversib-gpg-*")]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "reversib-gpg-" in text and str(tmp) in text:
            left.append(text)
    return left


@pytest.mark.parametrize("case", ["passphrase_env_unset", "public_key_only", "passphrase_file_unreadable"])
def test_every_key_problem_removes_the_gnupg_home_and_its_agent(tmp_path: Path, gpg_keys: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               request: pytest.FixtureRequest, case: str) -> None:
    import shutil
    import tempfile

    from tests.archives.conftest import sh

    # where the throwaway home is made: a short path, for gpg-agent's socket in it (at most 107 bytes)
    scratch = Path(tempfile.mkdtemp(prefix="rvk-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    gpg_encrypt(make_tar(tree, tmp_path / "k.tar.gz", "gz"), gpg_keys, "customer", drop / "k.gpg")
    decrypt: dict[str, Any] = {"identity_file": str(gpg_keys["customer"]["secret"])}
    why = {"passphrase_env_unset": "REVERSIB_TEST_NO_SUCH_VAR", "public_key_only": "public key only",
           "passphrase_file_unreadable": "no-such-passphrase.txt"}[case]
    if case == "passphrase_env_unset":
        monkeypatch.delenv("REVERSIB_TEST_NO_SUCH_VAR", raising=False)
        decrypt["passphrase_env"] = "REVERSIB_TEST_NO_SUCH_VAR"
    elif case == "public_key_only":
        pub = tmp_path / "pub.asc"
        pub.write_bytes(sh("gpg", "--batch", "--armor", "--export", gpg_keys["customer"]["fingerprint"],
                           env=gpg_keys["env"]))
        decrypt["identity_file"] = str(pub)
    else:
        decrypt["passphrase_file"] = str(tmp_path / "no-such-passphrase.txt")
    result = run(archive_check(drop, {"path": "k.gpg", "decrypt": decrypt}), tmp_path)
    assert result.outcome is Outcome.ERROR, result.findings
    assert why in (result.error or "")
    assert _gpg_leftovers(scratch) == []


# -- detection ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["auto", "tar"])
@pytest.mark.parametrize("first", ["Été.csv", "Ça va.txt"])
def test_a_plain_tar_whose_first_name_starts_with_a_latin_letter_is_not_taken_for_openpgp(
        tmp_path: Path, fmt: str, first: str) -> None:
    from reversib.archives.check import preflight
    from reversib.archives.detect import encryption_of
    from reversib.archives.options import ArchiveConfig
    from reversib.sources.local import LocalSource

    drop = _drop(tmp_path)
    good = {first: b"a;b\n1;2\n"}
    _tar_with([_member(first), _member("SHA256SUMS")], {**good, "SHA256SUMS": _listed(good)}, drop / "e.tar",
              tarfile.GNU_FORMAT)  # the UTF-8 name in the first header (PAX would put a PaxHeader first)
    head = (drop / "e.tar").read_bytes()[:512]
    assert head[0] == 0xC3  # a UTF-8 lead byte: the header of an OpenPGP packet of tag 3 (symmetric-key session key)
    assert encryption_of(head) == "none"
    result = run(archive_check(drop, {"path": "e.tar", "format": fmt}), tmp_path)
    assert result.outcome is Outcome.PASSED, (result.error, result.findings)
    import datetime as dt
    assert preflight(ArchiveConfig(path="e.tar", format=fmt), LocalSource(str(drop)), dt.timezone.utc) is None


def test_openpgp_messages_are_still_recognized(tmp_path: Path, gpg_keys: dict[str, Any]) -> None:
    from reversib.archives.detect import encryption_of
    from tests.archives.conftest import sh

    plain = tmp_path / "p.txt"
    plain.write_bytes(b"hello\n" * 100)
    to_key = gpg_encrypt(plain, gpg_keys, "customer", tmp_path / "p.gpg")
    (tmp_path / "pass.txt").write_text("pw\n")
    symmetric = tmp_path / "p.sym.gpg"
    sh("gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase-file", tmp_path / "pass.txt",
       "-o", symmetric, "--symmetric", plain, env=gpg_keys["env"])
    assert encryption_of(to_key.read_bytes()[:512]) == "gpg"
    assert encryption_of(symmetric.read_bytes()[:512]) == "gpg"
    assert encryption_of(b"\xc3\x89t\xc3\xa9.csv") == "none"  # a name, not a packet: version byte 't'


@pytest.mark.parametrize("case", ["wrong", "missing", "right"])
def test_the_passphrase_of_the_customers_own_gpg_key_is_could_not_verify(tmp_path: Path, gpg_keys: dict[str, Any],
                                                                          case: str) -> None:
    from tests.archives.conftest import GPG_PASSPHRASE

    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    gpg_encrypt(make_tar(tree, tmp_path / "p.tar.gz", "gz"), gpg_keys, "protected", drop / "p.gpg")
    decrypt: dict[str, Any] = {"identity_file": str(gpg_keys["protected"]["secret"])}
    if case != "missing":
        (tmp_path / "pass.txt").write_text(f"{'Tr0ub4dor&3' if case == 'wrong' else GPG_PASSPHRASE}\n")
        decrypt["passphrase_file"] = str(tmp_path / "pass.txt")
    result = run(archive_check(drop, {"path": "p.gpg", "decrypt": decrypt}), tmp_path)
    if case == "right":
        assert result.outcome is Outcome.PASSED, (result.error, result.findings)
        return
    assert result.outcome is Outcome.ERROR, (result.error, result.findings)  # could not verify, not the provider's
    assert [k for k, _ in kinds(result)] == ["source_error"]  # no decrypt_failed, no ciphertext_corrupt
    error = result.error or ""
    assert ("is wrong" if case == "wrong" else "no passphrase is configured") in error, error
    assert "Tr0ub4dor" not in error and GPG_PASSPHRASE not in error


def test_a_flipped_byte_inside_a_gpg_members_ciphertext_reports_only_ciphertext_corrupt(
        tmp_path: Path, gpg_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path, {"big.bin": os.urandom(3 << 20)})
    drop = _drop(tmp_path)
    enc = gpg_encrypt(make_tar(tree, tmp_path / "m.tar", "none"), gpg_keys, "customer", drop / "m.gpg")
    flip_byte(enc, enc.stat().st_size // 2)  # in the middle of big.bin's data: gpg outputs it before its MDC fails
    result = run(archive_check(drop, {"path": "m.gpg",
                                      "decrypt": {"identity_file": str(gpg_keys["customer"]["secret"])}}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("ciphertext_corrupt", "m.gpg")]  # not also digest_mismatch m.gpg!/big.bin


# -- no prompt on a terminal ---------------------------------------------------------------------------------------
def _in_pty(argv: list[str], answer: bytes | None, timeout: float, cwd: Path | None = None) -> tuple[int | None, bytes]:
    """Run `argv` with a new pseudo-terminal as its controlling terminal; answer each passphrase prompt with
    `answer` (None: never).  (exit code, output), or (None, output) when it was still running after `timeout`."""
    import pty
    import select
    import signal
    import time

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        if cwd is not None:
            os.chdir(cwd)
        os.execvp(argv[0], argv)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                out += chunk
                if answer is not None and b"passphrase" in chunk.lower():
                    os.write(fd, answer + b"\n")
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), out
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None, out
    finally:
        os.close(fd)


def test_a_passphrase_protected_age_identity_is_could_not_verify_and_never_prompts(
        tmp_path: Path, age_keys: dict[str, Any]) -> None:
    import sys

    from tests.archives.conftest import sh

    plain_key = tmp_path / "plain.key"
    sh("age-keygen", "-o", plain_key)
    recipient = next(ln.split(": ", 1)[1] for ln in plain_key.read_text().splitlines() if "public key" in ln)
    protected = tmp_path / "protected.key"
    code, out = _in_pty(["age", "-p", "-o", str(protected), str(plain_key)], b"s3cret pass", 30)
    assert code == 0 and protected.read_bytes().startswith(b"age-encryption.org/v1"), out
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "p.tar.zst"), recipient, drop / "p.age")
    script = (
        "from pathlib import Path\n"
        "from tests.archives.conftest import archive_check, run\n"
        f"r = run(archive_check(Path({str(drop)!r}), {{'path': 'p.age', 'decrypt': "
        f"{{'identity_file': {str(protected)!r}}}}}), Path({str(tmp_path)!r}))\n"
        "print('OUTCOME', r.outcome.value, 'ERROR', r.error)\n")
    # reversib runs with a terminal: age must not prompt on it (the run would wait for ever)
    code, out = _in_pty([sys.executable, "-c", script], None, 60, cwd=Path(__file__).parents[2])
    text = out.decode(errors="replace")
    assert code is not None, f"the run hung on a passphrase prompt: {text[-500:]}"
    assert "OUTCOME error" in text and "protected by a passphrase" in text, text[-2000:]
    assert "Enter passphrase" not in text


def test_age_and_gpg_start_in_a_session_of_their_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess

    from reversib.archives.decrypt import Decryption
    from reversib.archives.options import DecryptOptions

    need("age")
    key = tmp_path / "k"
    key.write_text("AGE-SECRET-KEY-1\n")
    seen: dict[str, Any] = {}
    real = subprocess.Popen

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    d = Decryption("age", DecryptOptions(identity_file=str(key)))
    stdin, _ = d.start()
    stdin.close()
    d.finish()
    assert seen["start_new_session"] is True and seen["stdin"] == subprocess.PIPE


# -- a name twice: the copy verified is the copy handed on -----------------------------------------------------------
@pytest.mark.parametrize("container", ["tar", "zip"])
def test_a_member_read_again_is_the_copy_that_was_verified(tmp_path: Path, container: str) -> None:
    import warnings
    import zipfile

    from reversib.archives.options import ArchiveConfig
    from reversib.archives.source import ArchiveSource
    from reversib.sources.local import LocalSource

    drop = _drop(tmp_path)
    copies = [("crm.dump", b"FIRST copy " * 20), ("other.txt", b"x"), ("crm.dump", b"SECOND copy " * 20)]
    if container == "tar":
        with tarfile.open(drop / "d.tar", "w") as t:
            for name, data in copies:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    else:
        with warnings.catch_warnings(), zipfile.ZipFile(drop / "d.zip", "w") as z:
            warnings.simplefilter("ignore")  # "Duplicate name"
            for name, data in copies:
                z.writestr(name, data)
    name = f"d.{container}"
    archive = ArchiveSource(LocalSource(str(drop)), name, ArchiveConfig(path=name))
    result = archive.scan(("sha256",))
    assert [(f.kind.value, f.path) for f in result.findings] == [("duplicate_entry", "crm.dump")]
    verified = result.entries["crm.dump"].digests["sha256"]
    assert verified == hashlib.sha256(copies[2][1]).hexdigest()  # the last copy, as extraction keeps
    archive.result = dataclasses.replace(result, captured={})  # read it again from the archive, as a dump is
    with archive._open_raw("crm.dump", 0) as f:
        assert f.read() == copies[2][1]


# -- hostile zips ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("member", "data", "mode", "expected"), [
    ("../x", b"evil", None, [("unsafe_path", "h.zip!/../x")]),
    ("/etc/x", b"evil", None, [("unsafe_path", "h.zip!//etc/x")]),
    ("..\\x", b"evil", None, [("unsafe_path", "h.zip!/..\\x")]),
    ("root", b"/", 0o120777, [("unsafe_path", "h.zip!/root")]),
    ("up", b"../../etc/passwd", 0o120777, [("unsafe_path", "h.zip!/up")]),
    ("ff", b"", 0o010644, [("unsafe_path", "h.zip!/ff")]),
    ("ok.txt", b"fine\n", None, [("duplicate_entry", "h.zip!/ok.txt")]),
    ("a:b.txt", b"listed", None, [("unsafe_path", "h.zip!/a:b.txt")]),  # once, though listed in the manifest too
])
def test_hostile_zip_members_are_one_finding_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str,
                                                 data: bytes, mode: int | None,
                                                 expected: list[tuple[str, str]]) -> None:
    import warnings
    import zipfile

    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    drop = _drop(tmp_path)
    good = {"ok.txt": b"fine\n", **({member: data} if member == "a:b.txt" else {})}
    with warnings.catch_warnings(), zipfile.ZipFile(drop / "h.zip", "w") as z:
        warnings.simplefilter("ignore")  # "Duplicate name"
        z.writestr("SHA256SUMS", _listed(good))
        z.writestr("ok.txt", b"fine\n")
        info = zipfile.ZipInfo(member)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        z.writestr(info, data)
    before = set(tmp_path.rglob("*"))
    result = run(archive_check(drop, {"path": "h.zip"}), tmp_path)
    assert kinds(result) == expected
    created = set(tmp_path.rglob("*")) - before
    assert {p.name for p in created} <= {"history.db", "history.db-journal", "history.db-wal", "history.db-shm"}


def test_a_truncated_zip_is_archive_corrupt(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    arc = make_zip(tree, drop / "t.zip")
    os.truncate(arc, arc.stat().st_size // 2)  # the central directory is gone
    result = run(archive_check(drop, {"path": "t.zip"}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("archive_corrupt", "t.zip")]


def test_a_tar_ratio_bomb_stops_at_the_ratio_limit(tmp_path: Path) -> None:
    src = tmp_path / "bomb"
    src.mkdir()
    with open(src / "zeros.bin", "wb") as f:
        f.truncate(100 << 20)  # 100 MiB of zeros: about 100 KiB gzipped
    drop = _drop(tmp_path)
    make_tar(src, drop / "bomb.tar.gz", "gz")
    result = run(archive_check(drop, {"path": "bomb.tar.gz", "limits": {"max_ratio": 100}}), tmp_path)
    assert kinds(result) == [("archive_limit", "bomb.tar.gz")]
    [finding] = [f for f in result.findings if f.kind.value == "archive_limit"]
    assert "max_ratio" in finding.expected


# -- the manifest inside the archive: stale and duplicate entries ------------------------------------------------------
def _small_tgz(tmp_path: Path, sums_extra: bytes = b"", members_mtime: float | None = None) -> Path:
    from tests.archives.conftest import sh

    tree = make_tree(tmp_path, {"a.txt": b"a\n", "b.txt": b"b\n"})
    if sums_extra:
        with open(tree / "SHA256SUMS", "ab") as f:
            f.write(sums_extra)
    if members_mtime is not None:
        for p in [tree, *tree.rglob("*")]:
            os.utime(p, (members_mtime, members_mtime))
    drop = _drop(tmp_path)
    sh("tar", "-C", tree, "-czf", drop / "x.tgz", ".")
    return drop


def test_a_manifest_entry_twice_inside_the_archive_is_duplicate_entry(tmp_path: Path) -> None:
    drop = _small_tgz(tmp_path, f"{'0' * 64}  a.txt\n".encode())
    result = run(archive_check(drop, {"path": "x.tgz"}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert kinds(result) == [("duplicate_entry", "x.tgz!/a.txt")]


def test_stale_members_in_a_fresh_archive_are_stale(tmp_path: Path) -> None:
    drop = _small_tgz(tmp_path, members_mtime=1e9)  # members of 2001, in an archive file written now
    result = run(archive_check(drop, {"path": "x.tgz"}, expect={"max_age": "2d"}), tmp_path)
    assert result.outcome is Outcome.FAILED
    assert [k for k, _ in kinds(result)] == ["stale"]
    (tmp_path / "fresh").mkdir()
    fresh = _small_tgz(tmp_path / "fresh")
    assert run(archive_check(fresh, {"path": "x.tgz"}, expect={"max_age": "2d"}),
               tmp_path / "fresh").outcome is Outcome.PASSED


def test_no_secret_reaches_the_argv_of_age_or_gpg(tmp_path: Path, age_keys: dict[str, Any], gpg_keys: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """age and gpg are run through logging wrappers on PATH: their argv (visible to every local user in
    /proc) never holds the age identity, the OpenPGP secret key or the passphrase; they come by pipe."""
    import shutil

    from tests.archives.conftest import sh

    real = {name: shutil.which(name) for name in ("age", "gpg")}
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    log = tmp_path / "argv.log"
    for name, path in real.items():
        assert path is not None
        script = wrappers / name
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> {log}\nexec {path} "$@"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    tree = make_tree(tmp_path)
    drop = _drop(tmp_path)
    age_encrypt(make_tar(tree, tmp_path / "a.tar.zst"), age_keys["customer"]["recipient"], drop / "a.age")
    identity = age_keys["customer"]["identity"].read_text()
    monkeypatch.setenv("ACME_AGE_KEY", identity)
    result = run(archive_check(drop, {"path": "a.age", "decrypt": {"identity_env": "ACME_AGE_KEY"}}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    plain = make_tar(tree, tmp_path / "s.tar.gz", "gz")
    (tmp_path / "pass.txt").write_text("correct horse battery\n")
    sh(real["gpg"] or "gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase-file",
       tmp_path / "pass.txt", "-o", drop / "s.tar.gz.gpg", "--symmetric", plain, env=gpg_keys["env"])
    result = run(archive_check(drop, {"path": "s.tar.gz.gpg",
                                      "decrypt": {"passphrase_file": str(tmp_path / "pass.txt")}}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    logged = log.read_text()
    assert "/age " in logged and "/gpg " in logged  # both tools really ran through the wrappers
    secret_line = next(line for line in identity.splitlines() if line.startswith("AGE-SECRET-KEY-"))
    assert secret_line not in logged and "AGE-SECRET-KEY" not in logged
    assert "correct horse" not in logged
    assert str(tmp_path / "pass.txt") not in logged  # not even the passphrase file's path: it is read by reversib
