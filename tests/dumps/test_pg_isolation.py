"""The restore runs as a per-run role (real PostgreSQL server): a hostile dump cannot reach another run's
scratch database nor create a database; the role is dropped with its database; its password is sent as a
SCRAM-SHA-256 verifier, never appears on a command line, and logs in over scram-sha-256 (a private
cluster with a password-only pg_hba)."""

from __future__ import annotations

import base64
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reversib.dumps import postgres, scratch
from reversib.dumps.scratch import (
    PgServer,
    parse_target,
    pg_drop,
    pg_preflight,
    psql,
    scram_verifier,
    scratch_name,
)
from reversib.sources.base import CancelToken
from tests.conftest import PG_HOST, PG_PORT
from tests.services import require_service

from .conftest import RESTORE_ROLE, finding, kinds, need_tool, pg_dump, psql_admin, run_dumps, run_roles, scratch_dbs

pytestmark = pytest.mark.service

_HEADER = "--\n-- PostgreSQL database dump\n--\nSET standard_conforming_strings = on;\n"
_FOOTER = "--\n-- PostgreSQL database dump complete\n--\n"


def databases(pg_admin: sa.Engine, pattern: str) -> list[str]:
    with pg_admin.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT datname FROM pg_database WHERE datname LIKE %(p)s",
                                                   {"p": pattern})]


@pytest.fixture
def victim(restore_env: str, pg_admin: sa.Engine) -> Iterator[tuple[str, PgServer]]:
    """The scratch database of another run on the same server (a run this test's history does not know,
    so never removed as dead), made as reversib makes one: its own role, CONNECT revoked from PUBLIC."""
    name = scratch_name(uuid.uuid4().hex)
    server = pg_preflight(parse_target(os.environ[restore_env]), CancelToken(), create=name)
    assert server.restorer is not None and server.restorer.user == name
    psql(server.restorer, "CREATE TABLE precious (x int); INSERT INTO precious VALUES (42);", CancelToken(),
         database=name)
    yield name, server
    pg_drop(parse_target(os.environ[restore_env]), name)


def _precious(name: str) -> str:
    return psql_admin(name, "SELECT x FROM precious").strip()


def test_per_run_role_and_database_attributes(victim: tuple[str, PgServer], pg_admin: sa.Engine) -> None:
    name, _ = victim
    with pg_admin.connect() as conn:
        role = conn.exec_driver_sql(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolconnlimit, "
            "rolpassword LIKE 'SCRAM-SHA-256$4096:%%' FROM pg_authid WHERE rolname = %(n)s", {"n": name}).one()
        db = conn.exec_driver_sql("SELECT pg_get_userbyid(datdba), datacl::text FROM pg_database "
                                  "WHERE datname = %(n)s", {"n": name}).one()
    assert tuple(role) == (True, False, False, False, False, False, scratch.CONNECTION_LIMIT, True)
    assert db[0] == name
    assert "=" not in db[1].replace(f"{name}=", "").replace(f'"{name}"=', ""), f"PUBLIC still granted: {db[1]}"
    assert name in scratch_dbs(pg_admin) and name in run_roles(pg_admin)


def test_a_run_role_cannot_connect_to_another_runs_database(victim: tuple[str, PgServer], restore_env: str) -> None:
    name, _ = victim
    mine = scratch_name(uuid.uuid4().hex)
    target = parse_target(os.environ[restore_env])
    server = pg_preflight(target, CancelToken(), create=mine)
    try:
        assert server.restorer is not None
        assert psql(server.restorer, "SELECT current_user;", CancelToken(), database=mine) == [mine]
        with pytest.raises(scratch.PsqlError, match="CONNECT privilege"):
            psql(server.restorer, "SELECT 1;", CancelToken(), database=name)
    finally:
        pg_drop(target, mine)
    assert _precious(name) == "42"


def _restore_plain(tmp_path: Path, body: str, restore_env: str) -> tuple[int, dict[str, Any]]:
    """A plain dump of table `t` (one row) followed by `body`, verified with a restore: (exit code, --json)."""
    sql = "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n" + body
    return run_dumps(tmp_path, {"a.sql": (_HEADER + sql + _FOOTER).encode()},
                     [{"path": "a.sql", "row_counts": {"t": 1}, "restore": {"target_url_env": restore_env}}])


