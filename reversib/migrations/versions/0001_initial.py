"""Initial history schema: runs, findings, entry_state.

Revision ID: 0001
Revises:
Create Date: 2025-11-28

Written by hand, frozen: it must not import the models (they will move on).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PATH = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")  # code point order on PostgreSQL too


def _ts(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("check_id", sa.String(), nullable=False),
        sa.Column("check_name", sa.String(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        _ts("scheduled_for"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        _ts("started_at", nullable=False),
        _ts("finished_at"),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("labels", JSON, nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("manifest", sa.Text(), nullable=True),
        sa.Column("manifest_digest", sa.String(), nullable=True),
        sa.Column("generation", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("severities", JSON, nullable=False),
        sa.Column("tiers", JSON, nullable=False),
        sa.Column("bytes_verified", sa.BigInteger(), nullable=False),
        sa.Column("files_verified", sa.BigInteger(), nullable=False),
        sa.Column("files_listed", sa.BigInteger(), nullable=False),
        sa.Column("bytes_listed", sa.BigInteger(), nullable=False),
        sa.Column("manifest_entries", sa.BigInteger(), nullable=False),
        _ts("newest_mtime"),
        sa.Column("summary_digest", sa.String(64), nullable=True),
        sa.UniqueConstraint("check_id", "scheduled_for", name="uq_runs_check_slot"),
    )
    op.create_index("ix_runs_check_started", "runs", ["check_id", "started_at"])
    op.create_table(
        "findings",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("expected", sa.Text(), nullable=True),
        sa.Column("actual", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_table(
        "entry_state",
        sa.Column("check_id", sa.String(), primary_key=True),
        sa.Column("path", PATH, primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("digests", JSON, nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        _ts("verified_at", nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sqlite_with_rowid=False,  # one b-tree keyed by (check_id, path): upserts ~30% faster
    )


def downgrade() -> None:
    op.drop_table("entry_state")
    op.drop_table("findings")
    op.drop_index("ix_runs_check_started", table_name="runs")
    op.drop_table("runs")
