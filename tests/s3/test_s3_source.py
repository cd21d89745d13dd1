"""The S3 source against a real endpoint (moto over HTTP): listing, manifests in the bucket, stored checksums,
faults injected by the endpoint's fault layer, and errors that never show a secret."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from reversib.config import CheckConfig
from reversib.manifests import load_manifest
from reversib.sources import open_source
from reversib.sources import s3 as s3mod
from reversib.sources.base import SourceError
from reversib.sources.s3 import S3Source, parse_s3_url
from reversib.sources.s3_options import S3Options
from reversib.verify import VerifyOptions, verify
from tests.cli_helpers import findings_of, run_cli, verify_json
from tests.s3.conftest import Endpoint
from tests.s3.helpers import KEY_ID, SECRET, s3_options, s3_source, upload_export, write_check

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]




def _gets(endpoint: Endpoint, bucket: str, key: str) -> list[str | None]:
    return [rng for method, path, rng in endpoint.requests() if method == "GET" and path == f"/{bucket}/{key}"]


# -- URLs, options ------------------------------------------------------------------------

def test_url_prefix_semantics() -> None:
    assert parse_s3_url("s3://b") == ("b", "")
    assert parse_s3_url("s3://b/") == ("b", "")
    assert parse_s3_url("s3://b/x/y") == ("b", "x/y/")
    assert parse_s3_url("s3://b/x/y/") == ("b", "x/y/")
    assert parse_s3_url("s3://b/a%20b c") == ("b", "a%20b c/")  # literal: never percent-decoded
    with pytest.raises(SourceError):
        parse_s3_url("s3:///x")
    src = S3Source("s3://b/x/y")
    assert src.relative("s3://b/x/y/SHA256SUMS") == "SHA256SUMS"
    assert src.relative("s3://b/x/y/sub/m.json") == "sub/m.json"
    assert src.relative("s3://b/x/y") == "" and src.relative("s3://b/x/y/") == ""
    assert src.relative("s3://b/x/yz/SHA256SUMS") is None
    assert src.relative("s3://other/x/y/SHA256SUMS") is None
    assert src.relative("/local/SHA256SUMS") is None
    assert src.sub("2026-11-27").prefix == "x/y/2026-11-27/"


def test_options_never_take_a_secret_inline() -> None:
    with pytest.raises(ValidationError, match="extra"):
        S3Options.model_validate({"access_key_id": "AKIA1", "secret_access_key": "s"})
    with pytest.raises(ValidationError, match="both an access key id"):
        S3Options.model_validate({"access_key_id": "AKIA1"})
    with pytest.raises(ValidationError, match="only one of"):
        S3Options.model_validate({"access_key_id": "A", "access_key_id_env": "B", "secret_access_key_env": "C"})
    with pytest.raises(ValidationError, match="external_id needs role_arn"):
        S3Options.model_validate({"external_id": "x"})
    with pytest.raises(ValidationError, match="concurrency"):
        S3Options.model_validate({"concurrency": 64, "max_connections": 8})
    with pytest.raises(ValidationError, match=r"source\.s3 options given for a file"):
        CheckConfig.model_validate({"version": 1, "name": "x", "source": {"url": "/tmp", "s3": {}}})


def test_constructor_does_not_connect() -> None:
    src = S3Source("s3://bucket/p", S3Options(endpoint_url="http://127.0.0.1:9"))
    assert not src._conn.connected
    src.close()


# -- listing ------------------------------------------------------------------------------

def test_listing_is_canonical_across_pages(s3: Any, bucket: str, endpoint: Endpoint,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ["p/a", "p/a b", "p/a+b", "p/a/b", "p/a%2Fb", "p/é", "p/z", "p/日本", "p/A", "p/a.txt", "p/a-b"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    s3.put_object(Bucket=bucket, Key="p/dir/", Body=b"")  # a directory marker
    s3.put_object(Bucket=bucket, Key="p", Body=b"the prefix itself is not below it")
    s3.put_object(Bucket=bucket, Key="pq/x", Body=b"a sibling prefix")
    monkeypatch.setattr(s3mod, "PAGE_SIZE", 3)
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        entries = list(src.iter_entries())
        paths = [e.path for e in entries]
        assert paths == sorted(k[2:] for k in keys)  # code-point order == UTF-8 byte order
        assert paths == sorted(paths, key=lambda p: p.encode())
        assert all(e.size == len(("p/" + e.path).encode()) and e.mtime for e in entries)
        assert src.stats.lists >= 4  # really paged
        assert src.child_dirs() == ["a", "dir"]
        assert src.stat("a b") is not None and src.stat("a b").size == 5  # type: ignore[union-attr]
        assert src.stat("nope") is None and src.stat("dir") is None


def test_missing_bucket_is_a_source_error(endpoint: Endpoint) -> None:
    with s3_source(endpoint, "s3://no-such-bucket-here/p") as src, pytest.raises(SourceError) as err:
        list(src.iter_entries())
    assert "bucket no-such-bucket-here does not exist at " + endpoint.url in str(err.value)
    with s3_source(endpoint, "s3://no-such-bucket-here/p") as src, pytest.raises(SourceError, match="does not exist"):
        src.stat("SHA256SUMS")  # a HEAD's bare 404 is not taken for a missing key


def test_protection_status(s3: Any, endpoint: Endpoint, bucket: str) -> None:
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        assert src.describe_protection() == {"versioning": "never enabled", "object_lock": "not enabled"}
    s3.create_bucket(Bucket=bucket + "-locked", ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(Bucket=bucket + "-locked", ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}})
    with s3_source(endpoint, f"s3://{bucket}-locked/p") as src:
        assert src.describe_protection() == {"versioning": "Enabled",
                                             "object_lock": "enabled, default retention COMPLIANCE 30 days"}


# -- manifests in the bucket, ad-hoc runs with boto3's environment ------------------------

def test_adhoc_manifest_in_the_bucket(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`verify-now --source s3://b/p --manifest s3://b/p/SHA256SUMS` with only boto3's standard environment."""
    upload_export(tmp_path, s3, bucket, "p/", {"a.txt": b"a\n", "sub/b c.txt": b"b\n"})
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint.url)
    url = f"s3://{bucket}/p"
    for args in (["--manifest", f"{url}/SHA256SUMS"], []):  # given, then found at the export root
        code, doc = verify_json(["--source", url, *args], tmp_path / "h.db")
        assert (code, findings_of(doc)) == (0, []), doc
        assert doc["runs"][0]["files_verified"] == 2
    s3.copy_object(Bucket=bucket, Key="manifests/acme.sha256", CopySource={"Bucket": bucket, "Key": "p/SHA256SUMS"})
    s3.delete_object(Bucket=bucket, Key="p/SHA256SUMS")
    code, doc = verify_json(["--source", url, "--manifest", f"s3://{bucket}/manifests/acme.sha256"],
                            tmp_path / "h.db")
    assert (code, findings_of(doc)) == (0, []), doc  # outside the export, same bucket