def test_hostile_plain_dump_cannot_alter_another_runs_database(tmp_path: Path, victim: tuple[str, PgServer],
                                                               restore_env: str, pg_admin: sa.Engine) -> None:
    """A DO block with dynamic SQL renaming every other scratch database: the run's role owns none of them."""
    name, _ = victim
    body = ("DO $$ DECLARE d text; BEGIN FOR d IN SELECT datname FROM pg_database WHERE datname LIKE "
            "'reversib_restore_%' AND datname <> current_database() LOOP EXECUTE 'ALTER ' || 'DATABASE ' || "
            "quote_ident(d) || ' RENAME TO ' || quote_ident('pwned_' || md5(d)); END LOOP; END $$;\n")
    code, doc = _restore_plain(tmp_path, body, restore_env)
    assert (code, kinds(doc)) == (1, ["restore_failed"]), doc
    assert "must be owner of database" in finding(doc, "restore_failed")["actual"]
    assert _precious(name) == "42" and databases(pg_admin, "pwned\\_%") == []
    assert scratch_dbs(pg_admin) == [name] and run_roles(pg_admin) == [name]


def test_a_dump_revoking_the_targets_membership_still_leaves_nothing(tmp_path: Path, restore_env: str,
                                                                     pg_admin: sa.Engine) -> None:
    """The dump revokes the restore role's membership of the per-run role (which the drop of its database
    needs): refused by this server ("must have admin option"); where a role still administers itself, the
    cleanup takes the membership back first.  Either way nothing is left."""
    body = (f"DO $$ BEGIN EXECUTE 'REVOKE ' || quote_ident(current_user) || ' FROM {RESTORE_ROLE}'; END $$;\n")
    code, doc = _restore_plain(tmp_path, body, restore_env)
    assert code in (0, 1) and "dump_unverifiable" not in kinds(doc), doc
    with pg_admin.connect() as conn:
        left = conn.exec_driver_sql("SELECT rolname FROM pg_roles WHERE rolname = %(n)s UNION ALL SELECT datname "
                                    "FROM pg_database WHERE datname = %(n)s",
                                    {"n": scratch_name(doc["runs"][0]["run_id"])}).all()
    assert left == []


def test_a_dump_making_its_database_a_template_still_leaves_nothing(tmp_path: Path, restore_env: str,
                                                                    pg_admin: sa.Engine) -> None:
    """The dump's role owns its database: it marks it a template (which PostgreSQL refuses to drop), opens it
    to PUBLIC and sets its own password.  The cleanup turns the template off and the role's login off
    first: neither the database nor a role anyone could log in as is left."""
    body = ("DO $$ BEGIN EXECUTE 'ALTER ' || 'DATABASE ' || quote_ident(current_database()) || ' IS_TEMPLATE true'; "
            "EXECUTE 'GRANT CONNECT ON ' || 'DATABASE ' || quote_ident(current_database()) || ' TO PUBLIC'; "
            "EXECUTE 'ALTER ' || 'ROLE ' || quote_ident(current_user) || ' PASSWORD ''known'''; END $$;\n")
    code, doc = _restore_plain(tmp_path, body, restore_env)
    assert code in (0, 1) and "dump_unverifiable" not in kinds(doc), doc
    name = scratch_name(doc["runs"][0]["run_id"])
    assert name not in scratch_dbs(pg_admin) and name not in run_roles(pg_admin)


def _hostile_custom(tmp: Path, sql: str) -> Path:
    """A real `pg_dump -Fc` archive whose COMMENT entry is replaced, byte for byte, by `sql` (pg_restore runs
    an entry's definition as it is: a custom archive is not scanned)."""
    db = f"reversib_test_{uuid.uuid4().hex[:12]}"
    psql_admin("postgres", f'CREATE DATABASE "{db}"')
    placeholder = "A" * 120
    try:
        psql_admin(db, f"CREATE TABLE t (id int); INSERT INTO t VALUES (1); COMMENT ON TABLE t IS '{placeholder}'")
        out = pg_dump(db, tmp / "hostile.dump", "-Fc")
    finally:
        psql_admin("postgres", f'DROP DATABASE "{db}"')
    old = f"COMMENT ON TABLE public.t IS '{placeholder}';".encode()
    new = sql.encode().ljust(len(old))
    assert len(new) == len(old)
    data = out.read_bytes()
    assert data.count(old) == 1
    out.write_bytes(data.replace(old, new))
    return out


