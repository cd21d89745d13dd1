"""Composite (multipart) checksums: the construction on constructed part lists, the verifier's comparison with
the values recorded at the last full download, and the whole path against moto over HTTP (moto computes the
`-N` ETag correctly; its composite checksum data is incomplete, so the comparison logic is tested on
constructed data too)."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from reversib.history import History
from reversib.manifests import load_manifest
from reversib.model import Tier
from reversib.sources.base import Capabilities, Entry, StoredDigests
from reversib.sources.local import LocalSource
from reversib.sources.s3 import (
    ETAG_KEY,
    PartDigests,
    composite_value,
    multipart_count,
    uniform_part_sizes,
)
from reversib.verify import COMPARED, PARTS_AT, VerifyOptions, previous_composites, verify
from tests.cli_helpers import findings_of, verify_json
from tests.helpers import make_export, run_tool
from tests.s3.conftest import Endpoint
from tests.s3.helpers import s3_options, write_check

MiB = 1 << 20


# -- the construction, on constructed parts -------------------------------------------------------

def _parts(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_multipart_etag_construction() -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes in parts of 10,000
    parts = _parts(data, 10_000)
    md5s = [hashlib.md5(p).digest() for p in parts]
    want = hashlib.md5(md5s[0] + md5s[1] + md5s[2]).hexdigest() + "-3"
    assert composite_value("md5", md5s) == want
    sha = [hashlib.sha256(p).digest() for p in parts]
    assert composite_value("sha256", sha) == hashlib.sha256(b"".join(sha)).hexdigest() + "-3"
    crc = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    assert composite_value("crc32", crc) == zlib.crc32(b"".join(crc)).to_bytes(4, "big").hex() + "-3"
    assert multipart_count(f'"{want}"') == 3 and multipart_count(hashlib.md5(data).hexdigest()) is None
    assert multipart_count("abc-3") is None and multipart_count(want.upper()) == 3


@pytest.mark.parametrize("chunk", [1, 999, 10_000, 10_001, 65_536])
def test_part_digests_across_chunk_boundaries(chunk: int) -> None:
    data = os.urandom(25_600)
    parts = _parts(data, 10_000)
    pd = PartDigests([10_000, 10_000, 5_600], ("md5", "sha256", "crc32"))
    for i in range(0, len(data), chunk):
        pd.update(data[i:i + chunk])
    got = pd.result()
    assert got == {
        ETAG_KEY: composite_value("md5", [hashlib.md5(p).digest() for p in parts]),
        "sha256-composite": composite_value("sha256", [hashlib.sha256(p).digest() for p in parts]),
        "crc32-composite": composite_value("crc32", [zlib.crc32(p).to_bytes(4, "big") for p in parts]),
    }


def test_part_digests_refuse_a_wrong_layout() -> None:
    short = PartDigests([10, 10], ("md5",))
    short.update(b"x" * 15)
    assert short.result() == {}  # not every part hashed
    long = PartDigests([10, 10], ("md5",))
    long.update(b"x" * 21)
    assert long.overflow and long.result() == {}


def test_uniform_part_sizes() -> None:
    assert uniform_part_sizes(12 * MiB, 5 * MiB, 3) == [5 * MiB, 5 * MiB, 2 * MiB]
    assert uniform_part_sizes(10 * MiB, 5 * MiB, 2) == [5 * MiB, 5 * MiB]
    assert uniform_part_sizes(16 * MiB, 5 * MiB, 3) is None  # the last part would be larger than the first
    assert uniform_part_sizes(10 * MiB, 5 * MiB, 3) is None  # an empty last part


# -- the verifier's comparison, on constructed answers ----------------------------------------------

class CompositeSource(LocalSource):
    """Local files whose metadata answer is a constructed composite value (no digest of the whole file)."""

    def __init__(self, root: Path, composite: dict[str, str]) -> None:
        super().__init__(root)
        self.composite, self.opens = composite, 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(digests_without_download=frozenset({"md5", "sha256"}))

    def digests_without_download(self, entry: Entry, algorithms: tuple[str, ...]) -> StoredDigests | None:
        return StoredDigests("stored_checksum", {}, "S3 composite ETag", composite=dict(self.composite))

    def _open_raw(self, path: str, offset: int) -> Any:
        self.opens += 1
        return super()._open_raw(path, offset)


@pytest.fixture
def local_export(tmp_path: Path) -> Path:
    root = make_export(tmp_path / "e", {"big.bin": b"0123456789" * 1000})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    return root


def _run(root: Path, now: dict[str, str], before: dict[str, str] | None) -> tuple[Any, int]:
    src = CompositeSource(root, now)
    manifest = load_manifest(src, "SHA256SUMS")
    src.opens = 0
    previous = {"big.bin": before} if before is not None else {}
    report = verify(src, manifest, VerifyOptions(accept=frozenset({Tier.STORED_CHECKSUM}), previous=previous))
    return report, src.opens


def test_composite_equal_to_the_recorded_one_is_verified_without_download(local_export: Path) -> None:
    sha = hashlib.sha256(b"0123456789" * 1000).hexdigest()
    before = {"sha256": sha, ETAG_KEY: "ab" * 16 + "-2", PARTS_AT: "2026-11-01T10:00:00Z"}
    report, opens = _run(local_export, {ETAG_KEY: "ab" * 16 + "-2"}, before)
    assert (report.findings, opens, report.tiers, report.bytes_verified) == ([], 0, {"stored_checksum": 1}, 0)
    v = report.verified[0]
    assert v.digests[COMPARED] == ("S3 composite ETag compared with the part digests of the full download of "
                                   "2026-11-01T10:00:00Z")
    assert v.digests[ETAG_KEY] == "ab" * 16 + "-2" and v.digests[PARTS_AT] == "2026-11-01T10:00:00Z"


@pytest.mark.parametrize("case", ["etag_differs", "not_recorded", "no_download_date", "manifest_changed",
                                  "other_value_differs", "no_manifest_algorithm"])
def test_composite_falls_back_to_a_download(local_export: Path, case: str) -> None:
    sha = hashlib.sha256(b"0123456789" * 1000).hexdigest()
    etag = "ab" * 16 + "-2"
    now = {ETAG_KEY: etag}
    before: dict[str, str] | None = {"sha256": sha, ETAG_KEY: etag, PARTS_AT: "2026-11-01T10:00:00Z"}
    assert before is not None
    if case == "etag_differs":
        now = {ETAG_KEY: "cd" * 16 + "-2"}
    elif case == "not_recorded":
        before = None
    elif case == "no_download_date":
        del before[PARTS_AT]
    elif case == "manifest_changed":
        before["sha256"] = "0" * 64  # the recorded download no longer matches this manifest
    elif case == "other_value_differs":
        now = {ETAG_KEY: etag, "sha256-composite": "ef" * 32 + "-2"}
        before["sha256-composite"] = "01" * 32 + "-2"
    elif case == "no_manifest_algorithm":
        del before["sha256"]
    report, opens = _run(local_export, now, before)
    assert (report.findings, opens, report.tiers) == ([], 1, {"downloaded": 1})


class _Extra:
    """A stream that, like the S3 stream of a multipart object, derives values while its bytes flow."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.extra_digests = raw, {ETAG_KEY: "ab" * 16 + "-2"}

    def readinto(self, buf: Any) -> int:
        return int(self.raw.readinto(buf))

    def close(self) -> None:
        self.raw.close()


