"""MySQL/MariaDB dumps made by the real mysqldump from a sample database on the real MariaDB server,
restored into that server as a user limited to the `reversib\\_restore\\_%` databases."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import require_service

from .conftest import finding, kinds, run_dumps

pytestmark = pytest.mark.service

MY_HOST, MY_PORT = "127.0.0.1", 3306
USER = "reversib_restore_test"
URL = f"mysql://{USER}@{MY_HOST}:{MY_PORT}/"


def mysql_root(sql: str, db: str | None = None) -> str:
    exe = shutil.which("mariadb") or shutil.which("mysql")
    if exe is None:
        require_service("mysql", "client tool is not installed")
    argv = [exe, "--no-defaults", "-h", MY_HOST, "-P", str(MY_PORT), "-uroot", "-N", "-B"]
    if db:
        argv.append(f"--database={db}")
    proc = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return proc.stdout


def scratch_dbs() -> list[str]:
    return [n for n in mysql_root("SHOW DATABASES;").split() if n.startswith("reversib_restore_")]


@pytest.fixture(scope="module")
def my_sample() -> Iterator[str]:
    try:
        mysql_root("SELECT 1;")
    except (RuntimeError, OSError) as exc:
        require_service("MariaDB", f"not reachable at {MY_HOST}:{MY_PORT}: {exc}")
    name = f"reversib_test_{uuid.uuid4().hex[:10]}"
    mysql_root(f"CREATE DATABASE {name};")
    mysql_root("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100), note TEXT);"
               "INSERT INTO customers SELECT seq, CONCAT('c', seq), IF(seq % 7 = 0, 'it''s \\\\ odd', NULL) "
               "FROM seq_1_to_5000;"
               "CREATE TABLE orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2));"
               "INSERT INTO orders SELECT seq, seq % 100 + 1, seq * 1.5 FROM seq_1_to_800;", name)
    mysql_root(f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1';"
               f"GRANT ALL ON `reversib\\_restore\\_%`.* TO '{USER}'@'127.0.0.1';")
    yield name
    mysql_root(f"DROP DATABASE IF EXISTS {name};")
    for db in scratch_dbs():
        mysql_root(f"DROP DATABASE IF EXISTS `{db}`;")


@pytest.fixture(scope="module")
def my_dump(my_sample: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    exe = shutil.which("mariadb-dump") or shutil.which("mysqldump")
    if exe is None:
        require_service("mysqldump", "client tool is not installed")
    out = subprocess.run([exe, "--no-defaults", "-h", MY_HOST, "-P", str(MY_PORT), "-uroot", "--single-transaction",
                          my_sample], check=True, capture_output=True).stdout
    return out


@pytest.fixture
def my_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MY_RESTORE_URL", URL)
    return "MY_RESTORE_URL"


EXPECT = {"expect_tables": ["customers", "orders"], "row_counts": {"customers": 5000, "orders": ">= 800"},
          "assertions": ["SELECT SUM(amount) > 0 FROM orders",
                         "SELECT COUNT(*) = 714 FROM customers WHERE note = 'it''s \\\\ odd'"]}


@pytest.mark.parametrize("gz", [False, True])
def test_good_mysqldump_passes_both_levels(gz: bool, tmp_path: Path, my_dump: bytes, my_env: str) -> None:
    name, data = ("db.sql.gz", gzip.compress(my_dump)) if gz else ("db.sql", my_dump)
    code, doc = run_dumps(tmp_path, {name: data},
                          [{"path": "db.sql*", **EXPECT, "restore": {"target_url_env": my_env}}])
    run = doc["runs"][0]
    assert (code, kinds(doc)) == (0, ["restored"]), run["findings"]
    assert "2 row counts, 5800 rows" in finding(doc, "restored")["actual"]
    assert run["restore_seconds"] > 0 and run["restore_bytes"] == len(my_dump)
    assert scratch_dbs() == []


def test_truncated_mysqldump(tmp_path: Path, my_dump: bytes) -> None:
    code, doc = run_dumps(tmp_path, {"db.sql": my_dump[: len(my_dump) // 2]}, [{"path": "db.sql"}])
    assert code == 1 and kinds(doc) == ["dump_truncated"]


def test_too_few_rows_and_failing_assertion(tmp_path: Path, my_dump: bytes, my_env: str) -> None:
    code, doc = run_dumps(tmp_path, {"db.sql": my_dump}, [{
        "path": "db.sql", "row_counts": {"customers": 5001, "missing_table": 1},
        "assertions": ["SELECT SUM(amount) < 0 FROM orders", "DELETE FROM orders"],
        "restore": {"target_url_env": my_env}}])
    assert code == 1
    assert kinds(doc) == ["assertion_failed", "assertion_failed", "restored", "row_count_mismatch", "table_missing"]
    assert scratch_dbs() == []


@pytest.mark.parametrize("line", ["system touch {marker}", "\\! touch {marker}", "USE mysql;",
                                  "SELECT 1 INTO OUTFILE '{marker}';"])
def test_hostile_mysqldump_is_refused(line: str, tmp_path: Path, my_dump: bytes, my_env: str) -> None:
    marker = tmp_path / "pwned"
    lines = my_dump.splitlines(keepends=True)
    hostile = b"".join([*lines[:20], line.format(marker=marker).encode() + b"\n", *lines[20:]])
    code, doc = run_dumps(tmp_path, {"db.sql": hostile}, [{"path": "db.sql", "restore": {"target_url_env": my_env}}])
    assert code == 1
    assert kinds(doc) == ["dump_refused"]
    assert finding(doc, "dump_refused")["actual"].startswith("line 21: ")
    assert not marker.exists()
    assert scratch_dbs() == []


def test_over_privileged_user_is_could_not_verify(tmp_path: Path, my_dump: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_ROOT_URL", f"mysql://root@{MY_HOST}:{MY_PORT}/")
    code, doc = run_dumps(tmp_path, {"db.sql": my_dump}, [{"path": "db.sql",
                                                          "restore": {"target_url_env": "MY_ROOT_URL"}}])
    assert (code, kinds(doc)) == (2, ["dump_unverifiable"])
    assert "privileges beyond" in finding(doc, "dump_unverifiable")["actual"]
    assert scratch_dbs() == []