@pytest.mark.parametrize("what", ["drop", "create"])
def test_hostile_custom_dump_cannot_drop_another_runs_database_nor_create_one(
        what: str, tmp_path: Path, victim: tuple[str, PgServer], restore_env: str, pg_admin: sa.Engine) -> None:
    name, _ = victim
    evil = f"reversib_evil_{uuid.uuid4().hex[:8]}"
    sql = f'DROP DATABASE "{name}";' if what == "drop" else f'CREATE DATABASE "{evil}";'
    dump = _hostile_custom(tmp_path, sql)
    code, doc = run_dumps(tmp_path, {"db.dump": dump},
                          [{"path": "db.dump", "restore": {"target_url_env": restore_env}}])
    assert (code, kinds(doc)) == (1, ["restore_failed"]), doc
    actual = finding(doc, "restore_failed")["actual"]
    assert ("must be owner of database" if what == "drop" else "permission denied to create database") in actual
    assert _precious(name) == "42" and databases(pg_admin, "reversib\\_evil\\_%") == []
    assert scratch_dbs(pg_admin) == [name] and run_roles(pg_admin) == [name]


def test_password_never_on_a_command_line_nor_in_the_report(tmp_path: Path, restore_env: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            pg_admin: sa.Engine) -> None:
    calls: list[dict[str, Any]] = []
    real = postgres.run_tool

    def recording(argv: list[str], **kw: Any) -> Any:
        stdin = kw.get("stdin")
        calls.append({"argv": list(argv), "env": dict(kw["env"]),
                      "stdin": b"".join(stdin) if isinstance(stdin, list) else b""})
        return real(argv, **kw)

    monkeypatch.setattr(postgres, "run_tool", recording)
    monkeypatch.setattr(scratch, "run_tool", recording)
    dump = (_HEADER + "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n" + _FOOTER).encode()
    code, doc = run_dumps(tmp_path, {"a.sql": dump}, [{"path": "a.sql", "row_counts": {"t": 1},
                                                      "assertions": ["SELECT current_user LIKE 'reversib_restore_%'"],
                                                      "restore": {"target_url_env": restore_env}}])
    assert (code, kinds(doc)) == (0, ["restored"]), doc
    run_user = scratch_name(doc["runs"][0]["run_id"])
    as_run = [c for c in calls if c["env"].get("PGUSER") == run_user]
    assert len(as_run) >= 3, "the restore, the row count and the assertion connect as the per-run role"
    passwords = {c["env"]["PGPASSWORD"] for c in as_run}
    assert len(passwords) == 1
    password = passwords.pop()
    assert len(password) >= 40
    for c in calls:
        assert all(password not in a for a in c["argv"]), c["argv"]
        assert password.encode() not in c["stdin"]
        if c["env"].get("PGUSER") == RESTORE_ROLE:
            assert "PGPASSWORD" not in c["env"]
    created = [c["stdin"].decode() for c in calls if b"CREATE ROLE" in c["stdin"]]
    assert len(created) == 1 and "PASSWORD 'SCRAM-SHA-256$4096:" in created[0]
    assert password not in str(doc)
    assert run_roles(pg_admin) == [] and scratch_dbs(pg_admin) == []


def test_scram_verifier_is_the_one_the_server_computes(pg_admin: sa.Engine) -> None:
    role = f"reversib_test_scram_{uuid.uuid4().hex[:8]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql("SET password_encryption = 'scram-sha-256'")
        conn.exec_driver_sql(f"CREATE ROLE {role} PASSWORD 'correct horse'")
        try:
            stored = conn.exec_driver_sql("SELECT rolpassword FROM pg_authid WHERE rolname = %(r)s",
                                          {"r": role}).scalar_one()
            iterations, salt = stored.split("$")[1].split(":")
            assert scram_verifier("correct horse", base64.b64decode(salt), int(iterations)) == stored
            ours = scram_verifier("correct horse")
            conn.exec_driver_sql(f"ALTER ROLE {role} PASSWORD '{ours}'")
            assert conn.exec_driver_sql("SELECT rolpassword FROM pg_authid WHERE rolname = %(r)s",
                                        {"r": role}).scalar_one() == ours, "stored as given, not hashed again"
        finally:
            conn.exec_driver_sql(f"DROP ROLE {role}")