# -- stored checksums ---------------------------------------------------------------------

def test_stored_checksums_tier(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    files = {"a.bin": os.urandom(5000), "b/c.txt": b"hello\n"}
    root = upload_export(tmp_path, s3, bucket, "p/", {})
    for rel, data in files.items():
        s3.put_object(Bucket=bucket, Key="p/" + rel, Body=data, ChecksumAlgorithm="SHA256")
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {r}\n" for r, d in sorted(files.items()))
    s3.put_object(Bucket=bucket, Key="p/SHA256SUMS", Body=sums.encode())
    body = {"source": {"url": f"s3://{bucket}/p", "s3": s3_options(endpoint.url)},
            "manifest": {"path": "SHA256SUMS"}, "fixity": {"accept": ["stored_checksum"]}}
    cfg = write_check(root.parent, "stored", body)
    endpoint.reset()
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    run = doc["runs"][0]
    assert (code, findings_of(doc)) == (0, [])
    assert run["tiers"] == {"stored_checksum": 2} and run["bytes_verified"] == 0
    assert not [r for r in endpoint.requests() if r[0] == "GET" and r[1].startswith(f"/{bucket}/p/")
                and not r[1].endswith("SHA256SUMS")], "an object was downloaded"
    # the same without accepting the tier: downloaded
    code, doc = verify_json(["--config", str(cfg.parent.parent / "config" / "reversib.yaml"), "--all"],
                            tmp_path / "h.db")
    assert doc["runs"][0]["tiers"] == {"stored_checksum": 2}
    body["fixity"] = {}
    cfg = write_check(root.parent, "stored", body)
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    assert doc["runs"][0]["tiers"] == {"downloaded": 2}
    # a manifest digest that differs from the stored checksum: digest_mismatch, said to come from metadata
    wrong = sums.replace(hashlib.sha256(files["b/c.txt"]).hexdigest(), "0" * 64)
    s3.put_object(Bucket=bucket, Key="p/SHA256SUMS", Body=wrong.encode())
    body["fixity"] = {"accept": ["stored_checksum"]}
    cfg = write_check(root.parent, "stored", body)
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    assert findings_of(doc) == [("digest_mismatch", "b/c.txt")] and code == 1
    assert "stored_checksum: S3 ChecksumSHA256 (full object)" in doc["runs"][0]["findings"][0]["detail"]


def test_etag_is_md5_only_for_single_part_unencrypted(s3: Any, bucket: str, endpoint: Endpoint) -> None:
    data = b"etag me\n"
    s3.put_object(Bucket=bucket, Key="p/plain", Body=data)
    s3.put_object(Bucket=bucket, Key="p/kms", Body=data, ServerSideEncryption="aws:kms")
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        by_path = {e.path: e for e in src.iter_entries()}
        got = src.digests_without_download(by_path["plain"], ("md5", "sha256"))
        assert got is not None and got.digests == {"md5": hashlib.md5(data).hexdigest()}
        assert got.tier == "stored_checksum"
        assert src.digests_without_download(by_path["kms"], ("md5",)) is None
    with s3_source(endpoint, f"s3://{bucket}/p", trust_etag_md5=False) as src:
        assert src.digests_without_download(by_path["plain"], ("md5",)) is None


# -- faults ---------------------------------------------------------------------------------

def test_slowdown_bursts_are_retried(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    files = {f"f{i:02d}.txt": f"file {i}\n".encode() for i in range(12)}
    upload_export(tmp_path, s3, bucket, "p/", files)
    cfg = write_check(tmp_path, "slow", {"source": {"url": f"s3://{bucket}/p",
                                                    "s3": s3_options(endpoint.url, max_attempts=5)}})
    endpoint.reset()
    endpoint.faults(slowdown=3)
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    assert (code, findings_of(doc)) == (0, []), doc
    assert doc["runs"][0]["files_verified"] == len(files)
    # once more with the burst longer than the attempts of one request: could not verify, never a pass
    endpoint.faults(slowdown=100)
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    assert (code, doc["outcome"]) == (2, "error")
    assert "SlowDown" in doc["runs"][0]["error"] or "HTTP 503" in doc["runs"][0]["error"]


def test_cut_connection_resumes_with_one_ranged_get(tmp_path: Path, s3: Any, bucket: str,
                                                    endpoint: Endpoint) -> None:
    data = os.urandom(300_000)
    upload_export(tmp_path, s3, bucket, "p/", {"big.bin": data, "small.txt": b"small\n"})
    endpoint.reset()
    endpoint.faults(cut={f"/{bucket}/p/big.bin": 100_000})
    with s3_source(endpoint, f"s3://{bucket}/p") as src:
        manifest = load_manifest(src, "SHA256SUMS")
        report = verify(src, manifest, VerifyOptions())
        assert report.findings == [] and report.files_verified == 2 and report.bytes_verified == 300_006
        assert src.stats.resumes == 1
    assert _gets(endpoint, bucket, "p/big.bin") == [None, "bytes=100000-"]


def test_cut_connection_through_the_cli(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"big.bin": os.urandom(200_000)})
    cfg = write_check(tmp_path, "cut", {"source": {"url": f"s3://{bucket}/p", "s3": s3_options(endpoint.url)}})
    endpoint.reset()
    endpoint.faults(cut={f"/{bucket}/p/big.bin": 150_001})
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    assert (code, findings_of(doc)) == (0, [])
    assert _gets(endpoint, bucket, "p/big.bin") == [None, "bytes=150001-"]


def test_too_many_cuts_is_unreadable(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"big.bin": os.urandom(50_000)})
    endpoint.faults(cut={f"/{bucket}/p/big.bin": 10})
    with s3_source(endpoint, f"s3://{bucket}/p", max_resumes=0) as src:
        report = verify(src, load_manifest(src, "SHA256SUMS"), VerifyOptions())
    assert [(f.kind.value, f.path) for f in report.findings] == [("unreadable", "big.bin")]
    assert "connection broken 1 times" in (report.findings[0].actual or "")


