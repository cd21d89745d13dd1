"""Chain heads anchored to S3 objects under Object Lock, against the real moto S3 server in its own
process (boto3 over HTTP, no patched client): each head written with its retention by the CLI's runs,
a locked head cannot be deleted, and `audit verify --against s3://...` detects deleted newest runs and a
rewritten chain that the database alone cannot show."""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reversib.evidence.anchor import render, sign_document
from reversib.evidence.anchor_s3 import AnchorError, S3Heads
from reversib.evidence.chain import Head, backfill, heads_t, links_t
from reversib.history import History, findings_t, runs_t
from tests.cli_helpers import run_cli
from tests.evidence.conftest import sh, write_export
from tests.s3.conftest import Endpoint, running_endpoint
from tests.s3.helpers import KEY_ID, SECRET, isolate_aws


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    with running_endpoint(tmp_path_factory.mktemp("moto-anchor")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    isolate_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("REVERSIB_TEST_S3_SECRET", SECRET)


def options(moto: Endpoint) -> dict[str, Any]:
    return {"endpoint_url": moto.url, "addressing_style": "path", "region": "us-east-1",
            "access_key_id": KEY_ID, "secret_access_key_env": "REVERSIB_TEST_S3_SECRET", "max_attempts": 2}


@pytest.fixture
def s3(moto: Endpoint) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET, config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def locked_bucket(s3: Any) -> str:
    name = f"heads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


class Setup:
    def __init__(self, tmp: Path, moto: Endpoint, bucket: str, mode: str = "COMPLIANCE") -> None:
        export = write_export(tmp / "export")
        (tmp / "checks").mkdir()
        (tmp / "checks" / "acme.yaml").write_text(yaml.safe_dump({
            "version": 1, "id": "acme", "name": "ACME daily", "source": {"url": str(export)},
            "manifest": {"path": "SHA256SUMS"}}))
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "reversib", "-f", str(tmp / "signing_key"))
        self.url = f"s3://{bucket}/reversib/heads"
        self.config = tmp / "reversib.yaml"
        self.config.write_text(yaml.safe_dump({
            "version": 1, "checks_dir": "checks", "history": {"url": "sqlite:///history.db"},
            "evidence": {"signing_key_file": "signing_key",
                         "heads_s3": {"url": self.url, "mode": mode, "retention_days": 30, "s3": options(moto)}}}))
        self.db = tmp / "history.db"

    def cli(self, *args: str) -> tuple[int, str, str]:
        err = io.StringIO()
        with redirect_stderr(err):
            code, out = run_cli([*args, "--config", str(self.config)], self.db)
        return code, out, err.getvalue()

    def history(self) -> History:
        return History(f"sqlite:///{self.db}")


def test_each_run_writes_a_locked_signed_head_and_audit_reads_them_back(tmp_path: Path, moto: Endpoint, s3: Any,
                                                                        locked_bucket: str) -> None:
    st = Setup(tmp_path, moto, locked_bucket)
    for _ in range(3):
        assert st.cli("verify-now", "acme", "--no-progress")[0] == 0
    listed = s3.list_objects_v2(Bucket=locked_bucket)["Contents"]
    keys = [o["Key"] for o in listed]
    assert keys == [f"reversib/heads/acme/{seq:020d}.json" for seq in (1, 2, 3)]
    head = s3.head_object(Bucket=locked_bucket, Key=keys[-1])
    assert head["ObjectLockMode"] == "COMPLIANCE"
    retain = head["ObjectLockRetainUntilDate"]
    expected = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)
    assert abs((retain - expected).total_seconds()) < 120
    code, out, _ = st.cli("audit", "verify", "--against", st.url)
    assert code == 0, out
    assert out.strip() == f"OK: 1 chains, 3 links, 3 heads checked against {st.url}"  # every head object

    # a locked head cannot be deleted: the version delete is refused; a plain delete only hides it
    version = s3.list_object_versions(Bucket=locked_bucket, Prefix=keys[-1])["Versions"][0]["VersionId"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=locked_bucket, Key=keys[-1], VersionId=version)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    s3.delete_object(Bucket=locked_bucket, Key=keys[-1])  # a delete marker
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=locked_bucket)["Contents"]] == keys[:2]

    # then someone deletes the newest run from the database, cleanly (invisible from inside)
    with st.history() as h, h.engine.begin() as conn:
        newest = conn.execute(sa.select(links_t).where(links_t.c.seq == 3)).mappings().one()
        second = conn.execute(sa.select(links_t).where(links_t.c.seq == 2)).mappings().one()
        conn.execute(runs_t.delete().where(runs_t.c.id == newest["run_id"]))
        conn.execute(links_t.delete().where(links_t.c.seq == 3))
        conn.execute(heads_t.update().values(seq=2, run_id=second["run_id"], record_digest=second["record_digest"]))
    assert st.cli("audit", "verify")[0] == 0
    code, out, _ = st.cli("audit", "verify", "--against", st.url)
    assert code == 1
    assert f"acme: anchor: the signed head (link 3, run {newest['run_id']}) is gone" in out


