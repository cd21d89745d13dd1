"""Scale: find the open shards of running runs without scanning every shard ever run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-11

Written by hand, frozen: it must not import the models (they will move on).

Each daemon of a group of replicas looks every few seconds for shards left pending or abandoned
(docs/scale.md).  `run_shards` keeps two rows per daemon run forever; a partial index on the rows
not yet `done` keeps that look-up proportional to the runs in progress.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = sa.text("state <> 'done'")


def upgrade() -> None:
    op.create_index("ix_run_shards_open", "run_shards", ["state", "lease_until"], postgresql_where=OPEN,
                    sqlite_where=OPEN)


def downgrade() -> None:
    op.drop_index("ix_run_shards_open", table_name="run_shards")
