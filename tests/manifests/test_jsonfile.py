"""reversib's JSON manifest, and its schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from reversib.manifests.base import Manifest, ManifestError
from reversib.manifests.jsonfile import format_rfc3339, parse_json, parse_rfc3339
from reversib.model import FindingKind
from reversib.sources.local import LocalSource

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

GOOD: dict[str, Any] = {
    "reversib_manifest": 1,
    "created": "2024-05-06T07:08:09Z",
    "generator": "test",
    "entries": [
        {"path": "b/two.csv", "size": 0, "digests": {"sha256": SHA256, "md5": MD5}, "mtime": "2024-05-06T07:08:09Z"},
        {"path": "./one.csv", "size": 12, "digests": {"blake2b-256": "ab" * 32}},
    ],
    "expect": {"min_files": 2, "min_bytes": 10, "tables": {"users": {"min_rows": 5}}},
}


def write(tmp_path: Path, doc: Any, name: str = "m.json") -> Manifest:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    (tmp_path / name).write_bytes(data)
    return parse_json(LocalSource(tmp_path), name)


def with_entry(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    entry = doc["entries"][0]
    for key, value in changes.items():
        if value is DELETE:
            del entry[key]
        else:
            entry[key] = value
    return doc


DELETE = object()


def test_valid_document(tmp_path: Path) -> None:
    m = write(tmp_path, GOOD)
    assert m.format == "json"
    assert m.findings == []
    assert [(e.path, e.size, e.digests) for e in m.entries] == [
        ("b/two.csv", 0, {"sha256": SHA256, "md5": MD5}), ("one.csv", 12, {"blake2b-256": "ab" * 32})]
    assert m.entries[0].mtime == 1714979289.0
    assert m.entries[1].mtime is None
    assert m.expect == GOOD["expect"]
    assert m.own_paths == {"m.json"}


BAD_ENTRIES: list[tuple[dict[str, Any], str]] = [
    (with_entry(size=-1), "size must be a non-negative integer"),
    (with_entry(size="12"), "size must be a non-negative integer"),
    (with_entry(size=True), "size must be a non-negative integer"),
    (with_entry(size=1.5), "size must be a non-negative integer"),
    (with_entry(size=DELETE), "size is required"),
    (with_entry(path=DELETE), "path is required"),
    (with_entry(path=""), "path must be a non-empty string"),
    (with_entry(path=7), "path must be a non-empty string"),
    (with_entry(digests={}), "at least one algorithm"),
    (with_entry(digests=DELETE), "digests is required"),
    (with_entry(digests=[SHA256]), "digests must be an object"),
    (with_entry(digests={"sha256": SHA256.upper()}), "lowercase hex"),
    (with_entry(digests={"sha256": SHA256[:-2]}), "64 hex digits"),
    (with_entry(digests={"sha3-256": SHA256}), "unknown digest algorithm"),
    (with_entry(digests={"blake2b-256": "ab" * 16}), "64 hex digits"),
    (with_entry(digests={"blake2b-12": "abc"}), "unknown digest algorithm"),
    (with_entry(mtime="2024-05-06 07:08:09"), "mtime"),
    (with_entry(mtime="2024-02-30T00:00:00Z"), "mtime"),
    (with_entry(mtime=1714979289), "mtime"),
    (with_entry(sha256=SHA256), "unknown key 'sha256'"),
]


@pytest.mark.parametrize(("doc", "problem"), BAD_ENTRIES)
def test_bad_entry_is_a_finding_naming_its_index(tmp_path: Path, doc: dict[str, Any], problem: str) -> None:
    m = write(tmp_path, doc)
    assert [e.path for e in m.entries] == ["one.csv"]
    (finding,) = m.findings
    assert finding.kind is FindingKind.MANIFEST_INVALID
    assert finding.detail == "entry 0"
    assert problem in (finding.actual or "")


def test_entry_not_an_object(tmp_path: Path) -> None:
    doc = copy.deepcopy(GOOD)
    doc["entries"].append("one.csv")
    m = write(tmp_path, doc)
    assert [(f.kind, f.detail, f.path) for f in m.findings] == [(FindingKind.MANIFEST_INVALID, "entry 2", None)]


@pytest.mark.parametrize("doc", [
    b"not json", b"\xff\xfe{}", b"[1, 2]", b"{}", b'{"reversib_manifest": 2, "entries": []}',
    b'{"reversib_manifest": "1", "entries": []}', b'{"reversib_manifest": true, "entries": []}',
    b'{"reversib_manifest": 1}', b'{"reversib_manifest": 1, "entries": {}}',
    b'{"reversib_manifest": 1, "entries": [{"path": "a", "size": NaN, "digests": {}}]}',
])
def test_not_a_manifest_raises(tmp_path: Path, doc: bytes) -> None:
    with pytest.raises(ManifestError):
        write(tmp_path, doc)


def test_empty_entries_raise(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest is empty"):
        write(tmp_path, {"reversib_manifest": 1, "entries": []})


def test_document_level_problems_are_findings(tmp_path: Path) -> None:
    doc = copy.deepcopy(GOOD)
    doc.update({"created": "yesterday", "generator": 3, "extra": True})
    doc["expect"]["min_files"] = -1
    m = write(tmp_path, doc)
    assert len(m.entries) == 2
    assert sorted(f.actual or "" for f in m.findings) == sorted([
        "created: not an RFC 3339 date-time: 'yesterday'", "generator must be a string",
        "unknown top-level key 'extra'", "expect.min_files must be a non-negative integer"])
    assert "min_files" not in m.expect and m.expect["min_bytes"] == 10


def test_duplicate_keys_and_paths(tmp_path: Path) -> None:
    doc = copy.deepcopy(GOOD)
    doc["entries"].append({"path": "one.csv", "size": 12, "digests": {"md5": MD5}})
    doc["entries"].append({"path": "../escape", "size": 1, "digests": {"md5": MD5}})
    text = json.dumps(doc).replace('"size": 0,', '"size": 0, "size": 1,')
    m = write(tmp_path, text.encode())
    assert [e.path for e in m.entries] == ["b/two.csv"]
    assert sorted(f.kind.value for f in m.findings) == ["duplicate_entry", "manifest_invalid", "unsafe_path"]


def test_rfc3339() -> None:
    assert parse_rfc3339("1970-01-01T00:00:00Z") == 0.0
    assert parse_rfc3339("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_rfc3339("1970-01-01t00:00:00.5z") == 0.5
    assert parse_rfc3339("1970-01-01 00:00:01.123456789-00:30") == pytest.approx(1801.123456)
    assert parse_rfc3339("2016-12-31T23:59:60Z") == parse_rfc3339("2017-01-01T00:00:00Z")
    for bad in ("1970-01-01T00:00:00", "1970-1-01T00:00:00Z", "2023-02-29T00:00:00Z", "x"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)
    assert parse_rfc3339(format_rfc3339(1714979289.123456)) == pytest.approx(1714979289.123456)


def test_hand_checks_agree_with_the_schema(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    minimal = {"reversib_manifest": 1, "entries": [{"path": "a", "size": 0, "digests": {"md5": MD5}}]}
    samples: list[Any] = [GOOD, minimal, {**GOOD, "$schema": "manifest.schema.json"},
                          {**GOOD, "expect": {"anything": [1]}}, with_entry(size=12.0)]
    # The schema cannot see impossible dates nor tie a blake2b-<bits> digest's length to <bits>.
    beyond_schema = ("2024-02-30", '"blake2b-256": "' + "ab" * 16 + '"')
    samples += [doc for doc, _ in BAD_ENTRIES if not any(b in json.dumps(doc) for b in beyond_schema)]
    samples += [{**GOOD, "created": "yesterday"}, {**GOOD, "generator": 3}, {**GOOD, "extra": 1},
                {**GOOD, "expect": {"min_bytes": -1}}, {**GOOD, "expect": []}, {**GOOD, "entries": []},
                {**GOOD, "reversib_manifest": 2}, {"entries": GOOD["entries"]}]
    for i, doc in enumerate(samples):
        schema_ok = validator.is_valid(doc)
        try:
            hand_ok = not write(tmp_path, doc, f"s{i}.json").findings
        except ManifestError:
            hand_ok = False
        assert schema_ok == hand_ok, (i, doc)
    assert sum(validator.is_valid(d) for d in samples) == 5