def test_a_rewritten_chain_is_detected_against_the_s3_heads(tmp_path: Path, moto: Endpoint, s3: Any,
                                                            locked_bucket: str) -> None:
    st = Setup(tmp_path, moto, locked_bucket, mode="GOVERNANCE")
    export = tmp_path / "export"
    original = (export / "a.txt").read_bytes()
    for i in range(4):
        if i == 1:
            (export / "a.txt").write_bytes(b"tampered\n")
        assert st.cli("verify-now", "acme", "--no-progress")[0] == (1 if i == 1 else 0)
        (export / "a.txt").write_bytes(original)
    head = s3.head_object(Bucket=locked_bucket, Key="reversib/heads/acme/00000000000000000004.json")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    with st.history() as h, h.engine.begin() as conn:  # the failure becomes a pass, everything re-chained
        failed = conn.execute(sa.select(runs_t.c.id).where(runs_t.c.outcome == "failed")).scalar_one()
        conn.execute(runs_t.update().where(runs_t.c.id == failed).values(outcome="passed", counts={}))
        conn.execute(findings_t.delete().where(findings_t.c.run_id == failed))
        conn.execute(links_t.delete())
        conn.execute(heads_t.delete())
        assert backfill(conn, h._now()) == 4
    assert st.cli("audit", "verify")[0] == 0
    code, out, _ = st.cli("audit", "verify", "--against", st.url)
    assert code == 1 and "acme: anchor: the signed head (link 2" in out and "the chain was rewritten" in out
    # the next runs anchor new heads (links 5, 6) over the rewritten chain: the older objects still tell
    for _ in range(2):
        assert st.cli("verify-now", "acme", "--no-progress")[0] == 0
    code, out, _ = st.cli("audit", "verify", "--against", st.url)
    assert code == 1 and "acme: anchor: the signed head (link 2" in out and "the chain was rewritten" in out
    assert "(and 2 later signed heads)" in out and "6 heads checked" in out


def test_a_forged_head_object_is_untrusted(tmp_path: Path, moto: Endpoint, s3: Any, locked_bucket: str) -> None:
    st = Setup(tmp_path, moto, locked_bucket)
    assert st.cli("verify-now", "acme", "--no-progress")[0] == 0
    # someone with write access to the bucket but not the key puts a newer head
    forged = sign_document({"kind": "reversib-chain-head", "schema": 1, "signed_at": "2026-01-01T00:00:00.000000Z",
                            "check_id": "acme", "seq": 9, "run_id": "f" * 32, "record_digest": "0" * 64},
                           Ed25519PrivateKey.generate())
    s3.put_object(Bucket=locked_bucket, Key="reversib/heads/acme/00000000000000000009.json", Body=render(forged))
    code, _, err = st.cli("audit", "verify", "--against", st.url)
    assert code == 1 and "cannot be trusted" in err and "not by the expected key" in err


def test_a_bucket_without_object_lock_is_refused(tmp_path: Path, moto: Endpoint, s3: Any) -> None:
    plain = f"plain-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=plain)
    heads = S3Heads(f"s3://{plain}/h", options(moto), retention_days=1)
    key = Ed25519PrivateKey.generate()
    with pytest.raises(AnchorError, match=f"cannot write the signed head h/acme/00000000000000000001.json to "
                                          f"s3://{plain}/h at {moto.url}"):
        heads.write(Head("acme", 1, "a" * 32, "b" * 64), key, dt.datetime.now(dt.timezone.utc))
    assert SECRET not in str(heads._fail("x", Exception(SECRET)))
    heads.close()


def test_unreachable_bucket_is_could_not_verify(tmp_path: Path, moto: Endpoint, locked_bucket: str) -> None:
    st = Setup(tmp_path, moto, locked_bucket)
    assert st.cli("verify-now", "acme", "--no-progress")[0] == 0
    code, _, err = st.cli("audit", "verify", "--against", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    assert code == 2 and "could not read the chain heads" in err and "NoSuchBucket" in err

