"""Alembic environment.

At run time `History.ensure_schema` passes an open connection, already in a locked transaction,
as `config.attributes["connection"]`.  Developers can also run the `alembic` command from the
repository root (see alembic.ini) against `REVERSIB_HISTORY_URL` or `sqlalchemy.url`.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from reversib.history import Base, create_history_engine

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = os.environ.get("REVERSIB_HISTORY_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set REVERSIB_HISTORY_URL (or sqlalchemy.url in alembic.ini) to the history database")
    return url


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    elif context.is_offline_mode():
        context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = create_history_engine(_url())
        try:
            with engine.connect() as conn:
                _run(conn)
                conn.commit()
        finally:
            engine.dispose()


main()
