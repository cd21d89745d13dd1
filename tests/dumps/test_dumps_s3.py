"""Dumps on a real S3 endpoint (moto over HTTP), restored into the real PostgreSQL: a directory-format dump
copied once into a private folder by the structural pass, and a gzip-compressed custom dump whose streamed
read feeds both the structural walk and pg_restore (also from a local file: the same tee)."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reversib.config import CheckConfig
from reversib.history import History
from reversib.model import FindingKind, Outcome, RunResult
from reversib.runner import run_check
from tests.s3.conftest import Endpoint
from tests.s3.conftest import _aws_env as _aws_env  # the S3 tests' fixtures, shared
from tests.s3.conftest import bucket as bucket
from tests.s3.conftest import endpoint as endpoint
from tests.s3.conftest import s3 as s3
from tests.s3.conftest import s3_endpoint as s3_endpoint
from tests.s3.helpers import s3_options, upload_tree

from .conftest import kinds, run_dumps, scratch_dbs
from .test_pg_directory import directory
from .test_postgres import EXPECT, custom, restore_block

pytestmark = [pytest.mark.service, pytest.mark.timeout(180)]


def _run(tmp: Path, endpoint: Endpoint, bucket: str, dumps: list[dict[str, Any]]) -> RunResult:
    check = CheckConfig.model_validate({"version": 1, "name": "s3-dumps",
                                        "source": {"url": f"s3://{bucket}/drop", "s3": s3_options(endpoint.url)},
                                        "manifest": {"path": "SHA256SUMS"}, "dumps": dumps})
    with History.open(f"sqlite:///{tmp / 'history.db'}") as history:
        return run_check(check, history)


def _upload(s3: Any, bucket: str, tmp: Path, files: dict[str, bytes]) -> None:
    root = tmp / "upload"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "SHA256SUMS").write_text("".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items()))
    upload_tree(s3, bucket, "drop/", root)


def test_directory_dump_on_s3_is_read_once_and_restored(tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint,
                                                        sample_db: str, dump_dir: Path, restore_env: str,
                                                        pg_admin: sa.Engine) -> None:
    folder = directory(sample_db, dump_dir)
    _upload(s3, bucket, tmp_path, {f"db.dir/{f.name}": f.read_bytes() for f in folder.iterdir()})
    endpoint.reset()
    result = _run(tmp_path, endpoint, bucket, [{"path": "db.dir", **EXPECT, "restore": restore_block(restore_env)}])
    assert result.outcome is Outcome.PASSED, result.findings
    restored = [f for f in result.findings if f.kind is FindingKind.RESTORED]
    assert len(restored) == 1 and "23000 rows" in (restored[0].actual or "")
    data_gets = [(p, r) for m, p, r in endpoint.requests() if m == "GET" and p.endswith(".dat.gz")]
    # verification reads each file once, the dump check once more (structural pass + copy for pg_restore)
    assert len(data_gets) == 2 * len([f for f in folder.iterdir() if f.name.endswith(".dat.gz")]), data_gets
    assert scratch_dbs(pg_admin) == []


def test_compressed_custom_dump_on_s3_feeds_walk_and_restore(
        tmp_path: Path, s3: Any, bucket: str, endpoint: Endpoint, sample_db: str, dump_dir: Path, restore_env: str,
        pg_admin: sa.Engine) -> None:
    body = gzip.compress(custom(sample_db, dump_dir).read_bytes())
    _upload(s3, bucket, tmp_path, {"db.dump.gz": body})
    endpoint.reset()
    result = _run(tmp_path, endpoint, bucket, [{"path": "db.dump.gz", **EXPECT,
                                                "restore": restore_block(restore_env)}])
    assert result.outcome is Outcome.PASSED, result.findings
    assert result.restore_bytes == len(gzip.decompress(body))
    assert scratch_dbs(pg_admin) == []


@pytest.mark.parametrize("cut", [False, True])
def test_local_gzip_custom_dump_goes_through_the_tee(cut: bool, tmp_path: Path, sample_db: str, dump_dir: Path,
                                                     restore_env: str, pg_admin: sa.Engine) -> None:
    raw = custom(sample_db, dump_dir).read_bytes()
    data = gzip.compress(raw[: len(raw) * 2 // 3] if cut else raw)
    code, doc = run_dumps(tmp_path, {"db.dump.gz": data}, [{"path": "db.dump.gz", **EXPECT,
                                                            "restore": restore_block(restore_env)}])
    if cut:
        assert (code, kinds(doc)) == (1, ["dump_truncated"]), doc["runs"][0]["findings"]
    else:
        assert (code, kinds(doc)) == (0, ["restored"]), doc["runs"][0]["findings"]
        assert doc["runs"][0]["restore_bytes"] == len(raw)
    assert scratch_dbs(pg_admin) == []
    assert os.environ.get(restore_env)


def test_refused_role_with_a_streamed_dump_does_not_hang(tmp_path: Path, sample_db: str, dump_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch, pg_admin: sa.Engine) -> None:
    """The restore ends before reading anything (a superuser target is refused): the walk, whose chunks
    nobody takes any more, still runs to its end and the run is could-not-verify."""
    from tests.conftest import PG_HOST, PG_PORT

    monkeypatch.setenv("RESTORE_URL_SU", f"postgresql://postgres@{PG_HOST}:{PG_PORT}/")
    big = gzip.compress(custom(sample_db, dump_dir).read_bytes())
    code, doc = run_dumps(tmp_path, {"db.dump.gz": big},
                          [{"path": "db.dump.gz", "restore": {"target_url_env": "RESTORE_URL_SU"}}])
    assert (code, doc["runs"][0]["outcome"]) == (2, "error")
    assert kinds(doc) == ["dump_unverifiable"] and "superuser" in doc["runs"][0]["findings"][0]["actual"]
    assert scratch_dbs(pg_admin) == []



@pytest.mark.timeout(30)
def test_a_restore_that_ends_early_never_blocks_the_walk_feeding_it() -> None:
    """More chunks than the tee's queue holds, and a restore that fails before taking any: the walk
    must still reach its end (it is what reports the structural level)."""
    from reversib.dumps.base import Structure, unverifiable
    from reversib.dumps.postgres import _alongside, _Tee
    from reversib.sources.base import CancelToken

    tee = _Tee(iter([b"x" * 1024] * 200))

    def walk() -> Structure:
        n = sum(len(c) for c in tee.walked())
        return Structure("test", decoded_bytes=n)

    def refuse(token: CancelToken) -> Any:
        raise unverifiable("refused before reading")

    with pytest.raises(Exception, match="refused before reading"):
        _alongside(walk, refuse, CancelToken(), tee.close)
