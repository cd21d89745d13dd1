"""Direct GETs (reversib/sources/s3_direct.py) against the real endpoint: the request is the one boto3 would
sign and send, every download goes through it, and any unexpected answer hands the request to boto3."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from reversib.manifests import load_manifest
from reversib.verify import VerifyOptions, verify
from tests.s3.conftest import Endpoint
from tests.s3.helpers import s3_source, upload_export

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

AWKWARD = ["a b.txt", "plus+sign.txt", "pct%20x.txt", "ünï/cödé.txt", "tilde~x.txt", "amp&eq=q.txt", "hash#x.txt",
           "semi;colon.txt", "star*.txt", "quote'x.txt", "paren(1).txt", "d/e/f/deep.txt", "日本語.txt"]


class _Captured(Exception):
    pass




def _gets(endpoint: Endpoint, bucket: str) -> list[str]:
    return [path for method, path, _ in endpoint.requests() if method == "GET" and path.startswith(f"/{bucket}/p/")]


def test_every_download_is_a_direct_get_and_awkward_keys_pass(tmp_path: Path, s3: Any, bucket: str,
                                                              endpoint: Endpoint) -> None:
    files = {name: f"{name}\n".encode() * (i + 1) for i, name in enumerate(AWKWARD)}
    upload_export(tmp_path, s3, bucket, "p/", files)
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
        assert (report.findings, report.files_verified) == ([], len(files))
        stats = src.stats
        assert src._conn.direct is not None and src._conn.direct.enabled
        assert stats.direct_gets == stats.gets >= len(files)  # the manifest's reads too
        # one pool of max_connections: the direct GETs use the client's own HTTP session
        assert src._conn.direct._http is src._client()._endpoint.http_session
    with s3_source(endpoint, f"s3://{bucket}/p", direct_get=False) as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
        assert (report.findings, report.files_verified, src.stats.direct_gets) == ([], len(files), 0)


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=5-"}, {"Range": "bytes=5-", "If-Match": '"0123abc"'}])
def test_the_direct_request_is_the_one_boto3_signs(monkeypatch: pytest.MonkeyPatch, endpoint: Endpoint,
                                                  headers: dict[str, str]) -> None:
    """Same URL and same Authorization header (clock frozen) as boto3's own GetObject, key by key."""
    import botocore.auth

    frozen = dt.datetime(2026, 11, 28, 12, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: frozen)
    src = s3_source(endpoint, "s3://bucket-x/p", response_checksum_validation="when_required")
    client = src._client()
    direct = src._conn.direct
    assert direct is not None
    seen: dict[str, tuple[str, str]] = {}

    def boto_hook(request: Any, **_: Any) -> None:
        seen["boto3"] = (request.url, request.headers["Authorization"].decode()
                         if isinstance(request.headers["Authorization"], bytes) else request.headers["Authorization"])
        raise _Captured

    class Wire:
        def send(self, prepared: Any) -> None:
            seen["direct"] = (prepared.url, prepared.headers["Authorization"].decode()
                              if isinstance(prepared.headers["Authorization"], bytes)
                              else prepared.headers["Authorization"])
            raise _Captured

        def close(self) -> None:
            pass

    client.meta.events.register_first("before-send.s3.GetObject", boto_hook)
    direct._http = Wire()
    request = {"Range": headers["Range"]} if "Range" in headers else {}
    if "If-Match" in headers:
        request["IfMatch"] = headers["If-Match"]
    for name in AWKWARD:
        key = "p/" + name
        with pytest.raises(_Captured):
            client.get_object(Bucket="bucket-x", Key=key, **request)
        assert direct.get("bucket-x", key, dict(headers)) is None  # the stub raised: "not answered"
        assert seen["direct"] == seen["boto3"], name
        direct.enabled = True  # the stub's failure turned it off
    src.close()


def test_an_unexpected_answer_goes_through_boto3_and_turns_the_path_off(tmp_path: Path, s3: Any, bucket: str,
                                                                         endpoint: Endpoint,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    files = {f"f{i}.txt": f"file {i}\n".encode() for i in range(5)}
    upload_export(tmp_path, s3, bucket, "p/", files)
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        manifest = load_manifest(src, "SHA256SUMS")  # the client exists: the next GET is a direct one
        assert src._conn.direct is not None and src._conn.direct.enabled
        endpoint.reset()
        endpoint.faults(slowdown=1)
        with caplog.at_level(logging.INFO, logger="reversib.sources.s3"), src.open_range("f0.txt") as f:
            assert f.read() == files["f0.txt"]
        assert not src._conn.direct.enabled
        assert _gets(endpoint, bucket) == [f"/{bucket}/p/f0.txt"] * 2  # the throttled direct GET, boto3's retry
        assert "direct GETs off for the rest of this run (HTTP 503)" in caplog.text
        before = src.stats.direct_gets
        report = verify(src, manifest, VerifyOptions())
        assert (report.findings, report.files_verified) == ([], len(files))
        assert src.stats.direct_gets == before  # off for the rest of the run: boto3 did the others


@pytest.mark.parametrize("where", ["option", "environment"])
def test_boto3_validation_asked_for_keeps_every_get_in_boto3(tmp_path: Path, s3: Any, bucket: str,
                                                             endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch,
                                                             where: str) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"a.txt": b"a\n", "b.txt": b"b\n"})
    more: dict[str, Any] = {}
    if where == "option":
        more["response_checksum_validation"] = "when_supported"
    else:
        monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_SUPPORTED")
    with s3_source(endpoint, f"s3://{bucket}/p", **more) as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
        assert (report.findings, report.files_verified) == ([], 2)
        assert src._conn.direct is None and src.stats.direct_gets == 0
