"""Scale: shards of one run, with leases (several replicas, Kubernetes Indexed Jobs).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

Written by hand, frozen: it must not import the models (they will move on).

`run_shards`: one row per shard of a sharded run (`shard` 0..N-1) plus one row for its merge
(`shard` = -1).  `state` is `pending`, `running` or `done`; a `running` row belongs to `owner`
(host:pid) until `lease_until`, which the owner renews while it works: a row whose lease has passed
is taken over by another process.  `result` holds what the shard found (JSON) until the merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "run_shards",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_shards")