class ExtraSource(LocalSource):
    def _open_raw(self, path: str, offset: int) -> Any:
        return _Extra(super()._open_raw(path, offset))


@pytest.mark.parametrize("matches", [True, False])
def test_stream_extra_digests_are_recorded_on_a_matching_download(local_export: Path, matches: bool) -> None:
    if not matches:
        (local_export / "big.bin").write_bytes(b"9123456789" * 1000)
    src = ExtraSource(local_export)
    report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions(), clock=lambda: 1_764_000_000.0)
    v = next(v for v in report.verified if v.path == "big.bin")
    if matches:
        assert report.findings == []
        assert v.digests == {"sha256": hashlib.sha256(b"0123456789" * 1000).hexdigest(),
                             ETAG_KEY: "ab" * 16 + "-2", PARTS_AT: "2025-11-24T16:00:00Z"}
    else:
        assert [f.kind.value for f in report.findings] == ["digest_mismatch"]
        assert ETAG_KEY not in v.digests and PARTS_AT not in v.digests


def test_previous_composites_keeps_only_composite_entries() -> None:
    class S:
        def __init__(self, path: str, digests: dict[str, str]) -> None:
            self.path, self.digests = path, digests

    states = [S("a", {"sha256": "1"}), S("b", {"sha256": "2", ETAG_KEY: "x-2", PARTS_AT: "t"})]
    assert previous_composites(states) == {"b": states[1].digests}


# -- against moto over HTTP --------------------------------------------------------------------------

