"""`create_manifest`, checked by the real tools, and `load_manifest` / `find_manifest`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import BinaryIO

import bagit
import pytest

from reversib.manifests import FORMATS, ManifestError, ManifestNotFound, find_manifest, load_manifest
from reversib.manifests.create import create_manifest
from reversib.manifests.sumfile import SUM_FORMATS
from reversib.sources.local import LocalSource
from reversib.verify import verify

FILES = {
    "plain.txt": b"hello\n",
    "sp ace.txt": b"space\n",
    "back\\slash.txt": b"backslash\n",
    "ünïcødé.bin": bytes(range(256)) * 4,
    "sub/dir/deep.txt": b"deep\n",
    "new\nline.txt": b"newline\n",
    "z" * 10 + ".big": b"\x00" * (3 * 1024 * 1024 + 7),
}


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    for name, data in FILES.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_sha256sum_matches_gnu_and_passes_sha256sum_c(export: Path) -> None:
    out = create_manifest(export, "sha256sum")
    assert out == export / "SHA256SUMS"
    names = sorted(FILES)  # code-point order = the order reversib lists in
    gnu = subprocess.run(["sha256sum", "--", *names], cwd=export, capture_output=True, check=True).stdout
    assert out.read_bytes() == gnu
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=export, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert check.stdout.count(": OK") == len(FILES)
    # Never written over by default (it may be the provider's); replaced, it does not list itself.
    with pytest.raises(ValueError, match=r"exists .*--force"):
        create_manifest(export, "sha256sum")
    create_manifest(export, "sha256sum", replace=True)
    assert out.read_bytes() == gnu
    m = load_manifest(LocalSource(export), "SHA256SUMS")
    assert m.format == "sha256sum"
    assert len(m.entries) == len(FILES)
    assert m.findings == []
    assert verify(LocalSource(export), m).findings == []


@pytest.mark.parametrize(("fmt", "tool", "name"), [("b2sum", "b2sum", "B2SUMS"), ("md5sum", "md5sum", "MD5SUMS"),
                                                   ("sha512sum", "sha512sum", "SHA512SUMS")])
def test_other_sum_formats_pass_their_tool(export: Path, fmt: str, tool: str, name: str) -> None:
    out = create_manifest(export, fmt)
    assert out.name == name
    check = subprocess.run([tool, "-c", "--strict", name], cwd=export, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert load_manifest(LocalSource(export), name).format == fmt


def test_sum_output_elsewhere(export: Path, tmp_path: Path) -> None:
    out = create_manifest(export, "sha256sum", tmp_path / "elsewhere.sha256")
    assert not (export / "SHA256SUMS").exists()
    assert out.read_bytes().count(b"\n") == len(FILES)


def test_json_round_trip(export: Path) -> None:
    out = create_manifest(export, "json", algorithms=("sha256", "md5"))
    assert out == export / "reversib-manifest.json"
    m = load_manifest(LocalSource(export), "reversib-manifest.json")
    assert m.format == "json"
    listed = {e.path: e for e in m.entries}
    assert "reversib-manifest.json" not in listed
    for name, data in FILES.items():
        e = listed[name]
        assert e.size == len(data)
        assert e.digests == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
        assert e.mtime == pytest.approx(os.stat(export / name).st_mtime, abs=1e-6)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads(out.read_text()), schema, cls=jsonschema.Draft202012Validator)


def test_bagit_in_place(export: Path) -> None:
    out = create_manifest(export, "bagit", algorithms=("md5", "sha256"))
    assert out == export / "bagit.txt"
    bag = bagit.Bag(str(export))
    bag.validate()
    assert sorted(bag.algorithms) == ["md5", "sha256"]
    m = load_manifest(LocalSource(export), "")
    assert m.format == "bagit"
    e = next(e for e in m.entries if e.path == "data/plain.txt")
    assert set(e.digests) == {"md5", "sha256"}
    assert m.expect["payload_oxum"] == (sum(map(len, FILES.values())), len(FILES))
    with pytest.raises(ValueError, match="already a bag"):
        create_manifest(export, "bagit")


def test_create_errors(export: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown manifest format"):
        create_manifest(export, "zip")
    with pytest.raises(ValueError, match="sha256 digests only"):
        create_manifest(export, "sha256sum", algorithms=("md5",))
    with pytest.raises(ValueError, match="in place"):
        create_manifest(export, "bagit", tmp_path / "x")
    with pytest.raises(ValueError, match="checksums must be"):
        create_manifest(export, "bagit", algorithms=("blake2b-256",))
    with pytest.raises(ValueError, match="unknown digest algorithm"):
        create_manifest(export, "json", algorithms=("crc32",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to list"):
        create_manifest(tmp_path / "empty", "sha256sum")
    with pytest.raises(ValueError, match="not a directory"):
        create_manifest(tmp_path / "missing", "json")
    assert not (tmp_path / "empty" / "SHA256SUMS").exists()


# -- load_manifest / find_manifest -------------------------------------------------------------

def test_formats() -> None:
    assert set(FORMATS) == {"auto", "bagit", "json", *SUM_FORMATS}
    assert FORMATS == ("auto", "sha256sum", "sha512sum", "sha1sum", "md5sum", "b2sum", "sha224sum", "sha384sum",
                       "bsd", "bagit", "json")


def test_auto_detection(export: Path, tmp_path: Path) -> None:
    source = LocalSource(tmp_path)
    create_manifest(export, "json")
    assert load_manifest(source, "export/reversib-manifest.json").format == "json"
    (export / "reversib-manifest.json").rename(export / "listing")
    assert load_manifest(source, "export/listing").format == "json"  # sniffed: starts with '{'
    create_manifest(export, "sha256sum", export / "SUMS")
    m = load_manifest(source, "./export/SUMS")
    assert m.format == "sha256sum" and m.own_paths == {"export/SUMS"}
    with pytest.raises(ManifestError):
        load_manifest(source, "export/SUMS", "json")
    with pytest.raises(ManifestError, match="directory"):
        load_manifest(source, "export")
    (export / "listing").unlink()
    (export / "SUMS").unlink()
    create_manifest(export, "bagit")
    for path, fmt in (("export", "auto"), ("./export/", "auto"), ("export/bagit.txt", "auto"), ("export", "bagit")):
        m = load_manifest(source, path, fmt)
        assert m.format == "bagit" and m.location == "export/bagit.txt"
        assert "export/data/plain.txt" in [e.path for e in m.entries]
    for path in ("", ".", "./", "bagit.txt"):
        m = load_manifest(LocalSource(export), path)
        assert m.location == "bagit.txt" and "data/plain.txt" in [e.path for e in m.entries]


def test_not_found_and_unreadable(tmp_path: Path) -> None:
    source = LocalSource(tmp_path)
    for path, fmt in (("SHA256SUMS", "auto"), ("m.json", "json"), ("", "auto"), ("bag", "bagit")):
        with pytest.raises(ManifestNotFound) as info:
            load_manifest(source, path, fmt)
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ManifestError)
    with pytest.raises(ValueError):
        load_manifest(source, "x", "zip")
    with pytest.raises(ManifestError, match="relative"):
        load_manifest(source, "/etc/passwd")
    (tmp_path / "outside").write_text("x")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "SUMS").symlink_to(tmp_path / "outside")
    with pytest.raises(ManifestError, match="leaves the export root"):
        load_manifest(LocalSource(tmp_path / "root"), "SUMS")


class FailingSource(LocalSource):
    """A source whose reads fail like a flaky disk or network."""

    def _open_raw(self, path: str, offset: int) -> BinaryIO:
        raise OSError(5, "Input/output error")


def test_io_errors_become_manifest_errors(tmp_path: Path) -> None:
    (tmp_path / "SHA256SUMS").write_text("x")
    with pytest.raises(ManifestError, match="cannot read manifest SHA256SUMS") as info:
        load_manifest(FailingSource(tmp_path), "SHA256SUMS")
    assert not isinstance(info.value, ManifestNotFound)


def test_find_manifest_order(tmp_path: Path) -> None:
    source = LocalSource(tmp_path)
    assert find_manifest(source) is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.sha256").write_text("x")
    assert find_manifest(source) is None
    (tmp_path / "export.sha256").write_text("x")
    assert find_manifest(source) == "export.sha256"
    (tmp_path / "export.md5").write_text("x")
    with pytest.raises(ManifestError, match="several candidate manifests"):
        find_manifest(source)
    for name in ("B2SUMS", "MD5SUMS", "SHA1SUMS", "SHA256SUMS", "SHA512SUMS", "manifest.json",
                 "reversib-manifest.json"):
        (tmp_path / name).write_text("x")
        assert find_manifest(source) == name
    (tmp_path / "bagit.txt").write_text("x")
    assert find_manifest(source) == ""


def test_cli_refuses_to_write_over_a_manifest_of_a_damaged_export(export: Path) -> None:
    """The provider's SHA256SUMS proves a damaged file wrong; `manifest create` must not replace it by a
    manifest of the damaged export (which would then pass)."""
    from reversib.cli import main

    out = create_manifest(export, "sha256sum")
    before = out.read_bytes()
    name = sorted(FILES)[0]
    (export / name).write_bytes(b"damaged")
    assert main(["manifest", "create", str(export), "--format", "sha256sum"]) == 64
    assert out.read_bytes() == before
    assert main(["manifest", "create", str(export), "--format", "sha256sum", "--force"]) == 0
    assert out.read_bytes() != before
