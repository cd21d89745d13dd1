"""Evidence: each chain link records the chain version it was made with.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

Written by hand, frozen: it must not import the models (they will move on).

Chain version 2 also covers the rolling coverage figures and the bytes downloaded of a run
(`reversib.evidence.chain.CHAIN_FIELDS_BY_VERSION`).  The links made before this revision are version 1
(the server default), and `audit verify` checks each link with its own version's fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("chain_links") as batch:
        batch.add_column(sa.Column("version", sa.SmallInteger(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("chain_links") as batch:
        batch.drop_column("version")
