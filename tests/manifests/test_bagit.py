"""BagIt bags made with the `bagit` library (bagit-python)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import bagit
import pytest

from reversib.manifests.bagit import decode_percent, parse_bag, parse_labels
from reversib.manifests.base import Manifest, ManifestError
from reversib.model import FindingKind
from reversib.sources.local import LocalSource

PAYLOAD = {
    "plain.txt": b"hello\n",
    "sp ace.txt": b"with a space\n" * 3,
    "sub/ünïcødé.bin": bytes(range(256)),
    "a%25b.txt": b"a literal percent sequence\n",
}


def make(root: Path, files: dict[str, bytes] = PAYLOAD, checksums: tuple[str, ...] = ("md5", "sha256"),
         version: str | None = None) -> Path:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    bagit.make_bag(str(root), checksums=list(checksums), bag_info={"Source-Organization": "Example"})
    if version is not None:
        (root / "bagit.txt").write_text(f"BagIt-Version: {version}\nTag-File-Character-Encoding: UTF-8\n")
        bagit.Bag(str(root)).save()
    bagit.Bag(str(root)).validate()
    return root


def parse(root: Path, path: str = "") -> Manifest:
    return parse_bag(LocalSource(root), path)


def test_bag_with_two_manifests(tmp_path: Path) -> None:
    root = make(tmp_path / "bag")
    m = parse(root)
    assert m.format == "bagit"
    assert m.location == "bagit.txt"
    assert m.unexpected_scope == "data/"
    tags = ["bag-info.txt", "bagit.txt", "manifest-md5.txt", "manifest-sha256.txt"]
    assert [e.path for e in m.entries] == sorted(tags + [f"data/{n}" for n in PAYLOAD])
    for e in m.entries:
        data = (root / e.path).read_bytes()
        assert e.digests == {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
        assert e.size is None
    assert m.findings == []
    assert m.own_paths == set(tags) | {"tagmanifest-md5.txt", "tagmanifest-sha256.txt"}
    payload = [p for p in PAYLOAD.values()]
    assert m.expect["payload_oxum"] == (sum(len(d) for d in payload), len(payload))
    assert m.expect["bag_info"]["Source-Organization"] == ["Example"]
    names = sorted(m.own_paths)
    assert m.digest == hashlib.sha256(b"".join((root / n).read_bytes() for n in names)).hexdigest()


def test_v097_and_v10(tmp_path: Path) -> None:
    old = make(tmp_path / "old")
    assert (old / "bagit.txt").read_text().startswith("BagIt-Version: 0.97")
    new = make(tmp_path / "new", version="1.0")
    a, b = parse(old), parse(new)
    assert a.findings == b.findings == []
    # bagit-python never encodes '%': in a 1.0 bag RFC 8493 says %25 means '%', before 1.0 it is literal.
    assert "data/a%25b.txt" in [e.path for e in a.entries]
    assert "data/a%b.txt" in [e.path for e in b.entries]
    assert [e.path for e in a.entries if "%" not in e.path] == [e.path for e in b.entries if "%" not in e.path]


def test_percent_encoded_names(tmp_path: Path) -> None:
    files = {"new\nline.txt": b"1", "cr\rx.txt": b"2", "ok.txt": b"3", "a%25b.txt": b"4"}
    root = make(tmp_path / "bag", files)
    manifest = (root / "manifest-sha256.txt").read_text()
    assert "data/new%0Aline.txt" in manifest and "data/cr%0Dx.txt" in manifest
    m = parse(root)
    # Decoded; a newline is allowed in a name, a CR is refused as unsafe; a literal %25 stays in a 0.97 bag.
    assert sorted(f.path or "" for f in m.findings if f.kind is FindingKind.UNSAFE_PATH) == ["data/cr\rx.txt"]
    assert {"data/ok.txt", "data/a%25b.txt", "data/new\nline.txt"} <= {e.path for e in m.entries}


def test_percent_sign_in_a_v10_bag(tmp_path: Path) -> None:
    root = make(tmp_path / "bag", {"50%off.txt": b"x"}, version="1.0")
    for name in ("manifest-md5.txt", "manifest-sha256.txt"):
        p = root / name
        p.write_text(p.read_text().replace("data/50%off.txt", "data/50%25off.txt"))
    m = parse(root)
    assert "data/50%off.txt" in [e.path for e in m.entries]
    assert decode_percent("a%0a%0D%25%41", (1, 0)) == "a\n\r%%41"
    assert decode_percent("a%0a%0D%25", (0, 97)) == "a\n\r%25"


def test_fetch_txt(tmp_path: Path) -> None:
    root = make(tmp_path / "bag")
    (root / "fetch.txt").write_text("https://example.org/big.bin 1048576 data/big.bin\n"
                                    "https://example.org/x - data/sp%0Ace.txt\n")
    bagit.Bag(str(root)).save()  # lists fetch.txt in the tag manifests
    assert list(bagit.Bag(str(root)).files_to_be_fetched()) == ["data/big.bin", "data/sp%0Ace.txt"]
    m = parse(root)
    fetch = [(f.path, f.expected, f.actual) for f in m.findings if f.kind is FindingKind.FETCH_REFERENCE]
    assert fetch == [("data/big.bin", "https://example.org/big.bin", "length 1048576"),
                     ("data/sp\nce.txt", "https://example.org/x", "length -")]
    assert "fetch.txt" in m.own_paths
    assert "fetch.txt" in [e.path for e in m.entries]
    # RFC 8493 2.2.3: a file fetch.txt names must be in every payload manifest; these two are not
    invalid = [(f.path, f.actual) for f in m.findings if f.kind is FindingKind.MANIFEST_INVALID]
    assert invalid == [("data/big.bin", "in fetch.txt only"), ("data/sp\nce.txt", "in fetch.txt only")]


def test_path_missing_from_one_payload_manifest(tmp_path: Path) -> None:
    root = make(tmp_path / "bag")
    p = root / "manifest-sha256.txt"
    p.write_text("".join(line for line in p.read_text().splitlines(True) if "plain.txt" not in line))
    m = parse(root)
    (finding,) = m.findings
    assert (finding.kind, finding.path) == (FindingKind.MANIFEST_INVALID, "data/plain.txt")
    assert "manifest-sha256.txt" in (finding.actual or "")
    entry = next(e for e in m.entries if e.path == "data/plain.txt")
    assert list(entry.digests) == ["md5"]


def test_duplicate_and_hostile_lines(tmp_path: Path) -> None:
    root = make(tmp_path / "bag", checksums=("sha256",))
    p = root / "manifest-sha256.txt"
    lines = p.read_text().splitlines(True)
    h = "0" * 64
    p.write_text("".join([*lines, lines[0], f"{h}  data/../../etc/passwd\n", f"{h}\tdata/tab sep\n",
                          f"{h}  notdata.txt\n", "garbage\n", f"{h[:-1]}  data/short\n"]))
    m = parse(root)
    found = sorted((f.kind.value, f.path or "") for f in m.findings)
    dup = lines[0].split("  ", 1)[1].strip()
    assert found == sorted([("duplicate_entry", dup), ("unsafe_path", "data/../../etc/passwd"),
                            ("manifest_invalid", "notdata.txt"), ("manifest_invalid", ""),
                            ("manifest_invalid", "data/short")])
    assert "data/tab sep" in [e.path for e in m.entries]


def test_bag_info_labels_and_oxum(tmp_path: Path) -> None:
    root = make(tmp_path / "bag")
    (root / "bag-info.txt").write_text("External-Description: a long\n  folded value\n\tover lines\n"
                                       "Payload-Oxum: 12.3\nContact-Name: A\nContact-Name: B\n")
    m = parse(root)
    assert m.expect["payload_oxum"] == (12, 3)
    assert m.expect["bag_info"]["External-Description"] == ["a long folded value over lines"]
    assert m.expect["bag_info"]["Contact-Name"] == ["A", "B"]
    (root / "bag-info.txt").write_text("Payload-Oxum: twelve\nno colon here\n")
    m = parse(root)
    assert "payload_oxum" not in m.expect
    assert [f.kind for f in m.findings] == [FindingKind.MANIFEST_INVALID, FindingKind.MANIFEST_INVALID]


def test_parse_labels() -> None:
    labels, bad = parse_labels(iter([(1, " orphan"), (2, "A: 1"), (3, "  2"), (4, "B:x:y"), (5, ": no name")]))
    assert labels == [("A", "1 2", 2), ("B", "x:y", 4)]
    assert [n for n, _ in bad] == [1, 5]


def test_bag_below_the_export_root(tmp_path: Path) -> None:
    make(tmp_path / "bags" / "b1")
    m = parse(tmp_path, "bags/b1")
    assert m.location == "bags/b1/bagit.txt"
    assert m.unexpected_scope == "bags/b1/data/"
    assert "bags/b1/data/plain.txt" in [e.path for e in m.entries]
    assert all(e.path.startswith("bags/b1/") for e in m.entries)
    assert all(p.startswith("bags/b1/") for p in m.own_paths)
    assert parse(tmp_path, "./bags/b1/").entries == m.entries


def test_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a BagIt bag"):
        parse(tmp_path)
    root = make(tmp_path / "bag")
    for text in ("", "BagIt-Version: one\nTag-File-Character-Encoding: UTF-8\n",
                 "BagIt-Version: 0.97\n", "BagIt-Version: 3.0\nTag-File-Character-Encoding: UTF-8\n",
                 "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-16\n", "just text\n"):
        (root / "bagit.txt").write_text(text)
        with pytest.raises(ManifestError):
            parse(root)
    (root / "bagit.txt").write_bytes(b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n\xff\n")
    with pytest.raises(ManifestError, match="UTF-8"):
        parse(root)


def test_no_payload_manifest(tmp_path: Path) -> None:
    root = make(tmp_path / "bag", checksums=("sha256",))
    (root / "manifest-sha256.txt").unlink()
    with pytest.raises(ManifestError, match="no payload manifest"):
        parse(root)


def test_latin1_tag_files(tmp_path: Path) -> None:
    root = make(tmp_path / "bag", {"café.txt": b"x"}, checksums=("sha256",))
    (root / "bagit.txt").write_text("BagIt-Version: 0.97\nTag-File-Character-Encoding: ISO-8859-1\n")
    p = root / "manifest-sha256.txt"
    p.write_bytes(p.read_text(encoding="utf-8").encode("latin-1"))
    m = parse(root)
    assert "data/café.txt" in [e.path for e in m.entries]


def test_invalid_utf8_in_a_manifest(tmp_path: Path) -> None:
    root = make(tmp_path / "bag", checksums=("sha256",))
    p = root / "manifest-sha256.txt"
    p.write_bytes(p.read_bytes() + b"0" * 64 + b"  data/caf\xe9\n")
    m = parse(root)
    assert [(f.kind, f.detail) for f in m.findings] == [
        (FindingKind.MANIFEST_INVALID, f"manifest-sha256.txt line {len(PAYLOAD) + 1}")]
