"""The corruption matrix on a real S3 endpoint (moto over HTTP): break one thing, expect exactly one finding.

The export is written locally, its manifest by the real `sha256sum` (or reversib's JSON manifest, which
carries sizes), then uploaded; reversib verifies the bucket through the real CLI.
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from reversib.manifests.create import create_manifest
from tests.cli_helpers import findings_of, verify_json
from tests.helpers import make_export, run_tool
from tests.s3.conftest import Endpoint
from tests.s3.helpers import s3_options, upload_tree, write_check

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

FILES = {
    "alpha.txt": b"alpha\n" * 100,
    "docs/report final.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 20,
    "docs/café.csv": b"id;name\n1;\xc3\xa9\n",
    "data2/nested/deep.bin": os.urandom(3000),
    "odd/a+b %41 100% done.txt": b"plus, space, percent\n",
    "odd/日本語 ファイル.txt": b"unicode\n",
    "zeta": b"last\n",
}
PREFIX = "exports/acme/"


class S3Export:
    def __init__(self, tmp: Path, s3: Any, bucket: str, fmt: str, endpoint: Endpoint):
        self.s3, self.bucket, self.fmt, self.endpoint = s3, bucket, fmt, endpoint
        root = make_export(tmp / "export", FILES)
        if fmt == "json":
            self.manifest_name = create_manifest(root, "json", None, ("sha256",)).name
        else:
            self.manifest_name = run_tool(["sha256sum"], root, "SHA256SUMS").name
        upload_tree(s3, bucket, PREFIX, root)
        self.url = f"s3://{bucket}/{PREFIX.rstrip('/')}"
        self.tmp = tmp

    def key(self, rel: str) -> str:
        return PREFIX + rel

    def body(self, rel: str) -> bytes:
        data: bytes = self.s3.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()
        return data

    def put(self, rel: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)

    def run(self, **check: Any) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"source": {"url": self.url, "s3": s3_options(self.endpoint.url)},
                                "manifest": {"path": self.manifest_name}, **check}
        cfg = write_check(self.tmp, "s3check", body)
        return verify_json(["--config", str(cfg), "--all"], self.tmp / "var" / "h.db")


@pytest.fixture(params=["sha256sum", "json"])
def export(request: pytest.FixtureRequest, tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> S3Export:
    return S3Export(tmp_path, s3, bucket, request.param, endpoint)


def test_untouched_export_passes(export: S3Export) -> None:
    export.put("docs/", b"")  # a "directory" marker written by a console: never an entry
    code, doc = export.run()
    run = doc["runs"][0]
    assert (code, doc["outcome"], findings_of(doc)) == (0, "passed", [])
    assert run["files_verified"] == len(FILES) and run["tiers"] == {"downloaded": len(FILES)}
    assert run["bytes_verified"] == sum(len(v) for v in FILES.values())
    assert run["newest_mtime"] is not None


def _missing(e: S3Export) -> str:
    e.s3.delete_object(Bucket=e.bucket, Key=e.key("docs/report final.pdf"))
    return "docs/report final.pdf"


def _unexpected(e: S3Export) -> str:
    e.put("docs/new.txt", b"surprise")
    return "docs/new.txt"


def _flip(e: S3Export) -> str:
    data = bytearray(e.body("data2/nested/deep.bin"))
    data[1234] ^= 0x01
    e.put("data2/nested/deep.bin", bytes(data))
    return "data2/nested/deep.bin"


def _append(e: S3Export) -> str:
    e.put("odd/a+b %41 100% done.txt", e.body("odd/a+b %41 100% done.txt") + b"x")
    return "odd/a+b %41 100% done.txt"


def _normalize(e: S3Export) -> str:
    data = e.body("docs/café.csv")
    e.s3.delete_object(Bucket=e.bucket, Key=e.key("docs/café.csv"))
    e.put(unicodedata.normalize("NFD", "docs/café.csv"), data)
    return "docs/café.csv"


CASES = {
    "missing": (_missing, "missing", "missing"),
    "unexpected": (_unexpected, "unexpected", "unexpected"),
    "same_length_flip": (_flip, "digest_mismatch", "digest_mismatch"),
    "appended": (_append, "size_mismatch", "digest_mismatch"),
    "name_normalization": (_normalize, "name_normalization", "name_normalization"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_fault_one_finding(export: S3Export, case: str) -> None:
    breaker, with_sizes, without_sizes = CASES[case]
    path = breaker(export)
    code, doc = export.run()
    kind = with_sizes if export.fmt == "json" else without_sizes
    assert findings_of(doc) == [(kind, path)], doc["runs"][0]["findings"]
    assert (code, doc["outcome"]) == (1, "failed")
    if kind == "digest_mismatch":  # the same digest twice: the stored object is wrong, not the transfer
        assert doc["runs"][0]["findings"][0]["detail"] == "confirmed by a second download"


def test_duplicate_entry(export: S3Export, tmp_path: Path) -> None:
    local = tmp_path / "export" / export.manifest_name
    if export.fmt == "json":
        doc = json.loads(local.read_text())
        dup = dict(doc["entries"][0], digests={"sha256": "0" * 64})
        doc["entries"].append(dup)
        local.write_text(json.dumps(doc))
        path = dup["path"]
    else:
        lines = local.read_bytes().splitlines(keepends=True)
        local.write_bytes(b"".join(lines) + lines[0])
        path = lines[0].split(b"  ", 1)[1].strip().decode()
    export.put(export.manifest_name, local.read_bytes())
    code, doc = export.run()
    assert findings_of(doc) == [("duplicate_entry", path)] and code == 1


def test_max_age_uses_last_modified(export: S3Export) -> None:
    """moto's LastModified is "now": a 1-hour max_age passes (stale itself is covered by the core)."""
    code, doc = export.run(expect={"max_age": "1h"})
    assert (code, findings_of(doc)) == (0, [])
    import time

    assert abs(doc["runs"][0]["newest_mtime"] - time.time()) < 600