def test_without_createrole_the_old_behaviour_with_a_warning(tmp_path: Path, pg_admin: sa.Engine,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    role = "reversib_restore_test_nocr"
    with pg_admin.connect() as conn:
        if not conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'").first():
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN CREATEDB")
    monkeypatch.setenv("NOCR_URL", f"postgresql://{role}@{PG_HOST}:{PG_PORT}/")
    dump = (_HEADER + "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\n" + _FOOTER).encode()
    code, doc = run_dumps(tmp_path, {"a.sql": dump}, [{"path": "a.sql", "row_counts": {"t": 1},
                                                      "assertions": [f"SELECT current_user = '{role}'"],
                                                      "restore": {"target_url_env": "NOCR_URL"}}])
    assert (code, kinds(doc)) == (0, ["restored"]), doc
    assert f"restore role '{role}' lacks CREATEROLE" in capfd.readouterr().err
    with pg_admin.connect() as conn:
        left = conn.exec_driver_sql(f"SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = '{role}'").all()
    assert left == []


# ---------------------------------------------------------------- a private cluster: password logins only


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL cluster whose pg_hba allows TCP logins by scram-sha-256 only (the local
    socket: trust, for the setup).  Yields (socket folder, port)."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        require_service("initdb", "(the PostgreSQL server package) is not installed")
    bindir = Path(initdb[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="reversib-scram-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = 54000 + os.getpid() % 900
    data = folder / "data"
    try:
        subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-N",
                        "--auth-local=trust", "--auth-host=scram-sha-256"], check=True, capture_output=True)
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"),
                        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c log_statement=ddl",
                        "start"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        require_service("a private PostgreSQL cluster", f"could not be started: {exc.stderr!r}")
    try:
        yield str(folder), port
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_per_run_role_logs_in_with_scram_and_the_log_never_sees_its_password(
        scram_cluster: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock, port = scram_cluster
    admin = [need_tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", sock, "-p", str(port), "-U",
             "postgres"]
    subprocess.run([*admin, "-c", "CREATE ROLE restorer LOGIN CREATEDB CREATEROLE PASSWORD 'restorer-pw'",
                    "-c", "CREATE DATABASE src", "-c", "SET password_encryption = 'scram-sha-256'"], check=True)
    subprocess.run([*admin, "-d", "src", "-c", "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5)"],
                   check=True)
    dump = tmp_path / "src.dump"
    subprocess.run([need_tool("pg_dump"), "-h", sock, "-p", str(port), "-U", "postgres", "-Fc", "-f", str(dump), "src"],
                   check=True)
    passwords: list[str] = []
    real = postgres.run_tool

    def recording(argv: list[str], **kw: Any) -> Any:
        if kw["env"].get("PGUSER", "").startswith("reversib_restore_"):
            passwords.append(kw["env"]["PGPASSWORD"])
        return real(argv, **kw)

    monkeypatch.setattr(postgres, "run_tool", recording)
    monkeypatch.setenv("SCRAM_URL", f"postgresql://restorer:restorer-pw@127.0.0.1:{port}/")
    code, doc = run_dumps(tmp_path, {"db.dump": dump}, [{"path": "db.dump", "row_counts": {"t": 5},
                                                        "restore": {"target_url_env": "SCRAM_URL"}}])
    assert (code, kinds(doc)) == (0, ["restored"]), doc
    assert passwords and len(set(passwords)) == 1
    # a wrong password is refused: the server does check it (scram-sha-256, not trust)
    wrong = subprocess.run([need_tool("psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "restorer", "-d",
                            "postgres", "-c", "SELECT 1"], env={**os.environ, "PGPASSWORD": "nope"},
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr
    log = (Path(sock) / "log").read_text()
    assert "CREATE ROLE" in log and "SCRAM-SHA-256$4096:" in log, "log_statement=ddl logs the verifier"
    assert passwords[0] not in log
    left = subprocess.run([*admin, "-c", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'reversib%' UNION ALL "
                           "SELECT datname FROM pg_database WHERE datname LIKE 'reversib%'"],
                          check=True, capture_output=True, text=True).stdout
    assert left.strip() == ""
