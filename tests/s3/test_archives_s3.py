"""Archives on the real S3 endpoint (moto over HTTP): an age-encrypted tar.zst read once as a stream that
resumes after a cut connection, a zip read through ranged GETs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from reversib.config import CheckConfig
from reversib.model import Outcome
from tests.archives.conftest import FILES, age_encrypt, kinds, make_tar, make_tree, make_zip, run
from tests.archives.conftest import age_keys as age_keys  # the session fixture, shared
from tests.s3.conftest import Endpoint
from tests.s3.helpers import s3_options

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]


def _check(endpoint: Endpoint, bucket: str, archive: dict[str, Any], **more: Any) -> CheckConfig:
    return CheckConfig.model_validate({"version": 1, "name": "s3-archive",
                                       "source": {"url": f"s3://{bucket}/drop", "s3": s3_options(endpoint.url)},
                                       "archive": archive, **more})


def _gets(endpoint: Endpoint, bucket: str, key: str) -> list[str | None]:
    return [rng for method, path, rng in endpoint.requests() if method == "GET" and path == f"/{bucket}/{key}"]


def test_an_encrypted_tar_on_s3_is_read_once_and_resumes_after_a_cut(tmp_path: Path, s3: Any, bucket: str,
                                                                      endpoint: Endpoint,
                                                                      age_keys: dict[str, Any]) -> None:
    tree = make_tree(tmp_path)
    enc = age_encrypt(make_tar(tree, tmp_path / "a.tar.zst"), age_keys["customer"]["recipient"], tmp_path / "a.age")
    body = enc.read_bytes()
    s3.put_object(Bucket=bucket, Key="drop/acme.tar.zst.age", Body=body)
    s3.put_object(Bucket=bucket, Key="drop/SHA256SUMS",
                  Body=f"{hashlib.sha256(body).hexdigest()}  acme.tar.zst.age\n".encode())
    endpoint.reset()
    endpoint.faults(cut={f"/{bucket}/drop/acme.tar.zst.age": len(body) // 3})
    check = _check(endpoint, bucket, {"path": "acme.tar.zst.age", "format": "tar.zst",  # nothing to sniff
                                      "decrypt": {"method": "age",
                                                  "identity_file": str(age_keys["customer"]["identity"])}},
                   manifest={"path": "SHA256SUMS"})
    result = run(check, tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.files_verified == len(FILES) + 1
    gets = _gets(endpoint, bucket, "drop/acme.tar.zst.age")
    # the sniffed head, then one streamed read that resumed once from where the connection was cut
    # one streamed read of the object, resumed once with a ranged GET from where the connection was cut
    assert gets == [None, f"bytes={len(body) // 3}-"], gets


def test_a_zip_on_s3_is_read_through_ranged_gets(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint) -> None:
    tree = make_tree(tmp_path)
    body = make_zip(tree, tmp_path / "acme.zip").read_bytes()
    s3.put_object(Bucket=bucket, Key="drop/acme.zip", Body=body)
    s3.put_object(Bucket=bucket, Key="drop/SHA256SUMS",
                  Body=f"{hashlib.sha256(body).hexdigest()}  acme.zip\n".encode())
    endpoint.reset()
    result = run(_check(endpoint, bucket, {"path": "acme.zip"}, manifest={"path": "SHA256SUMS"}), tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    gets = _gets(endpoint, bucket, "drop/acme.zip")
    assert 1 <= len(gets) <= 8, gets  # the central directory, then the members as one sequential stream

    # one member changed inside the zip: exactly one finding, on that member
    (tree / "crm/deals.json").write_bytes(b'{"deals": [1, 2, 4]}\n')
    (tmp_path / "acme.zip").unlink()
    s3.put_object(Bucket=bucket, Key="drop/acme.zip", Body=make_zip(tree, tmp_path / "acme.zip").read_bytes())
    result = run(_check(endpoint, bucket, {"path": "acme.zip"}), tmp_path)
    assert kinds(result) == [("digest_mismatch", "acme.zip!/crm/deals.json")]
