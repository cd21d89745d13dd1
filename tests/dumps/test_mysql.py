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

from reversib.dumps import mysql
from reversib.dumps.base import private_dir
from reversib.dumps.scratch import Target, parse_target, scratch_name
from reversib.sources.base import CancelToken
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


def run_users() -> list[str]:
    """The per-run users (`reversib_<23 hex digits>`) on the server."""
    return mysql_root("SELECT CONCAT(User, '@', Host) FROM mysql.user WHERE User REGEXP '^reversib_[0-9a-f]{23}$';"
                      ).split()


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
    # CREATE USER and GRANT OPTION on the scratch databases: a user per run restores
    mysql_root(f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1';"
               f"GRANT CREATE USER ON *.* TO '{USER}'@'127.0.0.1';"
               f"GRANT ALL ON `reversib\\_restore\\_%`.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;")
    yield name
    mysql_root(f"DROP DATABASE IF EXISTS {name};")
    for db in scratch_dbs():
        mysql_root(f"DROP DATABASE IF EXISTS `{db}`;")
    for account in run_users():
        user, host = account.split("@", 1)
        mysql_root(f"DROP USER IF EXISTS '{user}'@'{host}';")


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
    assert scratch_dbs() == [] and run_users() == []


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
    assert scratch_dbs() == [] and run_users() == []


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


# ------------------------------------------------------------------ a user per run (isolation)


def _my_target() -> Target:
    return parse_target(URL)


@pytest.fixture
def my_victim(my_sample: str) -> Iterator[str]:
    """Another run's scratch database, with a table (a run this test's history does not know: kept)."""
    name = f"reversib_restore_{uuid.uuid4().hex}"
    mysql_root(f"CREATE DATABASE `{name}`; CREATE TABLE `{name}`.precious (x INT); "
               f"INSERT INTO `{name}`.precious VALUES (42);")
    yield name
    mysql_root(f"DROP DATABASE IF EXISTS `{name}`;")


def test_hostile_mysqldump_cannot_reach_another_runs_database(tmp_path: Path, my_dump: bytes, my_env: str,
                                                              my_victim: str) -> None:
    """A dump naming another run's scratch database (not refused by the scanner: a qualified table name)
    fails: the run's user is granted its own database only.  Its user is gone afterwards."""
    lines = my_dump.splitlines(keepends=True)
    hostile = b"".join([*lines[:20], f"DROP TABLE `{my_victim}`.precious;\n".encode(), *lines[20:]])
    code, doc = run_dumps(tmp_path, {"db.sql": hostile}, [{"path": "db.sql", "restore": {"target_url_env": my_env}}])
    assert (code, kinds(doc)) == (1, ["restore_failed"]), doc
    assert "denied" in finding(doc, "restore_failed")["actual"]
    assert mysql_root(f"SELECT x FROM `{my_victim}`.precious;").split() == ["42"]
    assert scratch_dbs() == [my_victim] and run_users() == []


