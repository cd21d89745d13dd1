"""Evidence: the per-check hash chain of runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

* `chain_links`: one link per completed run, per check numbered from 1 (`seq`), with the run's
  `content_digest`, the previous link's `record_digest` (`prev_digest`) and its own `record_digest`.
  `run_id` is deliberately not a foreign key: a deleted run must leave its link behind as evidence.
* `chain_heads`: the newest link of each check; its row is locked (PostgreSQL) while a link is
  appended, so that concurrent writers never fork a chain.

The runs completed before this revision are linked here, per check in order of completion, with
the chain code of CHAIN_VERSION 1 (`reversib.evidence.chain.backfill`; that version is frozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chain_links",
        sa.Column("check_id", sa.String(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("prev_digest", sa.String(64), nullable=True),
        sa.Column("content_digest", sa.String(64), nullable=False),
        sa.Column("record_digest", sa.String(64), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", name="uq_chain_links_run"),
    )
    op.create_table(
        "chain_heads",
        sa.Column("check_id", sa.String(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("record_digest", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    from reversib.evidence.chain import backfill

    backfill(op.get_bind(), datetime.now(timezone.utc), version=1)


def downgrade() -> None:
    op.drop_table("chain_heads")
    op.drop_table("chain_links")
