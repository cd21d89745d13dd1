"""GNU/BSD checksum files, written by the real coreutils tools."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from reversib.manifests.base import MAX_LINE, Manifest, ManifestError
from reversib.manifests.sumfile import escape_name, format_from_name, parse_sumfile, unescape_name
from reversib.model import FindingKind
from reversib.sources.local import LocalSource

NAMES = ["plain.txt", "sp ace.txt", "back\\slash.txt", "ünïcødé.bin", "sub/dir/deep.txt", " lead", "*star",
         "new\nline.txt"]
# A newline in a name is legitimate (coreutils escapes it); a CR or other control character is refused.
HOSTILE = ["cr\rx"]


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    for i, name in enumerate(NAMES + HOSTILE):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"content {i} of {name}\n".encode() * (i + 1))
    return root


def tool(root: Path, out: str, *cmd: str, names: list[str] | None = None) -> Path:
    """Run a real checksum tool in `root` over `names`, write its output to root/out."""
    args = sorted(names if names is not None else NAMES + HOSTILE)
    result = subprocess.run([*cmd, "--", *args], cwd=root, capture_output=True, check=True)
    (root / out).write_bytes(result.stdout)
    return root / out


def digest(root: Path, name: str, alg: str) -> str:
    data = (root / name).read_bytes()
    if alg.startswith("blake2b"):
        bits = int(alg.partition("-")[2] or 512)
        return hashlib.blake2b(data, digest_size=bits // 8).hexdigest()
    return hashlib.new(alg, data).hexdigest()


def parse(root: Path, name: str, hint: str = "auto") -> Manifest:
    return parse_sumfile(LocalSource(root), name, format_hint=hint)


@pytest.mark.parametrize(("cmd", "out", "alg", "fmt"), [
    (["sha256sum"], "SHA256SUMS", "sha256", "sha256sum"),
    (["md5sum"], "MD5SUMS", "md5", "md5sum"),
    (["sha1sum"], "checksums", "sha1", "sha1sum"),
    (["sha224sum"], "checksums", "sha224", "sha224sum"),
    (["sha384sum"], "checksums", "sha384", "sha384sum"),
    (["sha512sum"], "SHA512SUMS", "sha512", "sha512sum"),
    (["sha512sum"], "export.sha512", "sha512", "sha512sum"),
    (["b2sum"], "B2SUMS", "blake2b", "b2sum"),
    (["b2sum"], "export.b2", "blake2b", "b2sum"),
    (["b2sum", "-l", "256"], "B2SUMS", "blake2b-256", "b2sum"),
    (["b2sum", "-l", "160"], "x.blake2b", "blake2b-160", "b2sum"),
    (["sha256sum", "--tag"], "checksums", "sha256", "bsd"),
    (["md5sum", "--tag"], "checksums", "md5", "bsd"),
    (["sha512sum", "--tag"], "checksums", "sha512", "bsd"),
    (["b2sum", "--tag"], "checksums", "blake2b", "bsd"),
    (["b2sum", "--tag", "-l", "256"], "checksums", "blake2b-256", "bsd"),
    (["sha256sum", "-b"], "checksums", "sha256", "sha256sum"),
])
def test_real_tool_output_parses(export: Path, cmd: list[str], out: str, alg: str, fmt: str) -> None:
    m = parse(export, tool(export, out, *cmd).name)
    assert m.format == fmt
    assert [e.path for e in m.entries] == sorted(NAMES)
    for e in m.entries:
        assert e.digests == {alg: digest(export, e.path, alg)}
        assert e.size is None
    # Names with a newline or CR are decoded, then refused as unsafe.
    assert sorted((f.kind, f.path) for f in m.findings) == [(FindingKind.UNSAFE_PATH, n) for n in sorted(HOSTILE)]
    assert m.own_paths == {out}
    assert m.location == out
    assert m.digest == hashlib.sha256((export / out).read_bytes()).hexdigest()


def test_escaped_names_round_trip(export: Path) -> None:
    text = (tool(export, "SUMS", "sha256sum")).read_bytes()
    assert b"\\" + digest(export, "back\\slash.txt", "sha256").encode() + b"  back\\\\slash.txt\n" in text
    assert b"  new\\nline.txt\n" in text and b"  cr\\rx\n" in text
    m = parse(export, "SUMS", "sha256sum")
    assert "back\\slash.txt" in [e.path for e in m.entries]
    for name in NAMES + HOSTILE:
        assert unescape_name(escape_name(name)[1].encode()) == name.encode()


def test_mixed_untagged_and_tagged_lines(export: Path) -> None:
    a = tool(export, "a", "md5sum", names=["plain.txt"]).read_bytes()
    b = tool(export, "b", "sha256sum", "--tag", names=["sp ace.txt", "back\\slash.txt"]).read_bytes()
    c = tool(export, "c", "sha1sum", names=["sub/dir/deep.txt"]).read_bytes()
    (export / "MIXED").write_bytes(a + b + c)
    m = parse(export, "MIXED")
    assert m.format == "mixed"
    assert {e.path: list(e.digests) for e in m.entries} == {
        "plain.txt": ["md5"], "sp ace.txt": ["sha256"], "back\\slash.txt": ["sha256"], "sub/dir/deep.txt": ["sha1"]}
    assert m.findings == []


def test_crlf_dot_slash_blank_and_comment_lines(export: Path) -> None:
    out = tool(export, "SUMS", "sha256sum", names=["./plain.txt", "./sub/dir/deep.txt", "sp ace.txt"])
    lines = out.read_bytes().split(b"\n")
    (export / "SUMS").write_bytes(b"# made by sha256sum\r\n\r\n" + b"\r\n".join(lines) + b"\r\n   \n")
    m = parse(export, "SUMS")
    assert [e.path for e in m.entries] == ["plain.txt", "sp ace.txt", "sub/dir/deep.txt"]
    assert m.entries[0].digests["sha256"] == digest(export, "plain.txt", "sha256")
    assert m.findings == []


def test_ambiguous_128_hex_is_an_error_without_a_name(export: Path) -> None:
    tool(export, "CHECKSUMS", "sha512sum", names=["plain.txt"])
    with pytest.raises(ManifestError, match="sha512 or blake2b"):
        parse(export, "CHECKSUMS")
    assert parse(export, "CHECKSUMS", "sha512sum").entries[0].digests == {
        "sha512": digest(export, "plain.txt", "sha512")}
    tool(export, "CHECKSUMS", "b2sum", names=["plain.txt"])
    assert parse(export, "CHECKSUMS", "b2sum").entries[0].digests == {
        "blake2b": digest(export, "plain.txt", "blake2b")}


def test_64_hex_is_sha256_unless_the_name_says_b2(export: Path) -> None:
    tool(export, "CHECKSUMS", "b2sum", "-l", "256", names=["plain.txt"])
    assert list(parse(export, "CHECKSUMS").entries[0].digests) == ["sha256"]  # no name: the length decides
    (export / "CHECKSUMS").rename(export / "B2SUMS")
    assert list(parse(export, "B2SUMS").entries[0].digests) == ["blake2b-256"]


def test_named_format_rejects_other_lengths(export: Path) -> None:
    tool(export, "SHA256SUMS", "md5sum", names=["plain.txt", "sp ace.txt"])
    with pytest.raises(ManifestError, match="not a checksum file"):
        parse(export, "SHA256SUMS")
    md5 = tool(export, "x", "md5sum", names=["plain.txt"]).read_bytes()
    sha = tool(export, "y", "sha256sum", names=["sp ace.txt"]).read_bytes()
    (export / "SHA256SUMS").write_bytes(md5 + sha)
    m = parse(export, "SHA256SUMS")
    assert [e.path for e in m.entries] == ["sp ace.txt"]
    assert [(f.kind, f.path, f.detail) for f in m.findings] == [(FindingKind.MANIFEST_INVALID, "plain.txt", "line 1")]
    assert "64 hex digits" in (m.findings[0].actual or "")


def test_bsd_hint_takes_tagged_lines_only(export: Path) -> None:
    tagged = tool(export, "x", "sha256sum", "--tag", names=["plain.txt"]).read_bytes()
    plain = tool(export, "y", "sha256sum", names=["sp ace.txt"]).read_bytes()
    (export / "SUMS").write_bytes(tagged + plain)
    m = parse(export, "SUMS", "bsd")
    assert m.format == "bsd"
    assert [e.path for e in m.entries] == ["plain.txt"]
    assert [f.kind for f in m.findings] == [FindingKind.MANIFEST_INVALID]
    with pytest.raises(ValueError):
        parse(export, "SUMS", "crc32")


def test_hostile_lines_become_unsafe_path(tmp_path: Path) -> None:
    h = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    (tmp_path / "SUMS").write_bytes(
        f"{h}  ok\n{h}  ../x\n{h}  /etc/passwd\n{h}  a/../../b\n{h}  a\x00b\n\\{h}  a\\nb\n{h}  a//b\n".encode())
    m = parse(tmp_path, "SUMS")
    assert [e.path for e in m.entries] == ["a\nb", "ok"]
    unsafe = {f.path: f.actual for f in m.findings if f.kind is FindingKind.UNSAFE_PATH}
    assert set(unsafe) == {"../x", "/etc/passwd", "a/../../b", "a\x00b", "a//b"}
    assert unsafe["a\x00b"] == "NUL character in path"
    assert len(m.findings) == 5


def test_nul_escape_is_malformed_like_coreutils(tmp_path: Path) -> None:
    h = hashlib.sha256(b"").hexdigest()
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "SUMS").write_bytes(f"{h}  a\n\\{h}  a\\0b\n\\{h}  trailing\\\n".encode())
    m = parse(tmp_path, "SUMS")
    assert [e.path for e in m.entries] == ["a"]
    assert [(f.kind, f.detail) for f in m.findings] == [
        (FindingKind.MANIFEST_INVALID, "line 2"), (FindingKind.MANIFEST_INVALID, "line 3")]
    check = subprocess.run(["sha256sum", "-c", "SUMS"], cwd=tmp_path, capture_output=True, text=True)
    assert "2 lines are improperly formatted" in check.stderr


@pytest.mark.parametrize("second", ["same", "different"])
def test_duplicate_path_reported_once(export: Path, second: str) -> None:
    first = tool(export, "x", "sha256sum", names=["plain.txt", "sp ace.txt"]).read_bytes()
    (export / "plain.txt").write_bytes(b"changed" if second == "different" else (export / "plain.txt").read_bytes())
    again = tool(export, "y", "sha256sum", names=["plain.txt"]).read_bytes()
    (export / "SUMS").write_bytes(first + again)
    m = parse(export, "SUMS")
    assert [e.path for e in m.entries] == ["sp ace.txt"]
    assert [(f.kind, f.path) for f in m.findings] == [(FindingKind.DUPLICATE_ENTRY, "plain.txt")]
    assert ("different digests" in (m.findings[0].actual or "")) == (second == "different")
    assert m.findings[0].detail == "lines 1, 3"


def test_ten_megabyte_line_is_reported_with_bounded_memory(export: Path) -> None:
    good = tool(export, "x", "sha256sum", names=["plain.txt"]).read_bytes()
    with open(export / "SUMS", "wb") as f:
        f.write(good)
        f.write(b"a" * 64 + b"  " + b"x" * (10 * 1024 * 1024) + b"\n")
        f.write(good.replace(b"plain.txt", b"./other"))
    tracemalloc.start()
    try:
        m = parse(export, "SUMS")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    assert [e.path for e in m.entries] == ["other", "plain.txt"]
    assert [(f.kind, f.detail) for f in m.findings] == [(FindingKind.MANIFEST_INVALID, "line 2")]
    assert str(MAX_LINE) in (m.findings[0].actual or "")
    assert m.digest == hashlib.sha256((export / "SUMS").read_bytes()).hexdigest()


def test_invalid_utf8_name(export: Path) -> None:
    good = tool(export, "x", "sha256sum", names=["plain.txt"]).read_bytes()
    bad = good.replace(b"plain.txt", b"caf\xe9.txt")
    (export / "SUMS").write_bytes(bad + good)
    m = parse(export, "SUMS")
    assert [e.path for e in m.entries] == ["plain.txt"]
    (finding,) = m.findings
    assert finding.kind is FindingKind.MANIFEST_INVALID
    assert finding.detail == "line 1" and finding.actual == "file name is not valid UTF-8"
    assert finding.path == "caf\ufffd.txt"


@pytest.mark.parametrize("line", [
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85  odd-length",
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  ",
    b"zz  not-hex",
    b"SHA256 (x) = nothex",
    b"SHA256 (x) = e3b0",
    b"SHA3-256 (x) = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"BLAKE2b-12 (x) = abc",
])
def test_malformed_lines(tmp_path: Path, line: bytes) -> None:
    good = b"d41d8cd98f00b204e9800998ecf8427e  good\n"
    (tmp_path / "SUMS").write_bytes(good + line + b"\n")
    m = parse(tmp_path, "SUMS")
    assert [e.path for e in m.entries] == ["good"]
    assert [(f.kind, f.detail) for f in m.findings] == [(FindingKind.MANIFEST_INVALID, "line 2")]


def test_uppercase_hex_is_lowercased(tmp_path: Path) -> None:
    (tmp_path / "SUMS").write_bytes(b"D41D8CD98F00B204E9800998ECF8427E  a\n")
    assert parse(tmp_path, "SUMS").entries[0].digests == {"md5": "d41d8cd98f00b204e9800998ecf8427e"}


@pytest.mark.parametrize("content", [b"", b"\n\n", b"# only a comment\n", b"   \r\n"])
def test_empty_manifest_raises(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "SUMS").write_bytes(content)
    with pytest.raises(ManifestError, match="manifest is empty"):
        parse(tmp_path, "SUMS")


def test_no_parseable_line_raises(tmp_path: Path) -> None:
    (tmp_path / "SUMS").write_bytes(b"hello world\nthis is not a manifest\n")
    with pytest.raises(ManifestError, match="not a checksum file"):
        parse(tmp_path, "SUMS")


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        parse(tmp_path, "SUMS")


def test_format_from_name() -> None:
    assert format_from_name("SHA512SUMS") == "sha512sum"
    assert format_from_name("a/b/sha256sums.txt") == "sha256sum"
    assert format_from_name("x.B2") == "b2sum"
    assert format_from_name("release.md5") == "md5sum"
    assert format_from_name("CHECKSUMS") is None
    assert format_from_name(".sha256") is None


def test_readable_through_the_source_only(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool(export, "SUMS", "sha256sum")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsers must read through the Source")

    monkeypatch.setattr("builtins.open", refuse)
    assert parse(export, "SUMS").entries
    assert os.path.exists(export / "SUMS")


@pytest.mark.parametrize("hint", ["auto", "sha256sum", "md5sum", "b2sum", "sha512sum", "bsd"])
def test_fast_path_agrees_with_parse_line(tmp_path: Path, hint: str) -> None:
    """parse_sumfile takes a shortcut for plain `hex  name` lines: every line must give what parse_line gives."""
    from reversib.manifests.base import ManifestEntry, path_problem
    from reversib.manifests.sumfile import SUM_FORMATS, _BadLine, parse_line

    context = SUM_FORMATS.get(hint)
    lines = [b"a" * 64 + b"  plain.csv", b"b" * 64 + b" *binary.bin", b"c" * 32 + b"  md5.txt",
             b"d" * 40 + b"  sha1 name with  spaces", b"e" * 128 + b"  long.bin", b"f" * 16 + b"  short-b2",
             b"0" * 64 + b"   leading-space-name", b"1" * 64 + b"  ./dot/slash", b"2" * 64 + b"  tab\tname",
             b"3" * 64 + b"  back\\slash", b"4" * 64 + b"  \xc3\xa9t\xc3\xa9", b"5" * 64 + b"  bad\xffutf8",
             b"6" * 63 + b"  odd", b"7" * 64 + b"  cr\rinside", b"A" * 64 + b"  upper", b"8" * 64 + b"\tname",
             b"9" * 64 + b" x", b"SHA256 (tagged) = " + b"a" * 64]
    for i, line in enumerate(lines):
        (tmp_path / "SUMS").write_bytes(line + b"\n")
        try:
            expected: tuple[ManifestEntry, str] | str | None = parse_line(line, context, 1, "SUMS")
        except _BadLine as exc:
            expected = exc.reason
        except ManifestError as exc:
            expected = str(exc)
        try:
            m = parse_sumfile(LocalSource(tmp_path), "SUMS", format_hint=hint)
        except ManifestError as exc:
            assert isinstance(expected, str), (i, line, exc)
            continue
        if isinstance(expected, str):
            assert not m.entries and m.findings, (i, line)
            assert expected in " ".join(str(f.actual) for f in m.findings), (i, line)
            continue
        assert expected is not None
        entry, kind = expected
        entry.line = None
        if path_problem(entry.path):  # finalize drops it with a finding, whichever path parsed it
            assert not m.entries and [f.kind for f in m.findings] == [FindingKind.UNSAFE_PATH], (i, line)
            continue
        assert m.entries == [entry] and not m.findings, (i, line)
        assert m.format == (hint if hint != "auto" else kind), (i, line)


def test_a_single_space_is_accepted_as_gnu_sha256sum_accepts_it(tmp_path: Path) -> None:
    """`HEX name` with one space: `sha256sum -c` (coreutils 9) reads it as a text-mode line."""
    import hashlib
    import subprocess

    (tmp_path / "a.txt").write_bytes(b"hi\n")
    (tmp_path / "SUMS").write_bytes(hashlib.sha256(b"hi\n").hexdigest().encode() + b" a.txt\n")
    gnu = subprocess.run(["sha256sum", "-c", "SUMS"], cwd=tmp_path, capture_output=True, text=True)
    assert gnu.returncode == 0, gnu.stdout + gnu.stderr
    m = parse(tmp_path, "SUMS")
    assert [e.path for e in m.entries] == ["a.txt"] and m.findings == []