def _upload_multipart(s3: Any, bucket: str, key: str, path: Path, **extra: Any) -> str:
    s3.upload_file(str(path), bucket, key, ExtraArgs=extra or None,
                   Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
    return str(s3.head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')


def _states(db: Path, check_id: str) -> dict[str, Any]:
    h = History(f"sqlite:///{db}")
    try:
        return {s.path: s for s in h.entry_states(check_id)}
    finally:
        h.close()


@pytest.mark.service
@pytest.mark.timeout(180)
def test_multipart_object_recorded_then_compared_then_changed(tmp_path: Path, s3: Any, bucket: str,
                                                               endpoint: Endpoint) -> None:
    data = os.urandom(12 * MiB)
    root = make_export(tmp_path / "export", {"big.bin": data, "small.txt": b"small\n"})
    run_tool(["sha256sum"], root, "SHA256SUMS")
    etag = _upload_multipart(s3, bucket, "p/big.bin", root / "big.bin", ChecksumAlgorithm="SHA256")
    md5s = [hashlib.md5(p).digest() for p in _parts(data, 5 * MiB)]
    assert etag == composite_value("md5", md5s), "moto's multipart ETag is md5(part md5s)-N"
    s3.put_object(Bucket=bucket, Key="p/small.txt", Body=b"small\n", ChecksumAlgorithm="SHA256")
    s3.upload_file(str(root / "SHA256SUMS"), bucket, "p/SHA256SUMS")
    body = {"source": {"url": f"s3://{bucket}/p", "s3": s3_options(endpoint.url)},
            "manifest": {"path": "SHA256SUMS"}, "fixity": {"accept": ["stored_checksum"]}}
    cfg = write_check(tmp_path, "mp", body)
    db = tmp_path / "h.db"

    # 1. first run: nothing recorded, downloaded; the part digests give the object's ETag: recorded
    code, doc = verify_json(["--config", str(cfg), "--all"], db)
    run = doc["runs"][0]
    assert (code, findings_of(doc)) == (0, [])
    assert run["tiers"] == {"downloaded": 1, "stored_checksum": 1}  # small.txt: its full-object SHA256
    assert run["bytes_verified"] == 12 * MiB
    state = _states(db, run["check_id"])["big.bin"]
    assert state.tier == "downloaded" and state.digests[ETAG_KEY] == etag
    sha_parts = [hashlib.sha256(p).digest() for p in _parts(data, 5 * MiB)]
    assert state.digests["sha256-composite"] == composite_value("sha256", sha_parts)
    assert base64.b64decode(s3.get_object_attributes(Bucket=bucket, Key="p/big.bin", ObjectAttributes=[
        "Checksum"])["Checksum"]["ChecksumSHA256"].partition("-")[0]).hex() == \
        composite_value("sha256", sha_parts).partition("-")[0]
    when = state.digests[PARTS_AT]

    # 2. second run: the composite ETag equals the recorded one: stored_checksum, nothing downloaded
    endpoint.reset()
    code, doc = verify_json(["--config", str(cfg), "--all"], db)
    run = doc["runs"][0]
    assert (code, findings_of(doc)) == (0, [])
    assert run["tiers"] == {"stored_checksum": 2} and run["bytes_verified"] == 0
    assert not [r for r in endpoint.requests() if r[0] == "GET" and r[1] == f"/{bucket}/p/big.bin"]
    state = _states(db, run["check_id"])["big.bin"]
    assert state.tier == "stored_checksum" and state.digests[PARTS_AT] == when
    assert state.digests[COMPARED] == ("S3 composite ETag and ChecksumSHA256 (composite) compared with the part "
                                       f"digests of the full download of {when}")

    # 3. same size, other content, another multipart upload: the ETag differs: downloaded, digest_mismatch
    other = bytearray(data)
    other[7 * MiB] ^= 0x01
    (tmp_path / "other.bin").write_bytes(bytes(other))
    assert _upload_multipart(s3, bucket, "p/big.bin", tmp_path / "other.bin", ChecksumAlgorithm="SHA256") != etag
    endpoint.reset()
    code, doc = verify_json(["--config", str(cfg), "--all"], db)
    run = doc["runs"][0]
    assert (code, findings_of(doc)) == (1, [("digest_mismatch", "big.bin")])
    assert run["findings"][0]["detail"] == "confirmed by a second download"
    # two downloads, each with its GetObjectAttributes (GET ?attributes: the fault layer logs no query)
    assert len([r for r in endpoint.requests() if r[0] == "GET" and r[1] == f"/{bucket}/p/big.bin"]) == 4
    assert ETAG_KEY not in _states(db, run["check_id"])["big.bin"].digests  # a mismatch records no composite


@pytest.mark.parametrize("value", ["2026-11-28T16:39:01.000Z", "2026-11-28T16:39:01Z", "Sat, 28 Nov 2026 16:39:01 GMT",
                                   "2026-11-28T16:39:01.123456+02:00", "Sat, 28 Nov 2026 16:39:01 +0000",
                                   1764340741, "1764340741", "2026-11-28"])
def test_the_fast_timestamp_parser_agrees_with_botocores(value: object) -> None:
    """S3 timestamps are parsed by the standard library (dateutil costs ~35 us per listed key); the
    instant is the one botocore's own parser gives, always time-zone aware."""
    from botocore.utils import parse_timestamp as botocore_parse

    from reversib.sources.s3 import parse_timestamp

    mine, theirs = parse_timestamp(value), botocore_parse(value)
    if theirs.tzinfo is None:  # botocore leaves a bare date naive: S3's times are UTC
        theirs = theirs.replace(tzinfo=timezone.utc)
    assert mine.tzinfo is not None and mine == theirs
