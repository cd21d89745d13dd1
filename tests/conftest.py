"""Shared fixtures: scratch PostgreSQL databases on the real server at 127.0.0.1:5432.

`pg_url` is one database for the whole session; `pg_database` is a fresh, empty one per test.
Every database created here is named `reversib_test_<random>` and dropped at the end of the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from tests.services import require_service

PG_HOST = os.environ.get("REVERSIB_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("REVERSIB_TEST_PG_PORT", "5432"))
PG_ADMIN_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/postgres"


def pg_database_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the maintenance database; skips (or fails under CI) when unreachable."""
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        require_service("PostgreSQL", f"not reachable at {PG_HOST}:{PG_PORT}: {' '.join(str(exc.orig).split())}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def make_pg_database(pg_admin: sa.Engine) -> Iterator[Callable[[], str]]:
    """A factory of scratch databases (URL returned); all are dropped at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"reversib_test_{uuid.uuid4().hex[:12]}"
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        return pg_database_url(name)

    yield make
    with pg_admin.connect() as conn:
        for name in created:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url(make_pg_database: Callable[[], str]) -> str:
    """One scratch database for the session (tests sharing it must not assume it is empty)."""
    return make_pg_database()


@pytest.fixture
def pg_database(make_pg_database: Callable[[], str]) -> str:
    """A fresh, empty scratch database for one test."""
    return make_pg_database()
