"""A database dump inside an encrypted archive: handed to the dump checks and restored into the real
PostgreSQL server, streamed from the archive (decrypted and decompressed on the fly), never written in clear."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from reversib.config import CheckConfig
from reversib.model import Outcome
from tests.archives.conftest import age_encrypt, make_tar, make_tree, need, run
from tests.archives.conftest import age_keys as age_keys  # the session fixture, shared

from .test_postgres import EXPECT, custom

pytestmark = pytest.mark.service


def test_a_dump_inside_an_encrypted_archive_is_restored_without_plaintext_on_disk(
        tmp_path: Path, sample_db: str, dump_dir: Path, restore_env: str, age_keys: dict[str, Any]) -> None:
    need("age")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(custom(sample_db, dump_dir), src / "crm.dump")
    tree = make_tree(tmp_path, {"crm.dump": (src / "crm.dump").read_bytes(), "readme.txt": b"export\n"})
    drop = tmp_path / "drop"
    drop.mkdir()
    age_encrypt(make_tar(tree, tmp_path / "x.tar.zst"), age_keys["customer"]["recipient"], drop / "x.tar.zst.age")
    (tmp_path / "x.tar.zst").unlink()
    shutil.rmtree(tree)
    shutil.rmtree(src)
    check = CheckConfig.model_validate({
        "version": 1, "name": "dump-in-archive", "source": {"url": str(drop)},
        "archive": {"path": "x.tar.zst.age", "decrypt": {"identity_file": str(age_keys["customer"]["identity"])}},
        "dumps": [{"path": "*.dump", **EXPECT, "restore": {"target_url_env": restore_env}}]})
    before = {p for p in tmp_path.rglob("*")}
    result = run(check, tmp_path)
    assert result.outcome is Outcome.PASSED, result.findings
    restored = [f for f in result.findings if f.kind.value == "restored"]
    assert len(restored) == 1 and "23000 rows" in (restored[0].actual or "")
    assert restored[0].path == "x.tar.zst.age!/crm.dump"
    created = {p.name for p in {p for p in tmp_path.rglob("*")} - before}
    assert created <= {"history.db", "history.db-journal", "history.db-wal", "history.db-shm"}, created
