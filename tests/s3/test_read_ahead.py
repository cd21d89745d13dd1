"""The read-ahead thread of large objects (sources/s3.py), made to run on small objects by lowering its
threshold: cut connections still resume with one ranged GET, faults reach the verifier, the part digests
of a multipart object are computed in the thread, and closing a stream half-read stops the thread."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from reversib.manifests import load_manifest
from reversib.sources import s3 as s3mod
from reversib.sources.base import Cancelled, CancelToken
from reversib.sources.s3 import ETAG_KEY, S3Source
from reversib.sources.s3_options import S3Options
from reversib.verify import VerifyOptions, verify
from tests.s3.conftest import Endpoint
from tests.s3.helpers import s3_options, s3_source, upload_export

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _small_read_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "READ_AHEAD_MIN", 1)
    monkeypatch.setattr(s3mod, "READ_AHEAD_CHUNK", 16 << 10)
    monkeypatch.setattr(s3mod, "READ_AHEAD_CHUNKS", 2)




def _gets(endpoint: Endpoint, bucket: str, key: str) -> list[str | None]:
    return [rng for method, path, rng in endpoint.requests() if method == "GET" and path == f"/{bucket}/{key}"]


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reversib-s3-read-ahead"]


def test_stream_is_read_ahead_and_complete(s3: Any, bucket: str, endpoint: Endpoint) -> None:
    data = os.urandom(500_000)
    s3.put_object(Bucket=bucket, Key="p/a.bin", Body=data)
    with s3_source(endpoint, f"s3://{bucket}/p") as src, src.open_range("a.bin") as stream:
        assert stream._raw._thread is not None  # type: ignore[attr-defined]
        got = bytearray()
        buf = bytearray(7000)  # reads smaller than the read-ahead chunks
        while n := stream.readinto(buf):
            got += buf[:n]
    assert bytes(got) == data
    with s3_source(endpoint, f"s3://{bucket}/p", read_ahead=False) as src, src.open_range("a.bin") as stream:
        assert stream._raw._thread is None  # type: ignore[attr-defined]
        assert stream.read() == data


def test_cut_connection_resumes_in_the_read_ahead_thread(tmp_path: Path, s3: Any, bucket: str,
                                                         endpoint: Endpoint) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"big.bin": os.urandom(300_000), "small.txt": b"small\n"})
    endpoint.reset()
    endpoint.faults(cut={f"/{bucket}/p/big.bin": 100_000})
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
        assert report.findings == [] and report.files_verified == 2 and report.bytes_verified == 300_006
        assert src.stats.resumes == 1
    assert _gets(endpoint, bucket, "p/big.bin") == [None, "bytes=100000-"]


def test_too_many_cuts_in_the_read_ahead_thread_is_unreadable(tmp_path: Path, s3: Any, bucket: str,
                                                               endpoint: Endpoint) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"big.bin": os.urandom(50_000)})
    endpoint.faults(cut={f"/{bucket}/p/big.bin": 10})
    with s3_source(endpoint, f"s3://{bucket}/p", max_resumes=0) as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
    assert [(f.kind.value, f.path) for f in report.findings] == [("unreadable", "big.bin")]
    assert "connection broken 1 times" in (report.findings[0].actual or "")


def test_flipped_bit_is_caught_through_the_read_ahead(tmp_path: Path, s3: Any, bucket: str,
                                                      endpoint: Endpoint) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"data.bin": os.urandom(70_000)})
    endpoint.reset()
    endpoint.faults(flip={f"/{bucket}/p/data.bin": [4321, 2]})
    with s3_source(endpoint, f"s3://{bucket}/p", response_checksum_validation="when_required") as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
    assert [(f.kind.value, f.detail) for f in report.findings] == [("digest_mismatch",
                                                                    "confirmed by a second download")]


def test_part_digests_in_the_read_ahead_thread(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    data = os.urandom(11 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    s3.upload_file(str(tmp_path / "big.bin"), bucket, "p/big.bin",
                   Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
    etag = s3.head_object(Bucket=bucket, Key="p/big.bin")["ETag"].strip('"')
    with s3_source(endpoint, f"s3://{bucket}/p") as src, src.open_range("big.bin") as stream:
        h = hashlib.sha256()
        while chunk := stream.read(1 << 20):
            h.update(chunk)
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()
        extra = stream.extra_digests or {}
        # boto3 uploads with its default CRC32 in parts: a composite CRC32, derived and matched too
        assert extra[ETAG_KEY] == etag and set(extra) <= {ETAG_KEY, "crc32-composite"}


def test_closing_half_read_stops_the_thread(s3: Any, bucket: str, endpoint: Endpoint) -> None:
    s3.put_object(Bucket=bucket, Key="p/a.bin", Body=os.urandom(2 << 20))
    before = len(_read_ahead_threads())
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        with src.open_range("a.bin") as stream:
            assert len(stream.read(1000)) == 1000
        deadline = time.monotonic() + 5
        while len(_read_ahead_threads()) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_read_ahead_threads()) == before


def test_cancel_reaches_a_reader_waiting_for_the_thread(s3: Any, bucket: str, endpoint: Endpoint) -> None:
    s3.put_object(Bucket=bucket, Key="p/a.bin", Body=os.urandom(1 << 20))
    cancel = CancelToken()
    src = S3Source(f"s3://{bucket}/p", S3Options.model_validate(s3_options(endpoint.url)), cancel=cancel)
    with src, src.open_range("a.bin") as stream:
        stream.read(1000)
        cancel.cancel("test")
        with pytest.raises(Cancelled):
            while stream.read(1 << 16):
                pass


def test_read_ahead_objects_are_bounded(s3: Any, bucket: str, endpoint: Endpoint,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "READ_AHEAD_OBJECTS", 2)
    data = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="p/a.bin", Body=data)
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        streams = [src.open_range("a.bin") for _ in range(3)]
        assert [s._raw._thread is not None for s in streams] == [True, True, False]  # type: ignore[attr-defined]
        assert all(s.read() == data for s in streams)  # the third is read directly
        for s in streams:
            s.close()
        again = src.open_range("a.bin")  # the slots were given back
        assert again._raw._thread is not None  # type: ignore[attr-defined]
        assert again.read() == data
        again.close()