@pytest.mark.parametrize(("times", "severity", "detail", "code"), [
    (1, "warning", "transient: second download matched", 0),
    (2, "error", "confirmed by a second download", 1),
])
def test_flipped_bit_in_transfer_is_rechecked(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint,
                                              times: int, severity: str, detail: str, code: int) -> None:
    """boto3's response validation off (as many S3-compatible stores need): reversib's own digest catches the
    flipped bit, and one more download tells a transfer fault from the stored data."""
    upload_export(tmp_path, s3, bucket, "p/", {"data.bin": os.urandom(70_000), "ok.txt": b"ok\n"})
    opts = s3_options(endpoint.url, response_checksum_validation="when_required")
    cfg = write_check(tmp_path, "flip", {"source": {"url": f"s3://{bucket}/p", "s3": opts}})
    endpoint.reset()
    endpoint.faults(flip={f"/{bucket}/p/data.bin": [4321, times]})
    got, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    run = doc["runs"][0]
    assert findings_of(doc) == [("digest_mismatch", "data.bin")]
    assert (run["findings"][0]["severity"], run["findings"][0]["detail"], got) == (severity, detail, code)
    assert len(_gets(endpoint, bucket, "p/data.bin")) == 2


# -- errors: named place, never the secret ----------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("fault", ["wrong_credentials", "unreachable"])
def test_errors_name_the_endpoint_never_the_secret(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint,
                                                   fault: str, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Sup3r-Secret-Value-never-printed/+="
    monkeypatch.setenv("PROVIDER_S3_SECRET", secret)
    upload_export(tmp_path, s3, bucket, "p/", {"a.txt": b"a\n"})
    url = endpoint.url if fault == "wrong_credentials" else f"http://127.0.0.1:{_closed_port()}"
    opts = s3_options(url, access_key_id="AKIAWRONGKEY00000000", secret_access_key_env="PROVIDER_S3_SECRET",
                      max_attempts=2)
    endpoint.faults(reject_keys=["AKIAWRONGKEY00000000"])
    cfg = write_check(tmp_path, "err", {"source": {"url": f"s3://{bucket}/p", "s3": opts}})
    code, text = run_cli(["verify-now", "--config", str(cfg), "--all", "--json", "--no-progress", "-v"],
                         tmp_path / "h.db")
    import json

    doc = json.loads(text)
    assert (code, doc["outcome"]) == (2, "error")
    error = doc["runs"][0]["error"]
    assert url in error and bucket in error
    if fault == "wrong_credentials":
        assert "access denied" in error and ("InvalidAccessKeyId" in error or "HTTP 403" in error)
    else:
        assert "cannot reach the S3 endpoint" in error
    captured = capsys.readouterr()
    history = (tmp_path / "h.db").read_bytes()
    for where in (text, captured.out, captured.err, history.decode("latin-1")):
        assert secret not in where
    code, plain = run_cli(["verify-now", "--config", str(cfg), "--all", "--no-progress"], tmp_path / "h.db")
    assert code == 2 and url in plain and secret not in plain + capsys.readouterr().err


def test_role_is_assumed(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    upload_export(tmp_path, s3, bucket, "p/", {"a.txt": b"a\n"})
    opts = s3_options(endpoint.url, role_arn="arn:aws:iam::123456789012:role/reader", external_id="x-1",
                      sts_endpoint_url=endpoint.url)
    with open_source(f"s3://{bucket}/p", CheckConfig.model_validate(
            {"version": 1, "name": "r", "source": {"url": f"s3://{bucket}/p", "s3": opts}}).source) as src:
        assert [e.path for e in src.iter_entries()] == ["SHA256SUMS", "a.txt"]
        creds = src._client()._request_signer._credentials
        assert creds.access_key != KEY_ID and creds.secret_key != SECRET  # the role's, not the base keys


def test_a_manifest_location_climbing_out_of_the_export_is_refused_not_missing(
        tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    """`--manifest s3://bucket/exp/../x`: never opened, and `could not verify` -- not `manifest_missing`
    (a failure that would accuse the provider)."""
    upload_export(tmp_path, s3, bucket, "exp/", {"a.txt": b"a\n"})
    s3.put_object(Bucket=bucket, Key="secret.txt", Body=b"not a manifest\n")
    cfg = write_check(tmp_path, "climb", {"source": {"url": f"s3://{bucket}/exp", "s3": s3_options(endpoint.url)},
                                          "manifest": {"location": f"s3://{bucket}/exp/../secret.txt"}})
    code, doc = verify_json(["--config", str(cfg), "--all"], tmp_path / "h.db")
    run = doc["runs"][0]
    assert (code, [f["kind"] for f in run["findings"]]) == (2, ["manifest_invalid"]), run
    assert "refused" in run["findings"][0]["actual"]


def test_an_endpoint_url_with_a_password_is_refused_unseen(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from reversib.cli import main

    cfg = write_check(tmp_path, "ep", {"source": {"url": "s3://bucket/exp",
                                                  "s3": {"endpoint_url": "http://user:EndpointPassSECRET@127.0.0.1:9"}}})
    assert main(["check-config", "--config", str(cfg)]) == 78
    out, err = capsys.readouterr()
    assert "source.s3.endpoint_url: a password" in err and "EndpointPassSECRET" not in out + err
