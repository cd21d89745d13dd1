"""Dump fixtures: sample databases on the real PostgreSQL server, dumps made by the real pg_dump, a
non-superuser restore role, and a helper running `reversib verify-now` on an export holding dumps."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from tests.cli_helpers import verify_json
from tests.conftest import PG_HOST, PG_PORT
from tests.services import require_service

RESTORE_ROLE = "reversib_restore_test"
RESTORE_URL = f"postgresql://{RESTORE_ROLE}@{PG_HOST}:{PG_PORT}/"
URL_ENV = "REVERSIB_TEST_RESTORE_URL"


def need_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        require_service(name, "client tool is not installed")
    return found


def psql_admin(db: str, sql: str) -> str:
    out = subprocess.run([need_tool("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", PG_HOST, "-p",
                          str(PG_PORT), "-U", "postgres", "-d", db, "-c", sql],
                         check=True, capture_output=True, text=True)
    return out.stdout


def scratch_dbs(pg_admin: sa.Engine) -> list[str]:
    """The scratch databases of the tests' restore role: owned by it, or by a per-run role it is a member of
    (not those of a benchmark or another session's role running on the same server at the same time)."""
    with pg_admin.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql(
            "SELECT datname FROM pg_database WHERE datname ~ '^reversib_restore_' "
            f"AND (pg_get_userbyid(datdba) = '{RESTORE_ROLE}' OR pg_has_role('{RESTORE_ROLE}', datdba, 'MEMBER'))")]


def run_roles(pg_admin: sa.Engine) -> list[str]:
    """The per-run roles (`reversib_restore_<run id>`) the tests' restore role is a member of."""
    with pg_admin.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql(
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^reversib_restore_[0-9a-f]{32}$' "
            f"AND pg_has_role('{RESTORE_ROLE}', oid, 'MEMBER')")]


@pytest.fixture(scope="session")
def restore_role(pg_admin: sa.Engine) -> Iterator[str]:
    """The restore role: LOGIN CREATEDB CREATEROLE (it creates a per-run role for each restore)."""
    with pg_admin.connect() as conn:
        if not conn.exec_driver_sql(f"SELECT 1 FROM pg_roles WHERE rolname = '{RESTORE_ROLE}'").first():
            conn.exec_driver_sql(f"CREATE ROLE {RESTORE_ROLE} LOGIN CREATEDB CREATEROLE")
        conn.exec_driver_sql(f"ALTER ROLE {RESTORE_ROLE} CREATEDB CREATEROLE INHERIT")
    yield RESTORE_URL
    with pg_admin.connect() as conn:
        for name in scratch_dbs(pg_admin):
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for name in run_roles(pg_admin):
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')


def _sample(make_pg_database: Callable[[], str], sql: str) -> str:
    url = make_pg_database()
    name = url.rsplit("/", 1)[1]
    psql_admin(name, sql)
    return name


SAMPLE_SQL = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, note text);
INSERT INTO customers SELECT g, 'customer ' || g, CASE WHEN g % 7 = 0 THEN E'tab\\there' END
  FROM generate_series(1, 20000) g;
CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers(id), amount numeric(10,2));
INSERT INTO orders SELECT g, g % 1000 + 1, g * 1.5 FROM generate_series(1, 3000) g;
CREATE FUNCTION total() RETURNS numeric LANGUAGE sql AS $$ SELECT sum(amount) FROM orders $$;
"""


@pytest.fixture(scope="session")
def sample_db(make_pg_database: Callable[[], str]) -> str:
    return _sample(make_pg_database, SAMPLE_SQL)


@pytest.fixture(scope="session")
def other_db(make_pg_database: Callable[[], str]) -> str:
    return _sample(make_pg_database, "CREATE TABLE inventory (sku text PRIMARY KEY, qty int);"
                   "INSERT INTO inventory VALUES ('a', 1), ('b', 2);")


@pytest.fixture(scope="session")
def dump_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dumps")


def pg_dump(db: str, out: Path, *args: str) -> Path:
    subprocess.run([need_tool("pg_dump"), "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", *args, "-f", str(out),
                    db], check=True)
    return out


@pytest.fixture
def restore_env(restore_role: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(URL_ENV, restore_role)
    return URL_ENV


def run_dumps(tmp: Path, files: dict[str, Path | bytes], dumps: list[dict[str, Any]],
              history: Path | None = None, args: tuple[str, ...] = ()) -> tuple[int, dict[str, Any]]:
    """An export holding `files` (a manifest by the real sha256sum), a check with `dumps`, run through the CLI."""
    export = tmp / "export"
    if export.exists():
        shutil.rmtree(export)
    export.mkdir(parents=True)
    for name, content in files.items():
        target = export / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    names = sorted(files)
    sums = subprocess.run(["sha256sum", "--", *names], cwd=export, check=True, capture_output=True).stdout
    (export / "SHA256SUMS").write_bytes(sums)
    checks = tmp / "checks"
    checks.mkdir(exist_ok=True)
    (checks / "db.yaml").write_text(yaml.safe_dump({"version": 1, "id": "db", "name": "db",
                                                    "source": {"url": "../export"},
                                                    "manifest": {"path": "SHA256SUMS"}, "dumps": dumps}))
    cfg = tmp / "config" / "reversib.yaml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text(yaml.safe_dump({"version": 1, "checks_dir": "../checks"}))
    return verify_json(["--config", str(cfg), "db", *args], history or tmp / "h.db")


def kinds(doc: dict[str, Any], severity: str | None = None) -> list[str]:
    return sorted(f["kind"] for r in doc["runs"] for f in r["findings"]
                  if severity is None or f["severity"] == severity)


def finding(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [f for r in doc["runs"] for f in r["findings"] if f["kind"] == kind]
    assert len(found) == 1, found
    return found[0]


def directory_files(folder: Path, prefix: str) -> dict[str, Path | bytes]:
    """The files of a `pg_dump -Fd` folder, keyed `prefix/<name>` (for `run_dumps`)."""
    return {f"{prefix}/{f.name}": f for f in sorted(folder.iterdir())}


def unique() -> str:
    return uuid.uuid4().hex[:8]


os.environ.setdefault("PGCONNECT_TIMEOUT", "5")