def test_run_user_reaches_its_database_only(my_sample: str, my_victim: str, tmp_path: Path) -> None:
    """What a dump could try past the scanner, as the run's user: drop, read or write another run's
    database, create a database (even one its grant's `_` would match as a wildcard): all refused."""
    run_id = uuid.uuid4().hex
    name = scratch_name(run_id)
    user = mysql.run_user(run_id)
    assert len(user) == 32 and user.startswith("reversib_")
    account = f"'{user}'@'127.0.0.1'"
    mysql_root(f"CREATE DATABASE `{name}`;")
    try:
        with private_dir() as folder:
            admin = mysql._Client(_my_target(), folder, CancelToken())
            client = mysql._create_run_user(admin, name, account, folder, CancelToken(), user)
            assert client.target.password and client.target.password not in " ".join(client.argv(name))
            assert oct((folder / "run.cnf").stat().st_mode & 0o777) == "0o600"
            assert client.query("SELECT CURRENT_USER();") == [f"{user}@127.0.0.1"]
            client.query("CREATE TABLE mine (x INT); INSERT INTO mine VALUES (1);", name)
            wildcard = name.replace("_", "X", 2)  # reversibXrestoreX<id>: matched by an unescaped grant
            for sql in (f"DROP DATABASE `{my_victim}`;", f"SELECT * FROM `{my_victim}`.precious;",
                        f"INSERT INTO `{my_victim}`.precious VALUES (1);", f"CREATE DATABASE `{wildcard}`;",
                        f"CREATE DATABASE `reversib_restore_{uuid.uuid4().hex}`;"):
                with pytest.raises(mysql.MysqlError, match="denied"):
                    client.query(sql, name)
            assert mysql._drop(admin, name, account)
    finally:
        mysql_root(f"DROP USER IF EXISTS {account}; DROP DATABASE IF EXISTS `{name}`;")
    assert mysql_root(f"SELECT x FROM `{my_victim}`.precious;").split() == ["42"]
    assert run_users() == [] and name not in scratch_dbs()


def test_a_dead_runs_user_is_removed_at_the_next_start(tmp_path: Path, my_dump: bytes, my_env: str) -> None:
    """A run killed after creating its user: the next start drops its database and its user."""
    from reversib.history import History

    history_path = tmp_path / "h.db"
    history = History.open(f"sqlite:///{history_path}")
    run_id = history.start_run(check_id="x", check_name="x", trigger="cli", scheduled_for=None, labels={},
                               source="s", manifest=None)
    history.mark_interrupted(run_id, "test")
    history.close()
    name, user = scratch_name(run_id), mysql.run_user(run_id)
    mysql_root(f"CREATE DATABASE `{name}`; CREATE USER '{user}'@'127.0.0.1';"
               f"GRANT ALL ON `{name}`.* TO '{user}'@'127.0.0.1';")
    code, doc = run_dumps(tmp_path, {"db.sql": my_dump}, [{"path": "db.sql", "restore": {"target_url_env": my_env}}],
                          history=history_path)
    assert (code, kinds(doc)) == (0, ["restored"]), doc
    assert scratch_dbs() == [] and run_users() == []


def test_without_create_user_the_old_behaviour_with_a_warning(tmp_path: Path, my_dump: bytes, my_sample: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    plain_user = "reversib_restore_test_nocu"
    mysql_root(f"CREATE USER IF NOT EXISTS '{plain_user}'@'127.0.0.1';"
               f"GRANT ALL ON `reversib\\_restore\\_%`.* TO '{plain_user}'@'127.0.0.1';")
    monkeypatch.setenv("MY_NOCU_URL", f"mysql://{plain_user}@{MY_HOST}:{MY_PORT}/")
    code, doc = run_dumps(tmp_path, {"db.sql": my_dump}, [{"path": "db.sql", "row_counts": {"customers": 5000},
                                                          "restore": {"target_url_env": "MY_NOCU_URL"}}])
    assert (code, kinds(doc)) == (0, ["restored"]), doc
    assert f"restore user '{plain_user}' lacks CREATE USER" in capfd.readouterr().err
    assert scratch_dbs() == [] and run_users() == []


def test_the_run_users_password_goes_to_mariadb_as_its_hash(my_sample: str) -> None:
    """MariaDB's general log shows `CREATE USER ... IDENTIFIED BY '<password>'` in clear (MySQL 8 masks it):
    reversib sends `IDENTIFIED BY PASSWORD '<hash>'` there, the hash the server itself computes."""
    version = mysql_root("SELECT VERSION()").strip()
    if "MariaDB" not in version:
        pytest.skip(f"the hash form is for MariaDB; this server is {version}")
    password = "Tr0ub4dor&3"
    assert mysql.native_hash(password) == mysql_root(f"SELECT PASSWORD('{password}')").strip()