def test_multipart_object_is_downloaded(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    """A multipart object (ETag "-N", composite checksum) is never compared with a whole-file digest: with
    nothing recorded from an earlier download (test_composite.py), it is downloaded."""
    root = make_export(tmp_path / "export", {"big.bin": os.urandom(11 << 20), "small.txt": b"small\n"})
    run_tool(["md5sum"], root, "MD5SUMS")
    s3.upload_file(str(root / "big.bin"), bucket, "p/big.bin",
                   Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    s3.upload_file(str(root / "small.txt"), bucket, "p/small.txt")
    s3.upload_file(str(root / "MD5SUMS"), bucket, "p/MD5SUMS")
    etag = s3.head_object(Bucket=bucket, Key="p/big.bin")["ETag"]
    assert etag.endswith('-3"'), etag
    cfg = write_check(tmp_path, "mp", {"source": {"url": f"s3://{bucket}/p", "s3": s3_options(endpoint.url)},
                                      "manifest": {"path": "MD5SUMS"}, "fixity": {"accept": ["stored_checksum"]}})
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    run = doc["runs"][0]
    assert (code, findings_of(doc)) == (0, [])
    assert run["tiers"] == {"downloaded": 1, "stored_checksum": 1}  # big.bin downloaded; small.txt by its ETag
    assert run["bytes_verified"] == 11 << 20


def test_generations_under_a_prefix(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    for day in ("2026-11-26", "2026-11-27"):
        root = make_export(tmp_path / day, {"a.csv": f"{day}\n".encode(), "b/c.txt": b"hello\n"})
        run_tool(["sha256sum"], root, "SHA256SUMS")
        upload_tree(s3, bucket, f"acme/{day}/", root)
    s3.put_object(Bucket=bucket, Key="acme/not-a-date/x", Body=b"x")
    s3.put_object(Bucket=bucket, Key="acme/README", Body=b"a file at the root is no generation")
    cfg = write_check(tmp_path, "gen", {"source": {"url": f"s3://{bucket}/acme/", "s3": s3_options(endpoint.url)},
                                       "generation": {"pattern": "%Y-%m-%d", "keep": 2},
                                       "manifest": {"path": "SHA256SUMS"}})
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    run = doc["runs"][0]
    assert (code, findings_of(doc), run["generation"]) == (0, [], "2026-11-27")
    assert run["files_verified"] == 2
